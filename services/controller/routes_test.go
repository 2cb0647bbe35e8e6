package controller

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host/job"
)

// testCert makes a self-signed certificate for names, valid from
// notBefore for a day, as PEM.
func testCert(t *testing.T, notBefore time.Time, names ...string) (certPEM, keyPEM string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: notBefore, NotAfter: notBefore.Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
}

func TestRouteChecks(t *testing.T) {
	now := time.Now().Add(-time.Hour)
	cert, key := testCert(t, now, "example.com")
	wcert, wkey := testCert(t, now, "*.example.com")
	_, otherKey := testCert(t, now, "example.com")
	oldCert, oldKey := testCert(t, now.Add(-48*time.Hour), "example.com")
	for _, tc := range []struct {
		r    Route
		want string
	}{
		{Route{Type: "smtp", Service: "web"}, `type "smtp"`},
		{Route{Type: RouteHTTP, Service: "Web", Domain: "example.com"}, `service "Web"`},
		{Route{Type: RouteHTTP, Service: "web", Domain: "localhost"}, `domain "localhost"`},
		{Route{Type: RouteHTTP, Service: "web", Domain: "a.*.example.com"}, "domain"},
		{Route{Type: RouteHTTP, Service: "web", Domain: "example.com", Path: "api"}, "start it with '/'"},
		{Route{Type: RouteHTTP, Service: "web", Domain: "example.com", Path: "/a?b"}, "without query"},
		{Route{Type: RouteHTTP, Service: "web", Domain: "example.com", Port: 8080}, "port, leader"},
		{Route{Type: RouteHTTP, Service: "web", Domain: "example.com", TLSCert: cert}, "both the certificate and its key"},
		{Route{Type: RouteHTTP, Service: "web", Domain: "example.com", TLSCert: cert, TLSKey: otherKey}, "private key does not match"},
		{Route{Type: RouteHTTP, Service: "web", Domain: "example.org", TLSCert: cert, TLSKey: key}, "certificate is for example.com, not example.org"},
		{Route{Type: RouteHTTP, Service: "web", Domain: "*.example.com", TLSCert: cert, TLSKey: key}, "not *.example.com"},
		{Route{Type: RouteHTTP, Service: "web", Domain: "example.com", TLSCert: oldCert, TLSKey: oldKey}, "expired"},
		{Route{Type: RouteHTTP, Service: "web", Domain: "example.com", Timeout: ttl(2 * time.Hour)}, "timeout 2h0m0s"},
		{Route{Type: RouteTCP, Service: "db", Port: 70000}, "port 70000"},
		{Route{Type: RouteTCP, Service: "db", Port: 5432, PortEnd: 5433}, "port ranges are for udp"},
		{Route{Type: RouteTCP, Service: "db", Domain: "example.com"}, "for http routes"},
		{Route{Type: RouteTCP, Service: "db", TLSCert: cert, TLSKey: key}, "add tls"},
		{Route{Type: RouteUDP, Service: "sip"}, "needs its port"},
		{Route{Type: RouteUDP, Service: "sip", Port: 5060, PortEnd: 5000}, "last port must be at least"},
		{Route{Type: RouteUDP, Service: "rtp", Port: 10000, PortEnd: 20000}, "over 1000 ports"},
		{Route{Type: RouteUDP, Service: "sip", Port: 5060, TLS: true}, "for tcp routes"},
	} {
		err := checkRoute(&tc.r)
		if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.r, err, tc.want)
		}
	}
	for _, r := range []Route{
		{Type: RouteHTTP, Service: "web", Domain: "Example.COM.", TLSCert: cert, TLSKey: key},
		{Type: RouteHTTP, Service: "web", Domain: "*.example.com", TLSCert: wcert, TLSKey: wkey},
		{Type: RouteTCP, Service: "db", TLS: true},
		{Type: RouteUDP, Service: "rtp", Port: 10000, PortEnd: 10999},
	} {
		if err := checkRoute(&r); err != nil {
			t.Errorf("%+v: %v", r, err)
		}
	}
	if err := checkSetting(&Setting{Key: TCPPortsSetting, Value: "40000-30000"}); err == nil || !strings.Contains(err.Error(), "give N or N-M") {
		t.Errorf("a backwards port range setting: %v", err)
	}
	for _, bad := range []Setting{{Key: DefaultCertSetting, Value: key}, {Key: DefaultKeySetting, Value: cert}, {Key: DefaultCertSetting, Value: "x"}} {
		if err := checkSetting(&bad); err == nil {
			t.Errorf("setting %s = %.20q accepted", bad.Key, bad.Value)
		}
	}
	for _, good := range []Setting{{Key: DefaultCertSetting, Value: cert}, {Key: DefaultKeySetting, Value: key}} {
		if err := checkSetting(&good); err != nil {
			t.Errorf("setting %s: %v", good.Key, err)
		}
	}
	r := Route{Type: RouteHTTP, Service: "web", Domain: "Example.com", Path: "/api/"}
	if err := checkRoute(&r); err != nil || r.Domain != "example.com" || r.Path != "/api" {
		t.Errorf("normalised: %v, domain %q path %q", err, r.Domain, r.Path)
	}
}

