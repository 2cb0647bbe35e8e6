package scheduler

import (
	"fmt"
	"strings"
	"sync"
	"time"
)

// Bounds of the delay before a job that did not start is tried again:
// a job a host refuses (a bad spec, a missing rootfs) must not be asked
// for at every step.
const (
	firstStartRetry = time.Second
	maxStartRetry   = time.Minute
)

// startFailures remembers, per placement, the last failed start of its
// job and when to try again, doubling the delay each time.
type startFailures struct {
	mu sync.Mutex
	m  map[string]*startFailure
}

type startFailure struct {
	err   string
	delay time.Duration
	next  time.Time
}

func newStartFailures() *startFailures { return &startFailures{m: map[string]*startFailure{}} }

// due reports whether the placement's job may be started now.
func (f *startFailures) due(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	sf, ok := f.m[id]
	return !ok || !time.Now().Before(sf.next)
}

// failed records a failed start and returns the delay before the next.
func (f *startFailures) failed(id string, err error) time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	sf, ok := f.m[id]
	if !ok {
		sf = &startFailure{delay: firstStartRetry / 2}
		f.m[id] = sf
	}
	sf.delay = min(2*sf.delay, maxStartRetry)
	sf.err, sf.next = err.Error(), time.Now().Add(sf.delay)
	return sf.delay
}

// started forgets the placement's failures.
func (f *startFailures) started(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.m, id)
}

// forget drops the placements not in keep.
func (f *startFailures) forget(keep map[string]bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for id := range f.m {
		if !keep[id] {
			delete(f.m, id)
		}
	}
}

// reason says why the formation's jobs do not start, from the first of
// its placements (by ID) whose last start failed; "" when none did.
func (f *startFailures) reason(ids []string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, id := range ids {
		if sf, ok := f.m[id]; ok {
			host, job, _ := strings.Cut(id, "/")
			return fmt.Sprintf("job %s does not start on host %s: %s", job, host, sf.err)
		}
	}
	return ""
}
