// Package fanout hands each event to every subscriber, each through a
// bounded buffer. A subscriber that falls that far behind is dropped (its
// channel is closed) rather than holding up the sender; it can subscribe
// again and re-read the current state.
package fanout

import "sync"

// Fanout is a set of subscribers to events of type E. Make it with New.
type Fanout[E any] struct {
	buffer int

	mu     sync.Mutex
	subs   map[chan E]struct{}
	closed bool
}

// New returns a Fanout whose subscribers may lag buffer events behind.
func New[E any](buffer int) *Fanout[E] {
	return &Fanout[E]{buffer: buffer, subs: map[chan E]struct{}{}}
}

// Subscribe returns a channel of the events published from now on and a
// function that ends the subscription. The channel is closed when the
// subscriber falls behind, is cancelled, or the Fanout closes.
func (f *Fanout[E]) Subscribe() (<-chan E, func()) {
	ch := make(chan E, f.buffer)
	f.mu.Lock()
	if f.closed {
		close(ch)
	} else {
		f.subs[ch] = struct{}{}
	}
	f.mu.Unlock()
	return ch, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.drop(ch)
	}
}

// Publish hands e to every subscriber without waiting for any.
func (f *Fanout[E]) Publish(e E) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for ch := range f.subs {
		select {
		case ch <- e:
		default:
			f.drop(ch)
		}
	}
}

// Close ends every subscription; later ones are closed at once.
func (f *Fanout[E]) Close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	for ch := range f.subs {
		f.drop(ch)
	}
}

func (f *Fanout[E]) drop(ch chan E) {
	if _, ok := f.subs[ch]; ok {
		delete(f.subs, ch)
		close(ch)
	}
}
