package job

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestServicesChecked(t *testing.T) {
	base := func(services ...Service) Spec {
		return Spec{ID: "svc", Rootfs: "/", Cmd: []string{"true"}, Network: NetworkHost, Services: services}
	}
	http := func(c Check) Service { c.Type = CheckHTTP; return Service{Name: "web", Port: 80, Check: &c} }
	ok := []Spec{
		base(),
		base(Service{Name: "web", Port: 80}, Service{Name: "dns", Port: 53, Proto: "udp"}),
		base(Service{Name: "a-1", Port: 65535, Check: &Check{Type: CheckTCP}}),
		base(http(Check{Path: "/healthz", Status: 204, Interval: Duration{time.Second}})),
		base(Service{Name: "dns", Port: 53, Proto: "udp", Check: &Check{Type: CheckCommand, Command: []string{"dig"}}}),
	}
	for _, s := range ok {
		if err := s.Check(); err != nil {
			t.Errorf("%+v: %v", s.Services, err)
		}
	}
	noNetwork := base(Service{Name: "web", Port: 80})
	noNetwork.Network = ""
	for want, s := range map[string]Spec{
		"set network to":                    noNetwork,
		`service name "Web"`:                base(Service{Name: "Web", Port: 80}),
		`service name "-web"`:               base(Service{Name: "-web", Port: 80}),
		`service name ""`:                   base(Service{Port: 80}),
		"service web is declared twice":     base(Service{Name: "web", Port: 80}, Service{Name: "web", Port: 81}),
		"port 0: use 1 to 65535":            base(Service{Name: "web"}),
		"port 65536":                        base(Service{Name: "web", Port: 65536}),
		`proto "sctp": use tcp or udp`:      base(Service{Name: "web", Port: 80, Proto: "sctp"}),
		`type "ping"`:                       base(Service{Name: "web", Port: 80, Check: &Check{Type: "ping"}}),
		"http checks need a tcp service":    base(Service{Name: "web", Port: 80, Proto: "udp", Check: &Check{Type: CheckHTTP}}),
		"command is empty":                  base(Service{Name: "web", Port: 80, Check: &Check{Type: CheckCommand}}),
		"path and status are for http":      base(Service{Name: "web", Port: 80, Check: &Check{Type: CheckTCP, Path: "/"}}),
		"command is for command checks":     base(Service{Name: "web", Port: 80, Check: &Check{Type: CheckTCP, Command: []string{"x"}}}),
		"start it with '/'":                 base(http(Check{Path: "healthz"})),
		"status 42":                         base(http(Check{Status: 42})),
		"cannot be negative":                base(http(Check{Interval: Duration{-time.Second}})),
		"timeout 10s is longer than the in": base(http(Check{Timeout: Duration{10 * time.Second}})),
	} {
		err := s.Check()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%+v: err = %v, want it to say %q", s.Services, err, want)
		}
	}
}

func TestServiceDefaults(t *testing.T) {
	got := Service{Name: "web", Port: 80, Check: &Check{Type: CheckHTTP}}.WithDefaults()
	want := Service{Name: "web", Port: 80, Proto: "tcp", Check: &Check{Type: CheckHTTP, Path: "/", Status: 200,
		Interval: Duration{DefaultCheckInterval}, Timeout: Duration{DefaultCheckTimeout}}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("defaults: %+v %+v, want %+v %+v", got, *got.Check, want, *want.Check)
	}
	// A short interval shortens the default timeout with it; a command
	// check gets no HTTP defaults.
	c := Check{Type: CheckCommand, Command: []string{"true"}, Interval: Duration{time.Second}}.WithDefaults()
	if c.Timeout.Duration != time.Second || c.Path != "" || c.Status != 0 {
		t.Errorf("command check with a 1s interval: %+v, want a 1s timeout and no path or status", c)
	}
}

// A job's services are kept as given, across a restart of hostd.
func TestServicesKept(t *testing.T) {
	root := busyboxRoot(t)
	cfg := testConfig(t)
	first, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := spec(root, "sleep", "60")
	s.Network = NetworkHost
	s.Services = []Service{
		{Name: "web", Port: 8080, Check: &Check{Type: CheckHTTP, Path: "/healthz", Interval: Duration{10 * time.Second}}},
		{Name: "dns", Port: 53, Proto: "udp", Check: &Check{Type: CheckCommand, Command: []string{"true"}}},
	}
	created, err := first.Create(s)
	if err != nil {
		first.Close()
		t.Fatal(err)
	}
	if !reflect.DeepEqual(created.Spec.Services, s.Services) {
		t.Errorf("created with services %+v, want %+v", created.Spec.Services, s.Services)
	}
	first.Close()
	m := newManager(t, cfg)
	j, err := m.Get(s.ID)
	if err != nil {
		t.Fatal(err)
	}
	if j.Status.State != StateRunning || !reflect.DeepEqual(j.Spec.Services, s.Services) {
		t.Errorf("after a restart: %s with services %+v, want running with %+v", j.Status.State, j.Spec.Services, s.Services)
	}
}
