// Package accesslog writes the router's access log: one key=value line
// per HTTP request, formatted by hand and gathered in a buffer that one
// goroutine writes out, so that a request never waits for the log's
// output and costs no allocation. When the output is slower than the
// requests and the buffer is full, lines are dropped and counted, and
// the count is written as a line of its own once the output takes lines
// again.
//
// It does not know where lines go (the router gives it its stderr) nor
// what a request is beyond the fields of an Entry.
package accesslog

import (
	"bytes"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Entry is one request: httpproxy.AccessEntry's fields in its order, so
// that one converts to the other. It is a type of this package because
// httpproxy's benchmark uses this package.
type Entry struct {
	Time      time.Time // when the request head was read
	Method    string
	Host      string
	Path      string // the request target as sent
	Proto     string
	Status    int
	Bytes     int64 // response body bytes sent to the client
	Duration  time.Duration
	Backend   string // address, empty when none was reached
	RequestID string
	Route     string // route ID, empty when none matched
	Client    string // client address, ip:port
}

// Config is what a Writer needs; zero fields take their defaults.
type Config struct {
	// Out gets the lines, many in one Write.
	Out io.Writer
	// FlushSize is how many bytes of lines wait before they are written
	// without waiting for FlushInterval; 0 means 64 KiB.
	FlushSize int
	// MaxBuffered bounds the bytes of lines waiting while Out is busy
	// writing; a line that does not fit is dropped. 0 means 1 MiB.
	MaxBuffered int
	// FlushInterval is the longest a line waits; 0 means 1s.
	FlushInterval time.Duration
}

// Writer is an access log. Log may be called from any goroutine.
type Writer struct {
	out       io.Writer
	flushSize int
	max       int

	mu      sync.Mutex
	buf     []byte // lines not yet taken by the writing goroutine
	dropped int    // lines lost since the last count written
	closed  bool

	stamp atomic.Pointer[stamp] // the last second formatted

	spare []byte        // the writing goroutine's: buf's next backing array
	full  chan struct{} // buf reached flushSize
	stop  chan struct{}
	done  chan struct{}
}

// New starts a Writer; Close stops it.
func New(cfg Config) *Writer {
	if cfg.FlushSize <= 0 {
		cfg.FlushSize = 64 << 10
	}
	if cfg.MaxBuffered <= 0 {
		cfg.MaxBuffered = 1 << 20
	}
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = time.Second
	}
	w := &Writer{
		out:       cfg.Out,
		flushSize: cfg.FlushSize,
		max:       max(cfg.MaxBuffered, cfg.FlushSize),
		buf:       make([]byte, 0, 2*cfg.FlushSize),
		spare:     make([]byte, 0, 2*cfg.FlushSize),
		full:      make(chan struct{}, 1),
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
	}
	go w.run(cfg.FlushInterval)
	return w
}

// lineBufs holds the buffers lines are formatted in, outside the lock.
var lineBufs = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// Log adds e's line. It does not wait for the output: when MaxBuffered
// bytes already wait, the line is dropped and counted.
func (w *Writer) Log(e Entry) {
	bp := lineBufs.Get().(*[]byte)
	line := w.appendLine((*bp)[:0], &e)
	w.mu.Lock()
	kick := false
	switch {
	case w.closed:
	case len(w.buf)+len(line) > w.max:
		w.dropped++
	default:
		w.buf = append(w.buf, line...)
		kick = len(w.buf) >= w.flushSize
	}
	w.mu.Unlock()
	if kick {
		select {
		case w.full <- struct{}{}:
		default: // already signalled
		}
	}
	if cap(line) <= 4<<10 { // a huge path's buffer is not kept
		*bp = line
		lineBufs.Put(bp)
	}
}

// Close writes the lines still waiting and stops the Writer; lines
// logged after it are discarded. It waits for Out.
func (w *Writer) Close() {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.closed = true
	w.mu.Unlock()
	close(w.stop)
	<-w.done
}

// run writes lines out when FlushSize of them wait, every interval, and
// when the Writer closes.
func (w *Writer) run(interval time.Duration) {
	defer close(w.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-w.full:
		case <-t.C:
		case <-w.stop:
			w.flush()
			return
		}
		w.flush()
	}
}

