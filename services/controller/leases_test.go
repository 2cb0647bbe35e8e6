package controller

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/plinth-os/plinth/host/job"
)

// fsmLog applies commands to an FSM as raft would, one index after
// another, so the rules of leases and schedules are tested without
// elections.
type fsmLog struct {
	t     *testing.T
	f     *fsm
	index uint64
}

func (l *fsmLog) apply(c command) error {
	l.t.Helper()
	l.index++
	data, err := json.Marshal(c)
	if err != nil {
		l.t.Fatal(err)
	}
	return l.f.Apply(&raft.Log{Index: l.index, Data: data}).(applyResult).Err
}

func ttl(d time.Duration) job.Duration { return job.Duration{Duration: d} }

func TestLeaseFencesADeposedHolder(t *testing.T) {
	l := &fsmLog{t: t, f: newFSM()}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := l.apply(command{Op: opHosts, Time: t0, Hosts: []Host{{ID: "h1", Status: HostAlive}, {ID: "h2", Status: HostAlive}}}); err != nil {
		t.Fatal(err)
	}
	take := func(holder, host string, at time.Time) error {
		return l.apply(command{Op: opLease, Key: "scheduler", Time: at, Lease: &LeaseRequest{Holder: holder, Host: host, TTL: ttl(5 * time.Second)}})
	}
	if err := take("a", "h1", t0); err != nil {
		t.Fatal(err)
	}
	tokenA := l.index
	if err := take("b", "h2", t0.Add(time.Second)); !errors.Is(err, ErrConflict) {
		t.Fatalf("b took a live lease of a: %v", err)
	}
	// A renewal keeps the token.
	if err := take("a", "h1", t0.Add(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	place := func(holder string, token uint64, at time.Time, job string) error {
		return l.apply(command{Op: opSchedule, Time: at, Schedule: &Schedule{
			Fence: Fence{Lease: "scheduler", Holder: holder, Token: token},
			Place: []Placement{{Formation: "web", Host: "h1", Job: job}},
		}})
	}
	if err := place("a", tokenA, t0.Add(3*time.Second), "web-1"); err != nil {
		t.Fatalf("holder's write: %v", err)
	}
	// a's lease runs out (renewed at +2 s for 5 s); b takes it at +8 s.
	if err := take("b", "h2", t0.Add(8*time.Second)); err != nil {
		t.Fatal(err)
	}
	tokenB := l.index
	if err := place("a", tokenA, t0.Add(8*time.Second), "web-2"); !errors.Is(err, ErrConflict) {
		t.Fatalf("deposed a's write: %v, want a conflict", err)
	}
	if err := place("b", tokenB, t0.Add(9*time.Second), "web-3"); err != nil {
		t.Fatalf("b's write: %v", err)
	}
	// a takes it back later: a new token, so a's old one stays dead.
	if err := take("a", "h1", t0.Add(20*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := place("a", tokenA, t0.Add(20*time.Second), "web-4"); !errors.Is(err, ErrConflict) {
		t.Fatalf("a's write with its first token: %v", err)
	}
	ps, _ := list[*Placement](l.f.store.current().Txn(false), "placements")
	var got []string
	for _, p := range ps {
		got = append(got, p.ID)
	}
	if len(got) != 2 || got[0] != "h1/web-1" || got[1] != "h1/web-3" {
		t.Fatalf("placements %v, want [h1/web-1 h1/web-3]", got)
	}
}

func TestLeaseEndsWhenItsHostFails(t *testing.T) {
	l := &fsmLog{t: t, f: newFSM()}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	hosts := func(s1 string) command {
		return command{Op: opHosts, Time: t0, Hosts: []Host{{ID: "h1", Status: s1}, {ID: "h2", Status: HostAlive}}}
	}
	if err := l.apply(hosts(HostAlive)); err != nil {
		t.Fatal(err)
	}
	req := func(holder, host string) command {
		return command{Op: opLease, Key: "scheduler", Time: t0.Add(time.Second), Lease: &LeaseRequest{Holder: holder, Host: host, TTL: ttl(time.Minute)}}
	}
	if err := l.apply(req("a", "h1")); err != nil {
		t.Fatal(err)
	}
	if err := l.apply(hosts(HostFailed)); err != nil {
		t.Fatal(err)
	}
	if err := l.apply(req("b", "h2")); err != nil {
		t.Fatalf("b after a's host failed: %v", err)
	}
}

func TestLeaseGiveUp(t *testing.T) {
	l := &fsmLog{t: t, f: newFSM()}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	req := func(holder string, d time.Duration) command {
		return command{Op: opLease, Key: "scheduler", Time: t0, Lease: &LeaseRequest{Holder: holder, Host: "h", TTL: ttl(d)}}
	}
	if err := l.apply(req("a", time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := l.apply(req("b", 0)); err != nil { // not b's: a no-op
		t.Fatal(err)
	}
	if err := l.apply(req("b", time.Minute)); !errors.Is(err, ErrConflict) {
		t.Fatalf("b while a holds it: %v", err)
	}
	if err := l.apply(req("a", 0)); err != nil {
		t.Fatal(err)
	}
	if err := l.apply(req("b", time.Minute)); err != nil {
		t.Fatalf("b after a gave it up: %v", err)
	}
}

func TestScheduleIsAllOrNothingAndKeepsStatus(t *testing.T) {
	l := &fsmLog{t: t, f: newFSM()}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f := Formation{Name: "web", Count: 2, Job: job.Spec{Rootfs: job.SystemRootfs, Cmd: []string{"/bin/web"}}}
	if err := checkFormation(&f); err != nil {
		t.Fatal(err)
	}
	obj, _ := json.Marshal(f)
	if err := l.apply(command{Op: opPut, Kind: "formations", Object: obj, Time: t0}); err != nil {
		t.Fatal(err)
	}
	if err := l.apply(command{Op: opLease, Key: "scheduler", Time: t0, Lease: &LeaseRequest{Holder: "a", Host: "h", TTL: ttl(time.Minute)}}); err != nil {
		t.Fatal(err)
	}
	fence := Fence{Lease: "scheduler", Holder: "a", Token: l.index}
	st := map[string]FormationStatus{"web": {Desired: 2, Running: 1, Reason: "needs more memory"}}
	if err := l.apply(command{Op: opSchedule, Time: t0, Schedule: &Schedule{Fence: fence, Status: st,
		Place: []Placement{{Formation: "web", Host: "h", Job: "web-1"}}}}); err != nil {
		t.Fatal(err)
	}
	// The API's write of the formation keeps the scheduler's status.
	f.Count = 3
	obj, _ = json.Marshal(f)
	if err := l.apply(command{Op: opPut, Kind: "formations", Object: obj, Time: t0}); err != nil {
		t.Fatal(err)
	}
	txn := l.f.store.current().Txn(false)
	raw, _ := txn.First("formations", "id", "web")
	if got := raw.(*Formation); got.Count != 3 || got.Status != st["web"] {
		t.Fatalf("formation after put: count %d status %+v", got.Count, got.Status)
	}
	// A refused schedule changes nothing, placements included.
	bad := Fence{Lease: "scheduler", Holder: "a", Token: fence.Token + 1}
	err := l.apply(command{Op: opSchedule, Time: t0, Schedule: &Schedule{Fence: bad,
		Remove: []Removal{{ID: "h/web-1", Reason: "test"}}, Place: []Placement{{Formation: "web", Host: "h", Job: "web-2"}}}})
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("schedule with a wrong token: %v", err)
	}
	ps, _ := list[*Placement](l.f.store.current().Txn(false), "placements")
	if len(ps) != 1 || ps[0].ID != "h/web-1" {
		t.Fatalf("placements after a refused schedule: %+v", ps)
	}
}

func TestFormationChecks(t *testing.T) {
	spec := job.Spec{Rootfs: job.SystemRootfs, Cmd: []string{"/bin/x"}}
	for _, tc := range []struct {
		f    Formation
		want string
	}{
		{Formation{Name: "Web", Job: spec}, "formation name"},
		{Formation{Name: "web", Count: -1, Job: spec}, "negative"},
		{Formation{Name: "web", Count: 1, Omni: true, Job: spec}, "not both"},
		{Formation{Name: "web", Constraints: map[string]string{"role": ""}, Job: spec}, "give a tag and a value"},
		{Formation{Name: "web", Constraints: map[string]string{"Rack": "a"}, Job: spec}, "hosts are matched by role, hostname, id, version, or by a label key"},
		{Formation{Name: "web", Constraints: map[string]string{"rack": "a,b"}, Job: spec}, `constraint rack matches no host: label value "a,b"`},
		{Formation{Name: "web", Job: job.Spec{Rootfs: job.SystemRootfs, Cmd: []string{"/bin/x"}, Restart: job.Restart{Policy: job.RestartNever}}}, "keeps its jobs running"},
		{Formation{Name: "web", Job: job.Spec{Rootfs: job.SystemRootfs}}, "cmd is empty"},
	} {
		err := checkFormation(&tc.f)
		if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.f, err, tc.want)
		}
	}
	labelled := Formation{Name: "web", Count: 1, Constraints: map[string]string{"role": "controller", "zone": "eu-1"}, Job: spec}
	if err := checkFormation(&labelled); err != nil {
		t.Errorf("a constraint on a label: %v", err)
	}
	f := Formation{Name: "web", Job: spec}
	if err := checkFormation(&f); err != nil || f.Job.ID != "web" || f.Job.Restart.Policy != job.RestartAlways {
		t.Fatalf("defaults: %v, job id %q, restart %q", err, f.Job.ID, f.Job.Restart.Policy)
	}
}
