package l4

import (
	"log/slog"
	"sync"
	"time"
)

// warnEvery is the least time between two log lines of one kind from
// one proxy: a backend outage fails every connection, and a log line
// each would flood the log.
const warnEvery = time.Second

// limitedLog writes at most one line per warnEvery and says in the next
// how many it left out.
type limitedLog struct {
	mu      sync.Mutex
	last    time.Time
	skipped int
}

func (l *limitedLog) warn(log *slog.Logger, msg string, args ...any) {
	l.mu.Lock()
	now := time.Now()
	if now.Sub(l.last) < warnEvery {
		l.skipped++
		l.mu.Unlock()
		return
	}
	skipped := l.skipped
	l.last, l.skipped = now, 0
	l.mu.Unlock()
	if skipped > 0 {
		args = append(args, "not_logged_since", skipped)
	}
	log.Warn(msg, args...)
}
