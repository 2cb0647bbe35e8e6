package router

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/plinth-os/plinth/services/controller"
	"github.com/plinth-os/plinth/services/router/backend"
)

func TestBuildSets(t *testing.T) {
	var pool backend.Pool
	instances := []controller.Instance{
		{ID: "h2/web-2/web", Service: "web", Addr: "10.0.0.2:80", Healthy: true},
		{ID: "h1/web-1/web", Service: "web", Addr: "10.0.0.1:80", Healthy: true},
		{ID: "h3/web-3/web", Service: "web", Addr: "10.0.0.3:80", Healthy: false},
		{ID: "h4/web-4/web", Service: "web", Addr: "10.0.0.4:80", Healthy: true, Draining: true},
		{ID: "h1/sip-1/sip", Service: "sip", Addr: "10.0.0.1:5060", Healthy: true},
		{ID: "h1/sip-1/sip-udp", Service: "sip", Addr: "10.0.0.1:5060", Proto: "udp", Healthy: true},
	}
	services := []controller.Service{{Name: "web", Leader: "h2/web-2/web"}, {Name: "sip", Leader: "h1/sip-1/sip"}}
	sets := buildSets(&pool, instances, services)

	web := sets["web"]
	if len(web.Backends) != 2 || web.Backends[0].ID != "h1/web-1/web" || web.Backends[1].ID != "h2/web-2/web" {
		t.Fatalf("web: %+v, want the healthy, serving instances in ID order", web.Backends)
	}
	if web.Leader != web.Backends[1] {
		t.Errorf("web leader %v, want h2/web-2/web", web.Leader)
	}
	if sip, udp := sets["sip"], sets[udpSet("sip")]; len(sip.Backends) != 1 || len(udp.Backends) != 1 || sip.Backends[0] == udp.Backends[0] {
		t.Errorf("sip tcp %+v and udp %+v: want one each, apart", sip, udp)
	} else if sip.Leader != sip.Backends[0] || udp.Leader != udp.Backends[0] {
		t.Errorf("sip leaders tcp %v udp %v: want each set's own (the service's leader is the TCP instance)", sip.Leader, udp.Leader)
	}

	// A rebuild shares the backends, so work in flight stays counted.
	web.Backends[0].Acquire()
	again := buildSets(&pool, instances, services)
	if again["web"].Backends[0].Active() != 1 {
		t.Error("a rebuilt set lost the count of work in flight")
	}
	// A backend that left every set is kept while it has work.
	pool.Prune(func(b *backend.Backend) bool { return false })
	if len(pool.All()) != 1 {
		t.Errorf("prune kept %d backends, want the one with work in flight", len(pool.All()))
	}
}

// TestBadHTTPRoutesKeepTheTable: routes the table cannot take (here two
// for one domain and path, which the controller would refuse) leave the
// table that serves as it was, and the status says why.
func TestBadHTTPRoutesKeepTheTable(t *testing.T) {
	r, err := New(Config{Controller: controller.NewClient([]string{"127.0.0.1:1"}, nil), HTTPAddr: ":0", HTTPSAddr: ":0", APIAddr: ":0",
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	r.setInstances(nil)
	r.setServices(nil)
	r.setSettings(nil)
	good := controller.Route{ID: "http-1", Type: controller.RouteHTTP, Domain: "good.test", Path: "/", Service: "web"}
	r.setRoutes([]controller.Route{good})
	if r.state.table.Match("good.test", "/") == nil {
		t.Fatal("the first table does not route good.test")
	}
	dup := controller.Route{ID: "http-2", Type: controller.RouteHTTP, Domain: "new.test", Path: "/", Service: "web"}
	dup2 := dup
	dup2.ID = "http-3"
	r.setRoutes([]controller.Route{good, dup, dup2})
	if r.state.table.Match("good.test", "/") == nil || r.state.table.Match("new.test", "/") != nil {
		t.Error("a table that could not be built replaced the one serving")
	}
	if st := r.status(); !strings.Contains(st.TableError, "new.test") {
		t.Errorf("status table error %q, want it to name the clash", st.TableError)
	}
	r.setRoutes([]controller.Route{good, dup})
	if r.state.table.Match("new.test", "/") == nil || r.status().TableError != "" {
		t.Error("a good table after a bad one was not applied")
	}
}