// flush takes the waiting lines, leaving Log an empty buffer, and
// writes them with the count of lines dropped while the last write was
// under way. Lines the output refused count as dropped in turn.
func (w *Writer) flush() {
	w.mu.Lock()
	batch, dropped := w.buf, w.dropped
	w.buf, w.dropped = w.spare[:0], 0
	w.mu.Unlock()
	if dropped > 0 {
		batch = w.appendDropped(batch, time.Now(), dropped)
	}
	if len(batch) > 0 {
		if n, err := w.out.Write(batch); err != nil {
			lost := bytes.Count(batch[n:], []byte{'\n'})
			if dropped > 0 { // the count's own line was not written either
				lost += dropped - 1
			}
			w.mu.Lock()
			w.dropped += lost
			w.mu.Unlock()
		}
	}
	w.spare = batch[:0]
}

// timeLayout is log/slog's, so that access lines sort with the router's
// other lines.
const timeLayout = "2006-01-02T15:04:05.000Z07:00"

// stamp is one second in timeLayout, without its milliseconds: Log
// formats a second once, not once per line, as that was half the cost
// of a line.
type stamp struct {
	sec          int64
	loc          *time.Location
	date, offset []byte // "2006-01-02T15:04:05", "Z07:00"
}

func (w *Writer) appendTime(b []byte, t time.Time) []byte {
	s := w.stamp.Load()
	if s == nil || s.sec != t.Unix() || s.loc != t.Location() {
		text := t.Truncate(time.Second).AppendFormat(nil, timeLayout)
		dot := bytes.IndexByte(text, '.')
		s = &stamp{sec: t.Unix(), loc: t.Location(), date: text[:dot], offset: text[dot+4:]}
		w.stamp.Store(s)
	}
	ms := t.Nanosecond() / 1e6
	b = append(b, s.date...)
	b = append(b, '.', byte('0'+ms/100), byte('0'+ms/10%10), byte('0'+ms%10))
	return append(b, s.offset...)
}

// appendLine appends e's line, with its newline, to b: the time the
// response ended and e's fields as key=value, a value quoted as a Go
// string when it is empty or holds a space, '"', '\', a control byte
// or a byte beyond ASCII, so that no value can end the line or pass for
// another key ('=' needs no quotes: a key starts after a space).
func (w *Writer) appendLine(b []byte, e *Entry) []byte {
	b = append(b, "time="...)
	b = w.appendTime(b, e.Time.Add(e.Duration))
	b = append(b, " level=INFO msg=request client="...)
	b = appendValue(b, e.Client)
	b = append(b, " method="...)
	b = appendValue(b, e.Method)
	b = append(b, " host="...)
	b = appendValue(b, e.Host)
	b = append(b, " path="...)
	b = appendValue(b, e.Path)
	b = append(b, " proto="...)
	b = appendValue(b, e.Proto)
	b = append(b, " status="...)
	b = strconv.AppendInt(b, int64(e.Status), 10)
	b = append(b, " bytes="...)
	b = strconv.AppendInt(b, e.Bytes, 10)
	b = append(b, " duration="...)
	b = appendMillis(b, e.Duration)
	b = append(b, " backend="...)
	b = appendValue(b, e.Backend)
	b = append(b, " route="...)
	b = appendValue(b, e.Route)
	b = append(b, " request_id="...)
	b = appendValue(b, e.RequestID)
	return append(b, '\n')
}

func appendValue(b []byte, s string) []byte {
	if s == "" {
		return append(b, `""`...)
	}
	for i := 0; i < len(s); i++ {
		if needsQuote[s[i]] {
			return strconv.AppendQuote(b, s)
		}
	}
	return append(b, s...)
}

var needsQuote = func() (q [256]bool) {
	for c := range q {
		q[c] = c <= ' ' || c >= 0x7f || c == '"' || c == '\\'
	}
	return q
}()

// appendMillis appends d in milliseconds to the microsecond, with its
// unit ("12.345ms"), which time.ParseDuration reads.
func appendMillis(b []byte, d time.Duration) []byte {
	us := d.Microseconds()
	if us < 0 {
		b = append(b, '-')
		us = -us
	}
	b = strconv.AppendInt(b, us/1000, 10)
	frac := us % 1000
	b = append(b, '.', byte('0'+frac/100), byte('0'+frac/10%10), byte('0'+frac%10))
	return append(b, "ms"...)
}

func (w *Writer) appendDropped(b []byte, now time.Time, n int) []byte {
	b = append(b, "time="...)
	b = w.appendTime(b, now)
	b = append(b, ` level=WARN msg="access log lines dropped: the output is slower than the requests" dropped=`...)
	b = strconv.AppendInt(b, int64(n), 10)
	return append(b, '\n')
}
