package updater

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/services/controller"
)

// fakeCluster is the controller and the hosts, as the updater sees
// them: a host sent a bundle reboots (it answers nothing for a few
// reads), then comes back as its behaviour says.
type fakeCluster struct {
	t  *testing.T
	mu sync.Mutex
	up controller.Upgrade
	// leader is the raft leader; every host is a voter.
	leader string
	// stalls is how many bundle sends hang until cut off.
	stalls int
	hosts  map[string]*fakeHost
}

type fakeHost struct {
	id, version string
	started     time.Time
	cordoned    bool
	down        int    // reads left before it answers again
	upgrade     string // the slots' upgrade state
	healthy     bool   // its instances
	// behaviour on an upgrade: "ok", "falls back", "unhealthy", "refuses"
	behaviour string
	target    string
	upgrades  int
	rollbacks int
}

func newFakeCluster(t *testing.T, leader string, behaviours map[string]string) *fakeCluster {
	c := &fakeCluster{t: t, leader: leader, hosts: map[string]*fakeHost{}}
	for _, id := range []string{"h1", "h2", "h3"} {
		b := behaviours[id]
		if b == "" {
			b = "ok"
		}
		c.hosts[id] = &fakeHost{id: id, version: "v1", started: time.Unix(1, 0), upgrade: "committed", healthy: true, behaviour: b}
	}
	return c
}

// anyDown reports whether a host other than except is away.
func (c *fakeCluster) anyDown(except string) bool {
	for id, h := range c.hosts {
		if id != except && (h.down > 0 || h.version != h.target && h.target != "") {
			return true
		}
	}
	return false
}

func (c *fakeCluster) Upgrades(context.Context, controller.QueryOptions) ([]controller.Upgrade, controller.QueryMeta, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return []controller.Upgrade{c.up}, controller.QueryMeta{Index: c.up.ModifyIndex}, nil
}

func (c *fakeCluster) Upgrade(context.Context, string, controller.QueryOptions) (controller.Upgrade, controller.QueryMeta, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.up, controller.QueryMeta{Index: c.up.ModifyIndex}, nil
}

func (c *fakeCluster) PutUpgrade(_ context.Context, u controller.Upgrade, cas *uint64) (controller.Upgrade, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cas != nil && *cas != c.up.ModifyIndex {
		return controller.Upgrade{}, &controller.APIError{StatusCode: http.StatusConflict, Message: "index conflict"}
	}
	u.ModifyIndex = c.up.ModifyIndex + 1
	// As the controller does: what is stored and answered is a copy.
	data, _ := json.Marshal(u)
	c.up = controller.Upgrade{}
	json.Unmarshal(data, &c.up)
	c.up.ModifyIndex = u.ModifyIndex
	var out controller.Upgrade
	json.Unmarshal(data, &out)
	out.ModifyIndex = u.ModifyIndex
	return out, nil
}

func (c *fakeCluster) Hosts(context.Context, controller.QueryOptions) ([]controller.Host, controller.QueryMeta, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []controller.Host
	for _, id := range []string{"h1", "h2", "h3"} {
		h := c.hosts[id]
		st := host.StatusAlive
		if h.down > 0 {
			st = host.StatusFailed
		}
		out = append(out, controller.Host{ID: id, Hostname: id, API: id, Status: st, Version: h.version, Cordoned: h.cordoned})
	}
	return out, controller.QueryMeta{}, nil
}

func (c *fakeCluster) Status(context.Context) (controller.Status, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := controller.Status{Leader: c.leader}
	for _, id := range []string{"h1", "h2", "h3"} {
		st.Voters = append(st.Voters, controller.Voter{ID: id, Suffrage: "voter", Healthy: c.hosts[id].down == 0})
	}
	return st, nil
}

func (c *fakeCluster) Drain(_ context.Context, id string) (controller.Host, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hosts[id].cordoned = true
	return controller.Host{ID: id}, nil
}

func (c *fakeCluster) Cordon(_ context.Context, id string, cordon bool) (controller.Host, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hosts[id].cordoned = cordon
	return controller.Host{ID: id}, nil
}

func (c *fakeCluster) Placements(context.Context, controller.QueryOptions) ([]controller.Placement, controller.QueryMeta, error) {
	return nil, controller.QueryMeta{Index: 1}, nil
}

