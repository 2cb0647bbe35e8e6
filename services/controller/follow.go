package controller

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"time"
)

// FollowConfig tunes Follow.
type FollowConfig struct {
	// What names the collection in logs.
	What string
	// Wait is each blocking query's wait (default 5 min, the server
	// caps it).
	Wait time.Duration
	// MinBackoff and MaxBackoff bound the pause between failed queries
	// (defaults 1 s and 30 s).
	MinBackoff, MaxBackoff time.Duration
	Log                    *slog.Logger
	// Back, if set, is called when the controller answers again after
	// failures.
	Back func()
}

// followSlack is how much longer than its wait a blocking query may take
// before the follower gives up on it: a controller that went silent (a
// partition drops packets, it does not refuse them) must not hold a
// watch for ever.
const followSlack = 15 * time.Second

// Follow watches one collection with blocking queries, never polling,
// and gives each new version of it to store, until ctx ends. While the
// controller does not answer it retries with backoff and store keeps
// what it had.
func Follow[T any](ctx context.Context, cfg FollowConfig,
	list func(context.Context, QueryOptions) ([]T, QueryMeta, error), store func([]T)) {
	cfg.Wait = cmpOr(cfg.Wait, 5*time.Minute)
	cfg.MinBackoff = cmpOr(cfg.MinBackoff, time.Second)
	cfg.MaxBackoff = cmpOr(cfg.MaxBackoff, 30*time.Second)
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	var index uint64
	loaded, failures := false, 0
	for {
		qctx, cancel := context.WithTimeout(ctx, cfg.Wait+followSlack)
		items, meta, err := list(qctx, QueryOptions{Index: index, Wait: cfg.Wait})
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			if failures == 1 {
				cfg.Log.Warn("controller unreachable; keeping what it said last", "watch", cfg.What, "err", err)
			}
			if !Sleep(ctx, Backoff(failures, cfg.MinBackoff, cfg.MaxBackoff)) {
				return
			}
			continue
		}
		if failures > 0 {
			cfg.Log.Info("controller reachable again", "watch", cfg.What)
			failures = 0
			if cfg.Back != nil {
				cfg.Back()
			}
		}
		// An index that went back (the controller restored a snapshot)
		// is a new version too.
		if !loaded || meta.Index != index {
			store(items)
			loaded = true
		}
		// Index 0 would make the next query return at once, and the
		// one after it, for as long as the collection is unwritten.
		index = max(meta.Index, 1)
	}
}

func cmpOr(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// Backoff is the delay before retry n (from 1) of something that
// failed: from lo, doubling, capped at hi, and randomised by up to a
// half so that the agents of all hosts do not come back to a recovered
// controller in step.
func Backoff(n int, lo, hi time.Duration) time.Duration {
	d := lo
	for i := 1; i < n && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	return d/2 + rand.N(d/2+1)
}

// Sleep waits for d or for ctx to end; it reports whether d passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// WatchIndex signals changed (without blocking) each time the index that
// read returns moves, asking with blocking queries of wait; after a
// failed query it pauses for retry. It returns when ctx ends.
func WatchIndex(ctx context.Context, wait, retry time.Duration, read func(context.Context, QueryOptions) (uint64, error), changed chan<- struct{}) {
	var index uint64
	for ctx.Err() == nil {
		next, err := read(ctx, QueryOptions{Index: index, Wait: wait})
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(retry):
			}
			continue
		}
		if next != index && index != 0 {
			select {
			case changed <- struct{}{}:
			default:
			}
		}
		index = next
	}
}
