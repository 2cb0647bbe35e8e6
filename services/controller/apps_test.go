package controller

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host/job"
)

const testImage = "demo@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func (l *fsmLog) putApp(a App) error {
	data, _ := json.Marshal(a)
	return l.apply(command{Op: opPut, Kind: "apps", Object: data, CAS: new(uint64), Time: time.Now()})
}

func (l *fsmLog) release(app string, q ReleaseRequest) error {
	return l.apply(command{Op: opRelease, Key: app, Release: &q, Time: time.Now()})
}

func (l *fsmLog) get(table, key string) any {
	raw, err := l.f.store.current().Txn(false).First(table, "id", key)
	if err != nil {
		l.t.Fatal(err)
	}
	return raw
}

// TestReleasesAreNumberedAndDeploysOneAtATime: releases build on the
// serving one, rollback copies an old one, a deploy running refuses the
// next with no release made, and a deploy that ends done makes its
// release the serving one.
func TestReleasesAreNumberedAndDeploysOneAtATime(t *testing.T) {
	l := &fsmLog{t: t, f: newFSM()}
	if err := l.release("demo", ReleaseRequest{Image: testImage}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("release of an unknown app: %v", err)
	}
	if err := l.putApp(App{Name: "demo"}); err != nil {
		t.Fatal(err)
	}
	if err := l.release("demo", ReleaseRequest{Set: map[string]string{"A": "1"}}); err == nil || !strings.Contains(err.Error(), "no image") {
		t.Fatalf("a first release without an image: %v", err)
	}
	web := map[string]Process{"web": {Port: 8080}}
	if err := l.release("demo", ReleaseRequest{Image: testImage, Processes: web, Set: map[string]string{"A": "1"}, Deploy: true}); err != nil {
		t.Fatal(err)
	}
	d := l.get("deploys", DeployID("demo", 1)).(*Deploy)
	if d.From != 0 || d.To != 1 || d.State != DeployRunning || d.Strategy != StrategyRolling || d.HealthTimeout.Duration != DefaultHealthTimeout {
		t.Fatalf("deploy %+v", d)
	}
	// Refused while v1's deploy runs: no release v2.
	if err := l.release("demo", ReleaseRequest{Set: map[string]string{"B": "2"}, Deploy: true}); !errors.Is(err, ErrConflict) {
		t.Fatalf("a second deploy while one runs: %v", err)
	}
	if l.get("releases", ReleaseID("demo", 2)) != nil {
		t.Fatal("the refused deploy left a release behind")
	}
	// The deployer ends it done: v1 serves.
	done := *d
	done.State = DeployDone
	if err := l.apply(command{Op: opDeploy, Deploy: &done, CAS: &d.ModifyIndex, Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if a := l.get("apps", "demo").(*App); a.Release != 1 || a.LastRelease != 1 {
		t.Fatalf("app after the deploy: %+v", a)
	}
	// An ended deploy takes no more writes.
	if err := l.apply(command{Op: opDeploy, Deploy: &done, Time: time.Now()}); !errors.Is(err, ErrConflict) {
		t.Fatalf("a write to an ended deploy: %v", err)
	}
	if err := l.release("demo", ReleaseRequest{Set: map[string]string{"B": "2"}, Unset: []string{"A"}}); err != nil {
		t.Fatal(err)
	}
	v2 := l.get("releases", ReleaseID("demo", 2)).(*Release)
	if v2.Image != testImage || v2.Config["B"] != "2" || v2.Config["A"] != "" || v2.Description != "set B; unset A" {
		t.Fatalf("v2 %+v", v2)
	}
	// Rollback to v1: its config, a new number.
	if err := l.release("demo", ReleaseRequest{From: 1}); err != nil {
		t.Fatal(err)
	}
	v3 := l.get("releases", ReleaseID("demo", 3)).(*Release)
	if v3.Config["A"] != "1" || v3.Config["B"] != "" || v3.Description != "rollback to v1" {
		t.Fatalf("v3 %+v", v3)
	}
	// v1 was not changed by what came after it.
	if v1 := l.get("releases", ReleaseID("demo", 1)).(*Release); v1.Config["B"] != "" || v1.Version != 1 {
		t.Fatalf("v1 changed: %+v", v1)
	}
}

func TestBadReleasesAreRefused(t *testing.T) {
	l := &fsmLog{t: t, f: newFSM()}
	if err := l.putApp(App{Name: "demo"}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		q    ReleaseRequest
		want string
	}{
		{ReleaseRequest{Image: "demo:latest", Processes: map[string]Process{"web": {}}}, "want <repository>@sha256"},
		{ReleaseRequest{Image: testImage}, "no process types"},
		{ReleaseRequest{Image: testImage, Processes: map[string]Process{"Web": {}}}, "process type \"Web\""},
		{ReleaseRequest{Image: testImage, Processes: map[string]Process{"web": {Port: 70000}}}, "port"},
		{ReleaseRequest{Image: testImage, Processes: map[string]Process{"worker": {Check: &job.Check{Type: job.CheckTCP}}}}, "needs a port"},
		{ReleaseRequest{From: 9, Image: testImage, Processes: map[string]Process{"web": {}}}, "release v9"},
	} {
		if err := l.release("demo", c.q); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error with %q", c.q, err, c.want)
		}
	}
	if a := l.get("apps", "demo").(*App); a.LastRelease != 0 {
		t.Fatalf("refused releases took numbers: %+v", a)
	}
	for _, q := range []ReleaseRequest{
		{Set: map[string]string{"PORT": "1"}},
		{Set: map[string]string{"1A": "x"}},
		{Set: map[string]string{"A": "x"}, Unset: []string{"A"}},
		{Strategy: "blue-green"},
	} {
		if err := checkReleaseRequest(&q); !errors.Is(err, ErrInvalid) {
			t.Errorf("%+v: %v, want it refused", q, err)
		}
	}
}