func (c *fakeCluster) Formations(context.Context, controller.QueryOptions) ([]controller.Formation, controller.QueryMeta, error) {
	return nil, controller.QueryMeta{}, nil
}

func (c *fakeCluster) Instances(context.Context, controller.QueryOptions) ([]controller.Instance, controller.QueryMeta, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []controller.Instance
	for id, h := range c.hosts {
		out = append(out, controller.Instance{ID: id + "/router", Host: id, Service: "router", Healthy: h.healthy, Output: "connection refused"})
	}
	return out, controller.QueryMeta{}, nil
}

// hostAPI is one fake host's API.
type hostAPI struct {
	c  *fakeCluster
	id string
}

func (a hostAPI) Host(context.Context) (host.HostInfo, error) {
	a.c.mu.Lock()
	defer a.c.mu.Unlock()
	h := a.c.hosts[a.id]
	if h.down > 0 {
		h.down--
		if h.down == 0 {
			a.c.comeBack(h)
		}
		return host.HostInfo{}, fmt.Errorf("connection refused")
	}
	return host.HostInfo{ID: h.id, Version: h.version, StartedAt: h.started, Slots: host.SlotsInfo{Upgrade: h.upgrade}}, nil
}

// comeBack ends a host's reboot as its behaviour says.
func (c *fakeCluster) comeBack(h *fakeHost) {
	h.started = h.started.Add(time.Minute)
	switch h.behaviour {
	case "falls back":
		h.upgrade = "failed: " + h.target + " in slot b did not become healthy (3 boots); running v1 in slot a"
	case "unhealthy":
		if h.rollbacks == 0 {
			h.version, h.healthy = h.target, false
		} else {
			h.version, h.healthy = "v1", true
		}
	default:
		h.version = h.target
	}
}

func (a hostAPI) Upgrade(ctx context.Context, b io.Reader, opts host.UpgradeOptions) (host.UpgradeResult, error) {
	a.c.mu.Lock()
	if a.c.stalls > 0 {
		// The stream never ends; the caller's deadline cuts it.
		a.c.stalls--
		a.c.mu.Unlock()
		<-ctx.Done()
		return host.UpgradeResult{}, ctx.Err()
	}
	defer a.c.mu.Unlock()
	data, _ := io.ReadAll(b)
	h := a.c.hosts[a.id]
	if h.behaviour == "refuses" {
		return host.UpgradeResult{}, &host.APIError{StatusCode: 409, Message: "this host did not boot from a disk slot"}
	}
	if a.c.anyDown(a.id) {
		a.c.t.Errorf("%s upgraded while another host is away", a.id)
	}
	if !h.cordoned {
		a.c.t.Errorf("%s upgraded while not cordoned", a.id)
	}
	h.target = strings.TrimPrefix(string(data), "bundle ")
	h.upgrades++
	h.down = 3
	return host.UpgradeResult{Slot: "b", Version: h.target, Rebooting: true}, nil
}

func (a hostAPI) Rollback(context.Context) (host.UpgradeResult, error) {
	a.c.mu.Lock()
	defer a.c.mu.Unlock()
	h := a.c.hosts[a.id]
	h.rollbacks++
	h.down = 2
	return host.UpgradeResult{Slot: "a", Version: "v1", Rebooting: true}, nil
}