// TestRouteAdmission: a route is checked against the others as it is
// applied — its service must exist, its domain and path or its ports
// must be free — and a refused route changes nothing.
func TestRouteAdmission(t *testing.T) {
	l := &fsmLog{t: t, f: newFSM()}
	put := func(r Route) (Route, error) {
		t.Helper()
		if err := checkRoute(&r); err != nil {
			t.Fatal(err)
		}
		obj, _ := json.Marshal(r)
		if err := l.apply(command{Op: opPut, Kind: "routes", Object: obj}); err != nil {
			return Route{}, err
		}
		id := r.ID
		if id == "" {
			id = r.Type + "-" + jsonNumber(l.index)
		}
		raw, _ := l.f.store.current().Txn(false).First("routes", "id", id)
		if raw == nil {
			t.Fatalf("route %s not stored", id)
		}
		return *raw.(*Route), nil
	}
	must := func(r Route) Route {
		t.Helper()
		got, err := put(r)
		if err != nil {
			t.Fatalf("%+v: %v", r, err)
		}
		return got
	}
	refused := func(r Route, want string) {
		t.Helper()
		before, _ := list[*Route](l.f.store.current().Txn(false), "routes")
		_, err := put(r)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("%+v: %v, want %q", r, err, want)
		}
		after, _ := list[*Route](l.f.store.current().Txn(false), "routes")
		if len(after) != len(before) {
			t.Fatalf("a refused route changed the table: %d routes, had %d", len(after), len(before))
		}
	}

	refused(Route{Type: RouteHTTP, Service: "web", Domain: "example.com"}, `no service "web"`)
	// Services become known by an instance, or by a formation's job.
	if err := l.apply(command{Op: opReport, Key: "h1", Instances: []Instance{
		{ID: InstanceID("h1", "web-1", "web"), Service: "web", Host: "h1", Job: "web-1", Addr: "10.0.0.1:8080", Healthy: true},
	}}); err != nil {
		t.Fatal(err)
	}
	f := Formation{Name: "db", Count: 1}
	f.Job.Rootfs, f.Job.Cmd, f.Job.Network = "system", []string{"/bin/db"}, "host"
	f.Job.Services = []job.Service{{Name: "db", Port: 5432}, {Name: "sip", Port: 5060, Proto: "udp"}}
	if err := checkFormation(&f); err != nil {
		t.Fatal(err)
	}
	obj, _ := json.Marshal(f)
	if err := l.apply(command{Op: opPut, Kind: "formations", Object: obj}); err != nil {
		t.Fatal(err)
	}
	if err := l.apply(command{Op: opHosts, Hosts: []Host{{ID: "h1", Addr: "10.0.0.1:7000", API: "10.0.0.1:7001", Status: "alive"}}}); err != nil {
		t.Fatal(err)
	}

	web := must(Route{Type: RouteHTTP, Service: "web", Domain: "example.com"})
	if !strings.HasPrefix(web.ID, "http-") || web.Path != "/" {
		t.Fatalf("stored route: %+v", web)
	}
	must(Route{Type: RouteHTTP, Service: "web", Domain: "example.com", Path: "/api"})
	refused(Route{Type: RouteHTTP, Service: "web", Domain: "example.com", Path: "/api/"}, "is route http-")

	// TCP: ports from the range, lowest free first; the platform's and
	// the hosts' ports are refused.
	if err := l.apply(command{Op: opPut, Kind: "settings", Object: mustJSON(t, Setting{Key: TCPPortsSetting, Value: "7000-7002"})}); err != nil {
		t.Fatal(err)
	}
	a := must(Route{Type: RouteTCP, Service: "db"})
	if a.Port != 7002 {
		t.Fatalf("allocated port %d, want 7002 (7000 and 7001 are host h1's)", a.Port)
	}
	refused(Route{Type: RouteTCP, Service: "db"}, "every port of the range 7000-7002")
	refused(Route{Type: RouteTCP, Service: "db", Port: 7002}, "is route "+a.ID)
	refused(Route{Type: RouteTCP, Service: "db", Port: 443}, "platform's own")
	refused(Route{Type: RouteTCP, Service: "db", Port: 7001}, "platform's own")
	// git's port is the builder's route's alone, the builder's own port
	// no route's.
	refused(Route{Type: RouteTCP, Service: "db", Port: GitPort}, "platform's own")
	refused(Route{Type: RouteTCP, Service: "db", Port: BuilderPort}, "platform's own")
	if git := must(Route{ID: GitRouteID, Type: RouteTCP, Service: "db", Port: GitPort}); git.Port != GitPort {
		t.Fatalf("the builder's route: %+v", git)
	}
	// A write of the route that gives no port keeps its port.
	a.Leader = true
	a.Port = 0
	if got := must(a); got.Port != 7002 || !got.Leader {
		t.Fatalf("rewritten route: %+v", got)
	}

	// UDP ranges must not overlap.
	rtp := must(Route{Type: RouteUDP, Service: "sip", Port: 10000, PortEnd: 10099})
	refused(Route{Type: RouteUDP, Service: "sip", Port: 10099}, "overlap route "+rtp.ID)
	refused(Route{Type: RouteUDP, Service: "sip", Port: 9500, PortEnd: 10000}, "overlap")
	refused(Route{Type: RouteUDP, Service: "sip", Port: 53}, "platform's own")
	must(Route{Type: RouteUDP, Service: "sip", Port: 10100})
	// TCP and UDP ports are apart.
	must(Route{Type: RouteTCP, Service: "sip", Port: 10000})
}

