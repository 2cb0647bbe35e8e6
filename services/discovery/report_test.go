package discovery

import (
	"testing"
	"time"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/services/controller"
)

// signalled reports whether l signalled a change, and takes the signal.
func signalled(l *local) bool {
	select {
	case <-l.changed:
		return true
	default:
		return false
	}
}

func TestLocal(t *testing.T) {
	l := newLocal()
	if _, _, ok := l.snapshot(); ok {
		t.Error("the set is known before the jobs were listed")
	}
	in := controller.Instance{ID: "h1/web-1/web", Service: "web", Host: "h1", Job: "web-1", Addr: "10.0.0.1:80", Healthy: true, Output: "http 200"}
	l.set(in)
	if !signalled(l) {
		t.Error("a new instance was not signalled")
	}
	l.setListed("h1")
	if !signalled(l) {
		t.Error("the first listing was not signalled")
	}
	host, got, ok := l.snapshot()
	if !ok || host != "h1" || len(got) != 1 || got[0] != in {
		t.Errorf("snapshot: %q %v %v", host, got, ok)
	}

	in.Output = "http 200 again"
	l.set(in)
	if signalled(l) {
		t.Error("a new output alone was signalled")
	}
	if _, got, _ := l.snapshot(); got[0].Output != "http 200 again" {
		t.Errorf("output not kept: %+v", got[0])
	}
	in.Healthy, in.Output = false, "http 500, want 2xx"
	l.set(in)
	if !signalled(l) {
		t.Error("a change of health was not signalled")
	}
	l.remove(in.ID)
	if !signalled(l) {
		t.Error("a removal was not signalled")
	}
	l.remove(in.ID)
	if signalled(l) {
		t.Error("removing nothing was signalled")
	}
}

// An agent that starts while the controller is down reports its host's
// instances once the controller is back, and again every ReportInterval.
func TestReportWhenControllerBack(t *testing.T) {
	ctl := newFakeController()
	ctl.setDown(true)
	h := newFakeHost(t, host.HostInfo{ID: "h1", API: "127.0.0.1:4443"})
	cfg := testConfig(t, h, ctl)
	cfg.ReportInterval = 20 * time.Millisecond
	startAgent(t, cfg)
	select {
	case <-ctl.refused:
	case <-time.After(testWait):
		t.Fatal("the agent made no report")
	}
	ctl.setDown(false)
	for i := range 2 {
		r := ctl.waitReport(t, "for h1", func(r report) bool { return r.host == "h1" })
		if len(r.instances) != 0 {
			t.Errorf("report %d: %v, want no instances (the host has no jobs)", i, r.instances)
		}
	}
}