// updater is an Updater of the fake cluster; tune changes its config.
func (c *fakeCluster) updater(t *testing.T, tune ...func(*Config)) *Updater {
	cfg := Config{
		Controller: c,
		Dial:       func(addr string) HostAPI { return hostAPI{c: c, id: addr} },
		OpenBundle: func(context.Context, string) (io.ReadCloser, error) {
			return io.NopCloser(strings.NewReader("bundle v2")), nil
		},
		Poll:           time.Millisecond,
		HealthyTimeout: 50 * time.Millisecond,
	}
	for _, f := range tune {
		f(&cfg)
	}
	u, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func (c *fakeCluster) start() controller.Upgrade {
	c.up = controller.Upgrade{ID: "v2-1", Version: "v2", Bundle: "plinth-upgrades@sha256:00", State: controller.UpgradeRunning}
	c.up.ModifyIndex = 1
	return c.up
}

func TestRollingUpgrade(t *testing.T) {
	c := newFakeCluster(t, "h2", nil)
	u := c.updater(t)
	if err := u.run(t.Context(), c.start()); err != nil {
		t.Fatal(err)
	}
	if c.up.State != controller.UpgradeDone {
		t.Fatalf("upgrade %s: %s\n%s", c.up.State, c.up.Reason, strings.Join(c.up.Log, "\n"))
	}
	var order []string
	for _, h := range c.up.Hosts {
		order = append(order, h.ID)
	}
	// The raft leader last.
	if strings.Join(order, ",") != "h1,h3,h2" {
		t.Errorf("order %v", order)
	}
	for id, h := range c.hosts {
		if h.version != "v2" || h.upgrades != 1 || h.cordoned {
			t.Errorf("%s: version %s, %d upgrades, cordoned %v", id, h.version, h.upgrades, h.cordoned)
		}
	}
}

// TestResume: an updater that stops mid-upgrade (its context ends) is
// followed by one that continues from the record, upgrading no host
// twice.
func TestResume(t *testing.T) {
	c := newFakeCluster(t, "h3", nil)
	up := c.start()
	runs := 0
	for ; c.up.State == controller.UpgradeRunning; runs++ {
		if runs > 100 {
			t.Fatal("no end")
		}
		ctx, cancel := context.WithCancel(t.Context())
		// Stop after a few saves.
		saves := 0
		wrapped := &countingController{fakeCluster: c, after: 3, cancel: cancel, saves: &saves}
		u, _ := New(Config{Controller: wrapped, Dial: func(addr string) HostAPI { return hostAPI{c: c, id: addr} },
			OpenBundle: func(context.Context, string) (io.ReadCloser, error) {
				return io.NopCloser(strings.NewReader("bundle v2")), nil
			},
			Poll: time.Millisecond, HealthyTimeout: time.Second})
		up, _, _ = c.Upgrade(ctx, up.ID, controller.QueryOptions{})
		u.run(ctx, up)
		cancel()
	}
	if c.up.State != controller.UpgradeDone {
		t.Fatalf("%s: %s", c.up.State, c.up.Reason)
	}
	if runs < 3 {
		t.Errorf("%d runs: the updater was hardly interrupted", runs)
	}
	t.Logf("done after %d interrupted runs", runs)
	for id, h := range c.hosts {
		if h.version != "v2" || h.upgrades != 1 {
			t.Errorf("%s: version %s after %d upgrades", id, h.version, h.upgrades)
		}
	}
}

// countingController cancels the updater's context after some saves.
type countingController struct {
	*fakeCluster
	after  int
	saves  *int
	cancel func()
}

func (c *countingController) PutUpgrade(ctx context.Context, u controller.Upgrade, cas *uint64) (controller.Upgrade, error) {
	out, err := c.fakeCluster.PutUpgrade(ctx, u, cas)
	if *c.saves++; *c.saves >= c.after {
		c.cancel()
	}
	return out, err
}

func TestUpgradeStopsAtAFailingHost(t *testing.T) {
	for _, tc := range []struct {
		behaviour, reason string
		rollbacks         int
	}{
		{"falls back", "went back to v1 by itself", 0},
		{"unhealthy", "rolled back to v1", 1},
		{"refuses", "refused the upgrade", 0},
	} {
		t.Run(tc.behaviour, func(t *testing.T) {
			c := newFakeCluster(t, "h2", map[string]string{"h3": tc.behaviour})
			if err := c.updater(t).run(t.Context(), c.start()); err != nil {
				t.Fatal(err)
			}
			if c.up.State != controller.UpgradeFailed || !strings.Contains(c.up.Reason, tc.reason) {
				t.Fatalf("upgrade %s: %q, want failed with %q", c.up.State, c.up.Reason, tc.reason)
			}
			h3 := c.hosts["h3"]
			if h3.cordoned || h3.rollbacks != tc.rollbacks || h3.version != "v1" {
				t.Errorf("h3: cordoned %v, %d rollbacks, on %s", h3.cordoned, h3.rollbacks, h3.version)
			}
			if c.hosts["h2"].upgrades != 0 {
				t.Error("the upgrade went on past the failing host")
			}
			if c.up.Hosts[1].State != controller.HostUpgradeFailed {
				t.Errorf("h3's record: %+v", c.up.Hosts[1])
			}
		})
	}
}

func TestSkipsHostsOnTheVersion(t *testing.T) {
	c := newFakeCluster(t, "h2", nil)
	c.hosts["h1"].version = "v2"
	if err := c.updater(t).run(t.Context(), c.start()); err != nil {
		t.Fatal(err)
	}
	if c.up.State != controller.UpgradeDone || c.hosts["h1"].upgrades != 0 || c.up.Hosts[0].State != controller.HostUpgradeSkipped {
		t.Errorf("%s %+v", c.up.State, c.up.Hosts[0])
	}
}

// TestCancel: a canceled upgrade stops at the updater's next save.
func TestCancel(t *testing.T) {
	c := newFakeCluster(t, "h2", nil)
	up := c.start()
	c.up.State = controller.UpgradeCanceled
	c.up.ModifyIndex++
	if err := c.updater(t).run(t.Context(), up); err != nil {
		t.Fatal(err)
	}
	for id, h := range c.hosts {
		if h.upgrades != 0 {
			t.Errorf("%s upgraded after the cancel", id)
		}
	}
}

// flakyWriter answers 503 to the first writes; lost says the first of
// them was applied all the same (the leader committed it, then went).
type flakyWriter struct {
	fails  int
	lost   bool
	stored *controller.Upgrade
}

func (w *flakyWriter) PutUpgrade(_ context.Context, u controller.Upgrade, _ *uint64) (controller.Upgrade, error) {
	if w.stored != nil {
		return controller.Upgrade{}, &controller.APIError{StatusCode: http.StatusConflict, Message: "index conflict"}
	}
	if w.fails > 0 {
		w.fails--
		if w.lost {
			w.stored = &u
		}
		return controller.Upgrade{}, &controller.APIError{StatusCode: http.StatusServiceUnavailable, Message: "no leader"}
	}
	w.stored = &u
	return u, nil
}

func (w *flakyWriter) Upgrade(context.Context, string, controller.QueryOptions) (controller.Upgrade, controller.QueryMeta, error) {
	if w.stored == nil {
		return controller.Upgrade{}, controller.QueryMeta{}, &controller.APIError{StatusCode: http.StatusNotFound}
	}
	return *w.stored, controller.QueryMeta{}, nil
}

func TestStartThroughALeaderChange(t *testing.T) {
	up := controller.Upgrade{ID: "v2-1", Version: "v2", Bundle: "plinth-upgrades@sha256:aa", State: controller.UpgradeRunning}
	for _, lost := range []bool{false, true} {
		w := &flakyWriter{fails: 2, lost: lost}
		got, err := Start(t.Context(), w, up)
		if err != nil || got.ID != up.ID {
			t.Errorf("lost=%v: %+v %v", lost, got, err)
		}
	}
	other := &flakyWriter{stored: &controller.Upgrade{ID: "v2-1", Bundle: "plinth-upgrades@sha256:bb"}}
	if _, err := Start(t.Context(), other, up); !controller.IsConflict(err) {
		t.Errorf("an upgrade of another bundle under the same name: %v", err)
	}
}

// TestStalledSend: a send that hangs is cut off at SendTimeout and the
// next run sends again.
func TestStalledSend(t *testing.T) {
	c := newFakeCluster(t, "h2", nil)
	c.stalls = 1
	u := c.updater(t, func(cfg *Config) { cfg.SendTimeout = 20 * time.Millisecond })
	err := u.run(t.Context(), c.start())
	if err == nil || !strings.Contains(err.Error(), "deadline") {
		t.Fatalf("first run: %v, want the send cut off", err)
	}
	up, _, _ := c.Upgrade(t.Context(), "", controller.QueryOptions{})
	if err := u.run(t.Context(), up); err != nil {
		t.Fatal(err)
	}
	if c.up.State != controller.UpgradeDone || c.hosts["h1"].upgrades != 1 {
		t.Errorf("%s; h1 upgraded %d times", c.up.State, c.hosts["h1"].upgrades)
	}
}