func jsonNumber(n uint64) string { b, _ := json.Marshal(n); return string(b) }

func mustJSON(t *testing.T, v any) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestInstanceDrainOutlivesReports: a drained instance stays draining
// through its host's reports, gives up leading its service, and ends
// with the instance.
func TestInstanceDrainOutlivesReports(t *testing.T) {
	l := &fsmLog{t: t, f: newFSM()}
	a := Instance{ID: InstanceID("h1", "db-1", "db"), Service: "db", Host: "h1", Job: "db-1", Addr: "10.0.0.1:5432", Healthy: true}
	b := Instance{ID: InstanceID("h2", "db-2", "db"), Service: "db", Host: "h2", Job: "db-2", Addr: "10.0.0.2:5432", Healthy: true}
	report := func(host string, in ...Instance) {
		t.Helper()
		if err := l.apply(command{Op: opReport, Key: host, Instances: in}); err != nil {
			t.Fatal(err)
		}
	}
	state := func() (*Instance, string) {
		txn := l.f.store.current().Txn(false)
		raw, _ := txn.First("instances", "id", a.ID)
		svc, _ := txn.First("services", "id", "db")
		var i *Instance
		if raw != nil {
			i = raw.(*Instance)
		}
		return i, svc.(*Service).Leader
	}
	report("h1", a)
	report("h2", b)
	if _, leader := state(); leader != a.ID {
		t.Fatalf("leader %s, want the oldest, %s", leader, a.ID)
	}
	if err := l.apply(command{Op: opDrain, Key: a.ID, Draining: true}); err != nil {
		t.Fatal(err)
	}
	report("h1", a) // the reporter does not know of the drain
	i, leader := state()
	if !i.Draining || leader != b.ID {
		t.Fatalf("after drain and a report: draining %v, leader %s (want %s)", i.Draining, leader, b.ID)
	}
	if err := l.apply(command{Op: opDrain, Key: "h9/x/db"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("drain of an unknown instance: %v", err)
	}
	report("h1")
	report("h1", a) // the same ID again is a new instance, serving
	if i, _ := state(); i.Draining {
		t.Fatal("an instance that came back is still draining")
	}
}
