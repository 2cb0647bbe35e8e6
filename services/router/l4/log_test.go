package l4

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// records keeps the log records it is given.
type records struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *records) WithGroup(string) slog.Handler            { return r }
func (r *records) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec)
	return nil
}

// A backend outage fails every connection; the log gets a line a
// second, which says how many failures it stands for.
func TestLimitedLog(t *testing.T) {
	var h records
	log := slog.New(&h)
	var l limitedLog
	for range 100 {
		l.warn(log, "connect to backend")
	}
	if len(h.recs) != 1 {
		t.Fatalf("%d lines for 100 failures at once, want 1", len(h.recs))
	}
	l.last = time.Now().Add(-warnEvery)
	l.warn(log, "connect to backend")
	if len(h.recs) != 2 {
		t.Fatalf("%d lines after %v, want 2", len(h.recs), warnEvery)
	}
	var skipped int64
	h.recs[1].Attrs(func(a slog.Attr) bool {
		if a.Key == "not_logged_since" {
			skipped = a.Value.Int64()
		}
		return true
	})
	if skipped != 99 {
		t.Errorf("second line says %d not logged, want 99", skipped)
	}
}
