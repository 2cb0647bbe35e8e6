package controller

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func (l *fsmLog) putBuild(b Build, at time.Time, cas *uint64) error {
	if err := checkBuild(&b); err != nil {
		return err
	}
	data, _ := json.Marshal(b)
	return l.apply(command{Op: opPut, Kind: "builds", Object: data, CAS: cas, Time: at})
}

// TestBuildsOneAtATimePerApp: builds are numbered per app, a second one
// is refused while the first runs (until its deadline), the builder's
// updates change only its progress, an ended build is final, and the
// oldest builds go as new ones come.
func TestBuildsOneAtATimePerApp(t *testing.T) {
	l := &fsmLog{t: t, f: newFSM()}
	now := time.Now()
	start := func(app, commit string, at time.Time) error {
		return l.putBuild(Build{App: app, Commit: commit, Ref: "refs/heads/main", State: BuildRunning, Deadline: at.Add(time.Hour)}, at, nil)
	}
	if err := start("demo", "abcd1234", now); !errors.Is(err, ErrNotFound) {
		t.Fatalf("build of an unknown app: %v", err)
	}
	if err := l.putApp(App{Name: "demo"}); err != nil {
		t.Fatal(err)
	}
	if err := start("demo", "abcd1234", now); err != nil {
		t.Fatal(err)
	}
	b := *l.get("builds", "demo/1").(*Build)
	if b.Number != 1 || b.State != BuildRunning || !b.Started.Equal(now) || b.Commit != "abcd1234" {
		t.Fatalf("build 1: %+v", b)
	}
	err := start("demo", "ef015678", now.Add(time.Minute))
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "build 1 of demo is running") {
		t.Fatalf("a second build while one runs: %v", err)
	}
	if l.get("builds", "demo/2") != nil {
		t.Fatal("the refused build was recorded")
	}

	// The builder's update: its commit and start stay the controller's.
	upd := b
	upd.Commit, upd.Started = "ffff0000", now.Add(-time.Hour)
	upd.State, upd.Release, upd.Host, upd.Log = BuildSucceeded, 3, "node1", strings.Repeat("x", MaxBuildLog+10)
	if err := l.putBuild(upd, now.Add(2*time.Minute), &b.ModifyIndex); err != nil {
		t.Fatal(err)
	}
	b = *l.get("builds", "demo/1").(*Build)
	if b.State != BuildSucceeded || b.Release != 3 || b.Host != "node1" || b.Commit != "abcd1234" || !b.Started.Equal(now) ||
		!b.Ended.Equal(now.Add(2*time.Minute)) || len(b.Log) > MaxBuildLog {
		t.Fatalf("build 1 after its end: %+v (log %d bytes)", b, len(b.Log))
	}
	upd.State = BuildFailed
	if err := l.putBuild(upd, now, nil); !errors.Is(err, ErrConflict) {
		t.Fatalf("an update of an ended build: %v", err)
	}

	// A build its builder abandoned yields at its deadline.
	if err := start("demo", "ef015678", now.Add(3*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := start("demo", "0123abcd", now.Add(5*time.Minute)); !errors.Is(err, ErrConflict) {
		t.Fatalf("before the deadline: %v", err)
	}
	if err := start("demo", "0123abcd", now.Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if b := l.get("builds", "demo/2").(*Build); b.State != BuildFailed || !strings.Contains(b.Reason, "abandoned") {
		t.Fatalf("the abandoned build: %+v", b)
	}

	// Only the newest keepBuilds stay.
	for i := 0; i < keepBuilds; i++ {
		at := now.Add(time.Duration(3+i) * time.Hour)
		cur := l.get("builds", BuildID("demo", 3+i)).(*Build)
		done := *cur
		done.State = BuildFailed
		if err := l.putBuild(done, at, nil); err != nil {
			t.Fatal(err)
		}
		if err := start("demo", "0123abcd", at); err != nil {
			t.Fatal(err)
		}
	}
	builds, _ := appBuilds(l.f.store.current().Txn(false), "demo")
	if len(builds) != keepBuilds || l.get("builds", "demo/1") != nil {
		t.Fatalf("%d builds kept, want %d without the oldest", len(builds), keepBuilds)
	}

	// Destroying the app takes its builds.
	if err := l.apply(command{Op: opDestroy, Key: "demo", Time: now}); err != nil {
		t.Fatal(err)
	}
	if builds, _ := appBuilds(l.f.store.current().Txn(false), "demo"); len(builds) != 0 {
		t.Fatalf("%d builds left after destroy", len(builds))
	}
}
