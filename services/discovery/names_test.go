package discovery

import (
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/plinth-os/plinth/services/controller"
)

// fixture is a small cluster: service web with three healthy instances
// (one on IPv6) and one unhealthy, led by web-1; service idle without
// instances; an unhealthy instance of a service the controller has not
// recorded (yet); three hosts, one an alive controller.
func fixture() ([]controller.Instance, []controller.Service, []controller.Host) {
	instances := []controller.Instance{
		{ID: "h1/web-1/web", Service: "web", Host: "h1", Job: "web-1", Addr: "10.0.0.1:8080", Healthy: true},
		{ID: "h2/web-2/web", Service: "web", Host: "h2", Job: "web-2", Addr: "10.0.0.2:8080", Healthy: true},
		{ID: "h2/web-3/web", Service: "web", Host: "h2", Job: "web-3", Addr: "10.0.0.2:8081", Healthy: true},
		{ID: "h3/web-4/web", Service: "web", Host: "h3", Job: "web-4", Addr: "10.0.0.3:8080", Healthy: false},
		{ID: "h3/web-5/web", Service: "web", Host: "h3", Job: "web-5", Addr: "[fd00::5]:8080", Healthy: true},
		{ID: "h1/cache-1/cache", Service: "cache", Host: "h1", Job: "cache-1", Addr: "10.0.0.1:6379", Healthy: false},
		{ID: "h1/broken/broken", Service: "broken", Host: "h1", Job: "broken", Addr: "nonsense", Healthy: true},
	}
	services := []controller.Service{{Name: "web", Leader: "h1/web-1/web"}, {Name: "idle"}, {Name: "Mixed"}}
	hosts := []controller.Host{
		{ID: "h1", API: "10.1.0.1:4443", Addr: "10.1.0.1:7946", Status: "alive", Roles: []string{"controller"}},
		{ID: "h2", API: "10.1.0.2:4443", Status: "failed", Roles: []string{"controller"}},
		{ID: "h3", API: "10.1.0.3:4443", Status: "alive", Roles: []string{"worker"}},
		{ID: "h4", API: "", Addr: "[fd01::4]:7946", Status: "alive", Roles: []string{"worker", "controller"}},
	}
	return instances, services, hosts
}

// rrStrings is rrs in presentation form, sorted.
func rrStrings(rrs []dns.RR) []string {
	var s []string
	for _, rr := range rrs {
		s = append(s, rr.String())
	}
	slices.Sort(s)
	return s
}

