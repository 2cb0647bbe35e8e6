package controller

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/internal/testwait"
)

func TestThreeControllersElectAndReplicate(t *testing.T) {
	c := newTestCluster(t, 3)
	lead := c.leader(20 * time.Second)
	st, err := c.client(lead).Status(testwait.Ctx(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Voters) != 3 || !st.Healthy() {
		t.Fatalf("status: %+v", st)
	}

	// A write through a follower reaches the leader and every follower.
	var follower *testNode
	for _, n := range c.nodes {
		if n != lead {
			follower = n
		}
	}
	s, err := c.client(follower).PutSetting(testwait.Ctx(t, 5*time.Second), "greeting", "hello", nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.Value != "hello" || s.ModifyIndex == 0 || s.CreateIndex != s.ModifyIndex {
		t.Fatalf("put returned %+v", s)
	}
	for _, n := range c.nodes {
		testwait.For(t, "setting replicated to "+n.ip, 5*time.Second, func() error {
			got, _, err := c.client(n).Setting(testwait.Ctx(t, time.Second), "greeting", QueryOptions{})
			if err != nil {
				return err
			}
			if got.Value != "hello" {
				return fmt.Errorf("value %q", got.Value)
			}
			return nil
		})
	}

	// Hosts come from Serf.
	hosts, _, err := c.client().Hosts(testwait.Ctx(t, 5*time.Second), QueryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(hosts) != 3 {
		t.Fatalf("hosts: %+v", hosts)
	}
	for _, h := range hosts {
		if h.Status != HostAlive || len(h.Roles) != 1 || h.Roles[0] != RoleController {
			t.Errorf("host %+v", h)
		}
	}
}

func TestCompareAndSet(t *testing.T) {
	c := newTestCluster(t, 1)
	c.leader(20 * time.Second)
	cl := c.client()
	zero := uint64(0)
	s, err := cl.PutSetting(testwait.Ctx(t, 5*time.Second), "k", "v1", &zero)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.PutSetting(testwait.Ctx(t, 5*time.Second), "k", "again", &zero); !IsConflict(err) {
		t.Fatalf("create over an existing key: %v, want 409", err)
	}
	stale := s.ModifyIndex
	s2, err := cl.PutSetting(testwait.Ctx(t, 5*time.Second), "k", "v2", &stale)
	if err != nil {
		t.Fatal(err)
	}
	if s2.CreateIndex != s.CreateIndex || s2.ModifyIndex <= s.ModifyIndex {
		t.Fatalf("versions: first %+v then %+v", s.Meta, s2.Meta)
	}
	// The second writer read v1's index: its write must be refused, and
	// v2 must survive.
	if _, err := cl.PutSetting(testwait.Ctx(t, 5*time.Second), "k", "lost update", &stale); !IsConflict(err) {
		t.Fatalf("write on a stale index: %v, want 409", err)
	}
	if err := cl.DeleteSetting(testwait.Ctx(t, 5*time.Second), "k", &stale); !IsConflict(err) {
		t.Fatalf("delete on a stale index: %v, want 409", err)
	}
	got, _, err := cl.Setting(testwait.Ctx(t, 5*time.Second), "k", QueryOptions{})
	if err != nil || got.Value != "v2" {
		t.Fatalf("after conflicts: %+v %v", got, err)
	}
	if err := cl.DeleteSetting(testwait.Ctx(t, 5*time.Second), "k", &s2.ModifyIndex); err != nil {
		t.Fatal(err)
	}
	if _, _, err := cl.Setting(testwait.Ctx(t, 5*time.Second), "k", QueryOptions{}); !IsNotFound(err) {
		t.Fatalf("deleted setting: %v, want 404", err)
	}
}

func TestBadInputIsRefused(t *testing.T) {
	c := newTestCluster(t, 1)
	c.leader(20 * time.Second)
	base := "https://" + c.client().addrs[0]
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: c.creds.TLS()}}
	for _, tc := range []struct {
		method, path, body string
		want               int
	}{
		{"PUT", "/v1/settings/a", `{"value": "x", "colour": "red"}`, 400},
		{"PUT", "/v1/settings/a", `{"value": 42}`, 400},
		{"PUT", "/v1/settings/a", `{"value": "x"} {"value": "y"}`, 400},
		{"PUT", "/v1/settings/a", `{"key": "b", "value": "x"}`, 400},
		{"PUT", "/v1/settings/a", `not json`, 400},
		{"PUT", "/v1/settings/a?cas=minus", `{"value": "x"}`, 400},
		{"PUT", "/v1/hosts/x", `{"id": "x"}`, 405},
		{"PUT", "/v1/events/1", `{}`, 405},
		{"GET", "/v1/nothing", ``, 404},
		{"GET", "/v1/settings?index=abc", ``, 400},
		{"GET", "/v1/settings?index=1&wait=forever", ``, 400},
		{"PUT", "/v1/hosts/x/instances", `[{"id": "x/j/s", "service": "s", "host": "y", "job": "j", "addr": "1.2.3.4:1"}]`, 400},
		{"PUT", "/v1/hosts/x/instances", `[{"id": "x/j/s", "service": "s", "host": "x", "job": "j", "addr": "nowhere"}]`, 400},
		{"POST", "/v1/voters", `{"id": "no-such-host"}`, 404},
		{"POST", "/v1/restore", `plinth-controller-backup 1` + "\n" + `{"size": 5}` + "\nabc", 400},
	} {
		req, _ := http.NewRequest(tc.method, base+tc.path, strings.NewReader(tc.body))
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		buf.ReadFrom(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want || !strings.Contains(buf.String(), `"error"`) {
			t.Errorf("%s %s %s: %d %s, want %d with an error message", tc.method, tc.path, tc.body, resp.StatusCode, buf.String(), tc.want)
		}
	}
	// Nothing of it was written.
	settings, _, err := c.client().Settings(testwait.Ctx(t, 5*time.Second), QueryOptions{})
	if err != nil || len(settings) != 0 {
		t.Fatalf("settings after bad writes: %+v %v", settings, err)
	}
}

func TestWatchReturnsOnChangeNotBefore(t *testing.T) {
	c := newTestCluster(t, 3)
	lead := c.leader(20 * time.Second)
	var follower *testNode
	for _, n := range c.nodes {
		if n != lead {
			follower = n
		}
	}
	_, meta, err := c.client(follower).Settings(testwait.Ctx(t, 5*time.Second), QueryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Without a change, the watch runs to its wait.
	start := time.Now()
	_, meta2, err := c.client(follower).Settings(testwait.Ctx(t, 5*time.Second), QueryOptions{Index: meta.Index, Wait: 400 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited < 400*time.Millisecond || meta2.Index != meta.Index {
		t.Fatalf("watch without change returned after %v with index %d (was %d)", waited, meta2.Index, meta.Index)
	}
	// A write on the leader wakes a watch on a follower.
	type result struct {
		settings []Setting
		meta     QueryMeta
		err      error
		at       time.Time
	}
	got := make(chan result, 1)
	go func() {
		s, m, err := c.client(follower).Settings(context.Background(), QueryOptions{Index: meta.Index, Wait: 20 * time.Second})
		got <- result{s, m, err, time.Now()}
	}()
	select {
	case r := <-got:
		t.Fatalf("watch returned before any change: %+v", r)
	case <-time.After(300 * time.Millisecond):
	}
	written := time.Now()
	if _, err := c.client(lead).PutSetting(testwait.Ctx(t, 5*time.Second), "watched", "1", nil); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-got:
		if r.err != nil {
			t.Fatal(r.err)
		}
		if len(r.settings) != 1 || r.settings[0].Key != "watched" || r.meta.Index <= meta.Index {
			t.Fatalf("watch returned %+v", r)
		}
		t.Logf("follower's watch saw the leader's write %v after it was sent", r.at.Sub(written))
	case <-time.After(10 * time.Second):
		t.Fatal("watch on the follower did not return after the leader's write")
	}
}

func TestLeaderLossKeepsAcknowledgedWrites(t *testing.T) {
	c := newTestCluster(t, 3)
	lead := c.leader(20 * time.Second)
	cl := c.client()
	// A bounded writer: every acknowledged value must survive.
	var acked []int
	stopAt := time.Now().Add(8 * time.Second)
	killed, failed := false, 0
	var lastIndex uint64
	var killTime time.Time
	for i := 0; time.Now().Before(stopAt) && i < 5000; i++ {
		if !killed && i == 50 {
			c.stopController(lead)
			killed, killTime = true, time.Now()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		s, err := cl.PutSetting(ctx, fmt.Sprintf("counter-%05d", i), fmt.Sprint(i), nil)
		cancel()
		if err == nil {
			acked = append(acked, i)
			lastIndex = max(lastIndex, s.ModifyIndex)
		} else {
			failed++
			time.Sleep(50 * time.Millisecond) // as a client honouring Retry-After would, sooner
		}
	}
	if !killed || len(acked) < 60 {
		t.Fatalf("only %d writes acknowledged", len(acked))
	}
	var alive []*testNode
	for _, n := range c.nodes {
		if n != lead {
			alive = append(alive, n)
		}
	}
	newLead := c.leader(10 * time.Second)
	t.Logf("new leader %s; %d writes acknowledged, %d failed, last leader stopped %v into the run", newLead.ip, len(acked), failed, killTime.Sub(stopAt.Add(-8*time.Second)))
	// A follower may not have applied the last writes yet: read at least
	// up to the last acknowledged index, as any client that needs its
	// own writes does.
	settings, _, err := c.client(alive...).Settings(testwait.Ctx(t, 5*time.Second), QueryOptions{Index: lastIndex - 1, Wait: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, s := range settings {
		have[s.Key] = true
	}
	for _, i := range acked {
		if !have[fmt.Sprintf("counter-%05d", i)] {
			t.Errorf("acknowledged write %d lost", i)
		}
	}
}

// A consistent read on a follower is served by the leader: it sees every
// write acknowledged before it, which a follower's own state may not
// have applied yet.
func TestConsistentReadOnAFollower(t *testing.T) {
	c := newTestCluster(t, 3)
	lead := c.leader(20 * time.Second)
	var follower *testNode
	for _, n := range c.nodes {
		if n != lead {
			follower = n
			break
		}
	}
	writer, reader := c.client(lead), c.client(follower)
	for i := range 20 {
		f := Formation{Name: fmt.Sprintf("f%d", i), Count: i, Job: job.Spec{Rootfs: job.SystemRootfs, Cmd: []string{"/bin/true"}}}
		if _, err := writer.PutFormation(testwait.Ctx(t, 5*time.Second), f, nil); err != nil {
			t.Fatal(err)
		}
		got, err := reader.Formation(testwait.Ctx(t, 5*time.Second), f.Name, QueryOptions{Consistent: true})
		if err != nil || got.Count != i {
			t.Fatalf("consistent read of %s right after its write: %+v, %v", f.Name, got, err)
		}
	}
}