func TestLookup(t *testing.T) {
	tab := buildTable(fixture())
	const ttl = 5
	for _, tc := range []struct {
		name   string
		qtype  uint16
		exists bool
		answer []string
		extra  []string
	}{
		{"web.plinth.", dns.TypeA, true, []string{
			"web.plinth.\t5\tIN\tA\t10.0.0.1",
			"web.plinth.\t5\tIN\tA\t10.0.0.2",
		}, nil},
		{"web.plinth.", dns.TypeAAAA, true, []string{"web.plinth.\t5\tIN\tAAAA\tfd00::5"}, nil},
		{"web.plinth.", dns.TypeSRV, true, []string{
			"web.plinth.\t5\tIN\tSRV\t0 1 8080 10-0-0-1.web.plinth.",
			"web.plinth.\t5\tIN\tSRV\t0 1 8080 10-0-0-2.web.plinth.",
			"web.plinth.\t5\tIN\tSRV\t0 1 8080 fd00--5.web.plinth.",
			"web.plinth.\t5\tIN\tSRV\t0 1 8081 10-0-0-2.web.plinth.",
		}, []string{
			"10-0-0-1.web.plinth.\t5\tIN\tA\t10.0.0.1",
			"10-0-0-2.web.plinth.\t5\tIN\tA\t10.0.0.2",
			"fd00--5.web.plinth.\t5\tIN\tAAAA\tfd00::5",
		}},
		{"web.plinth.", dns.TypeTXT, true, nil, nil},
		// Names are matched without regard to case, and answered as asked.
		{"WeB.Plinth.", dns.TypeAAAA, true, []string{"WeB.Plinth.\t5\tIN\tAAAA\tfd00::5"}, nil},
		{"mixed.plinth.", dns.TypeA, true, nil, nil},
		{"leader.web.plinth.", dns.TypeA, true, []string{"leader.web.plinth.\t5\tIN\tA\t10.0.0.1"}, nil},
		{"leader.web.plinth.", dns.TypeSRV, true, []string{"leader.web.plinth.\t5\tIN\tSRV\t0 1 8080 10-0-0-1.web.plinth."},
			[]string{"10-0-0-1.web.plinth.\t5\tIN\tA\t10.0.0.1"}},
		{"leader.idle.plinth.", dns.TypeA, true, nil, nil},
		{"leader.nope.plinth.", dns.TypeA, false, nil, nil},
		// An address name answers for any instance, healthy or not.
		{"10-0-0-3.web.plinth.", dns.TypeA, true, []string{"10-0-0-3.web.plinth.\t5\tIN\tA\t10.0.0.3"}, nil},
		{"fd00--5.web.plinth.", dns.TypeAAAA, true, []string{"fd00--5.web.plinth.\t5\tIN\tAAAA\tfd00::5"}, nil},
		{"fd00--5.web.plinth.", dns.TypeA, true, nil, nil},
		{"10-0-0-9.web.plinth.", dns.TypeA, false, nil, nil},
		// Known from its instances only, none healthy.
		{"cache.plinth.", dns.TypeA, true, nil, nil},
		{"idle.plinth.", dns.TypeA, true, nil, nil},
		{"idle.plinth.", dns.TypeSRV, true, nil, nil},
		{"broken.plinth.", dns.TypeA, true, nil, nil},
		{"nope.plinth.", dns.TypeA, false, nil, nil},
		{"a.b.web.plinth.", dns.TypeA, false, nil, nil},
		{"controller.plinth.", dns.TypeA, true, []string{"controller.plinth.\t5\tIN\tA\t10.1.0.1"}, nil},
		{"controller.plinth.", dns.TypeAAAA, true, []string{"controller.plinth.\t5\tIN\tAAAA\tfd01::4"}, nil},
		{"plinth.", dns.TypeSOA, true, []string{"plinth.\t5\tIN\tSOA\tns.plinth. hostmaster.plinth. 1 3600 600 86400 5"}, nil},
		{"plinth.", dns.TypeA, true, nil, nil},
		{"example.com.", dns.TypeA, false, nil, nil},
	} {
		answer, extra, exists := tab.lookup(tc.name, tc.qtype, ttl)
		what := tc.name + " " + dns.TypeToString[tc.qtype]
		if exists != tc.exists {
			t.Errorf("%s: exists = %v, want %v", what, exists, tc.exists)
		}
		if got := rrStrings(answer); !slices.Equal(got, tc.answer) {
			t.Errorf("%s: answer\n%s\nwant\n%s", what, strings.Join(got, "\n"), strings.Join(tc.answer, "\n"))
		}
		if got := rrStrings(extra); !slices.Equal(got, tc.extra) {
			t.Errorf("%s: extra\n%s\nwant\n%s", what, strings.Join(got, "\n"), strings.Join(tc.extra, "\n"))
		}
	}
}

func TestLookupANY(t *testing.T) {
	tab := buildTable(fixture())
	answer, _, _ := tab.lookup("leader.web.plinth.", dns.TypeANY, 5)
	want := []string{
		"leader.web.plinth.\t5\tIN\tA\t10.0.0.1",
		"leader.web.plinth.\t5\tIN\tSRV\t0 1 8080 10-0-0-1.web.plinth.",
	}
	if got := rrStrings(answer); !slices.Equal(got, want) {
		t.Errorf("ANY: %q, want %q", got, want)
	}
}

// A leader that is no instance (any more) has no address.
func TestLookupLeaderGone(t *testing.T) {
	instances, services, hosts := fixture()
	services[0].Leader = "h9/gone/web"
	answer, _, exists := buildTable(instances, services, hosts).lookup("leader.web.plinth.", dns.TypeA, 5)
	if !exists || len(answer) != 0 {
		t.Errorf("leader gone: exists %v, answer %v; want an empty answer", exists, answer)
	}
}

func TestInstancesOfDownHostsLeaveTheNames(t *testing.T) {
	instances := []controller.Instance{
		{ID: "a/j/web", Service: "web", Host: "a", Job: "j", Addr: "10.0.0.1:80", Healthy: true},
		{ID: "b/j/web", Service: "web", Host: "b", Job: "j", Addr: "10.0.0.2:80", Healthy: true},
	}
	services := []controller.Service{{Name: "web", Leader: "a/j/web"}}
	tab := buildTable(withoutDown(instances, map[string]bool{"a": true}), services, nil)
	web := tab.services["web"]
	if len(web.healthy) != 1 || web.healthy[0].String() != "10.0.0.2:80" {
		t.Fatalf("healthy %v, want only b's instance", web.healthy)
	}
	if web.leader.IsValid() {
		t.Fatalf("leader %v on a down host is still answered", web.leader)
	}
	if !instances[0].Healthy {
		t.Fatal("withoutDown changed the cache's own instances")
	}
	if got := withoutDown(instances, nil); &got[0] != &instances[0] {
		t.Fatal("withoutDown copied with no host down")
	}
}
