package config_test

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/plinth-os/plinth/init/config"
	"github.com/plinth-os/plinth/netd"
)

// TestGood loads every file in testdata/good and compares it with what it
// should decode to.
func TestGood(t *testing.T) {
	withDefaults := func(edit func(m *config.Machine)) config.Machine {
		m := config.Default()
		edit(&m)
		return m
	}
	want := map[string]config.Machine{
		"empty.toml":          config.Default(),
		"comments-only.toml":  config.Default(),
		"empty-hostname.toml": config.Default(),
		"full.toml": withDefaults(func(m *config.Machine) {
			m.Hostname = "web1.example.com"
			m.Network.Hostname = m.Hostname
			m.Boot = config.Boot{
				Panic:           config.PanicHold,
				PanicCountdown:  config.Duration{90 * time.Second},
				ShutdownTimeout: config.Duration{30 * time.Second},
				Watchdog:        config.Duration{},
				CommitTimeout:   config.Duration{20 * time.Minute},
			}
		}),
		"partial.toml": withDefaults(func(m *config.Machine) {
			m.Boot.Panic = config.PanicHold
		}),
		"dotted-keys.toml": withDefaults(func(m *config.Machine) {
			m.Boot.Panic = config.PanicHold
			m.Boot.ShutdownTimeout.Duration = 2 * time.Minute
		}),
		"inline-table.toml": withDefaults(func(m *config.Machine) {
			m.Hostname = "db-2"
			m.Network.Hostname = m.Hostname
			m.Boot.PanicCountdown.Duration = 0
			m.Boot.ShutdownTimeout.Duration = 5 * time.Minute
		}),
		"lowest.toml": withDefaults(func(m *config.Machine) {
			m.Hostname = "rack42-row7-datacenter-east-example-company-with-long-name.io123"
			m.Network.Hostname = m.Hostname
			m.Boot.PanicCountdown.Duration = 0
			m.Boot.ShutdownTimeout.Duration = time.Second
		}),
		"highest.toml": withDefaults(func(m *config.Machine) {
			m.Hostname = "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijk"
			m.Network.Hostname = m.Hostname
			m.Boot.PanicCountdown.Duration = 10 * time.Minute
			m.Boot.ShutdownTimeout.Duration = 5 * time.Minute
		}),
		"network-full.toml": withDefaults(func(m *config.Machine) {
			m.Hostname = "web1.example.com"
			m.Network = netd.Config{
				Interfaces: []netd.Interface{
					{Name: "eth0", MAC: mac("52:54:00:12:34:56"), Addressing: netd.Addressing{
						Addresses: prefixes("192.0.2.10/24", "2001:db8::10/64"),
						Gateway:   netip.MustParseAddr("192.0.2.1"),
						Routes: []netd.Route{
							{To: netip.MustParsePrefix("10.0.0.0/8"), Via: netip.MustParseAddr("192.0.2.254"), Metric: 100},
							{To: netip.MustParsePrefix("198.51.100.0/24")},
						},
						MTU:      9000,
						Required: true,
					}},
					{MAC: mac("52:54:00:ab:cd:ef"), Addressing: netd.Addressing{DHCP: true}},
					{Name: "eth2"},
					{Name: "eth3"},
					{Name: "eth4"},
				},
				VLANs: []netd.VLAN{{Name: "bond0.10", Link: "bond0", ID: 10, Addressing: netd.Addressing{
					Addresses: prefixes("198.18.10.2/24"),
					Routes:    []netd.Route{{To: netip.MustParsePrefix("198.18.0.0/16"), Via: netip.MustParseAddr("198.18.10.1"), Metric: 50}},
				}}},
				Bonds: []netd.Bond{{
					Name: "bond0", Mode: netd.BondActiveBackup, Members: []string{"eth2", "eth3"}, Primary: "eth3",
					Addressing: netd.Addressing{DHCP: true, MTU: 1500},
				}},
				Bridges: []netd.Bridge{{Name: "br0", Members: []string{"eth4"}, Addressing: netd.Addressing{
					Addresses: prefixes("172.30.0.1/24"), MTU: 1500, Required: true,
				}}},
				DNS:          addrs("192.0.2.53", "2001:db8::53"),
				Search:       []string{"example.org", "corp.example.org"},
				Hostname:     "web1.example.com",
				StateDir:     netd.DefaultConfig().StateDir,
				RunDir:       netd.DefaultConfig().RunDir,
				ReadyTimeout: 30 * time.Second,
			}
		}),
		"network-bond-vlan.toml": withDefaults(func(m *config.Machine) {
			m.Hostname = "db-2"
			n := &m.Network
			n.Hostname = "db-2"
			n.DNS = addrs("10.0.0.53")
			n.Interfaces = []netd.Interface{{Name: "eno1"}, {Name: "eno2"}}
			n.Bonds = []netd.Bond{{Name: "bond0", Mode: netd.BondActiveBackup, Members: []string{"eno1", "eno2"}, Primary: "eno1"}}
			n.VLANs = []netd.VLAN{
				{Name: "mgmt", Link: "bond0", ID: 100, Addressing: netd.Addressing{DHCP: true}},
				{Name: "storage", Link: "bond0", ID: 200, Addressing: netd.Addressing{
					Addresses: prefixes("10.20.0.12/16"),
					Gateway:   netip.MustParseAddr("10.20.0.1"),
					MTU:       9000,
					Required:  true,
				}},
			}
		}),
		"network-bond-lacp.toml": withDefaults(func(m *config.Machine) {
			m.Hostname = "web-7"
			n := &m.Network
			n.Hostname = "web-7"
			n.Interfaces = []netd.Interface{{Name: "ens1f0"}, {Name: "ens1f1"}}
			n.Bonds = []netd.Bond{{Name: "bond0", Mode: netd.Bond8023AD, Members: []string{"ens1f0", "ens1f1"},
				Miimon: 50, LACPRate: "fast", XmitHashPolicy: "layer3+4",
				Addressing: netd.Addressing{DHCP: true, Required: true}}}
		}),
		"network-ipv6.toml": withDefaults(func(m *config.Machine) {
			m.Network.Interfaces = []netd.Interface{
				{Name: "eth0", Addressing: netd.Addressing{Addresses: prefixes("2001:db8:1::10/64"), DHCP6: true, Required: true}},
				{Name: "eth1", Addressing: netd.Addressing{DHCP: true, DHCP6: true}},
			}
		}),
		"network-dns-only.toml": withDefaults(func(m *config.Machine) {
			m.Network.DNS = addrs("192.0.2.53", "192.0.2.54")
			m.Network.Search = []string{"example.org"}
		}),
		"cluster-full.toml": withDefaults(func(m *config.Machine) {
			m.Hostname = "node-2"
			m.Network.Hostname = m.Hostname
			m.Cluster = config.Cluster{
				Bundle:     "/perm/cluster/bundle",
				Join:       []string{"10.0.0.1", "node1.example.org:7946", "[2001:db8::1]:8946", "2001:db8::2"},
				Advertise:  "10.0.0.0/24",
				GossipPort: 8946,
				APIPort:    8947,
				Roles:      []string{"controller", "router", "gpu-2"},
				Labels:     []string{"zone=eu-1", "disk=ssd", "rack.row=r7/42"},
			}
		}),
		"cluster-fw-cfg.toml": withDefaults(func(m *config.Machine) {
			m.Cluster.Bundle = config.BundleFWCfg
			m.Cluster.Join = []string{"node1"}
			m.Cluster.Advertise = "lan0"
		}),
		"cluster-token.toml": withDefaults(func(m *config.Machine) {
			m.Cluster.Token = "plinth1.0000000000000000000000000000000000000000000000000000000000000000.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
			m.Cluster.Join = []string{"10.0.0.1", "10.0.0.2"}
		}),
		"cluster-alone.toml": withDefaults(func(m *config.Machine) {
			m.Cluster.Bundle = "/perm/cluster/bundle"
			m.Cluster.Advertise = "fe80::1%lan0"
		}),
		"network-inline.toml": withDefaults(func(m *config.Machine) {
			n := &m.Network
			n.ReadyTimeout = 0
			n.Interfaces = []netd.Interface{{Name: "eth0", Addressing: netd.Addressing{DHCP: true}}, {Name: "eth1"}}
			n.Bridges = []netd.Bridge{{Name: "br0", Members: []string{"eth1"}, Addressing: netd.Addressing{
				Addresses: prefixes("192.0.2.10/24"),
				Routes:    []netd.Route{{To: netip.MustParsePrefix("10.0.0.0/8"), Via: netip.MustParseAddr("192.0.2.1")}},
			}}}
		}),
	}
	paths, err := filepath.Glob("testdata/good/*.toml")
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) != len(want) {
		t.Errorf("testdata/good has %d files, the test expects %d: keep them in sync", len(paths), len(want))
	}
	for _, path := range paths {
		t.Run(filepath.Base(path), func(t *testing.T) {
			w, ok := want[filepath.Base(path)]
			if !ok {
				t.Fatalf("no expected config for %s", path)
			}
			got, err := config.Load(path)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, w) {
				t.Errorf("got  %+v\nwant %+v", got, w)
			}
		})
	}
}

// TestBad parses every file in testdata/bad. Each starts with one
// "# want: <line of the error>" comment per expected problem, in order; the
// error must consist of exactly those lines.
func TestBad(t *testing.T) {
	paths, err := filepath.Glob("testdata/bad/*.toml")
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) == 0 {
		t.Fatal("no files in testdata/bad")
	}
	for _, path := range paths {
		name := filepath.Base(path)
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			want := wantLines(data)
			if len(want) == 0 {
				t.Fatalf("%s has no # want: lines", path)
			}
			m, err := config.Parse(name, data)
			if err == nil {
				t.Fatalf("parsed without error into %+v", m)
			}
			if !reflect.DeepEqual(m, config.Machine{}) {
				t.Errorf("returned %+v along with the error, want the zero Machine", m)
			}
			var cerr *config.Error
			if !errors.As(err, &cerr) {
				t.Fatalf("error %T is not a *config.Error: %v", err, err)
			}
			got := strings.Split(err.Error(), "\n")
			if len(cerr.Problems) != len(got) {
				t.Errorf("%d problems but %d error lines", len(cerr.Problems), len(got))
			}
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}

func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func wantLines(data []byte) []string {
	var want []string
	for line := range strings.Lines(string(data)) {
		if w, ok := strings.CutPrefix(strings.TrimSpace(line), "# want: "); ok {
			want = append(want, w)
		}
	}
	return want
}

func TestProblemFields(t *testing.T) {
	_, err := config.Parse("machine.toml", []byte("[boot]\npanic = 3\n"))
	var cerr *config.Error
	if !errors.As(err, &cerr) {
		t.Fatalf("got %v, want a *config.Error", err)
	}
	want := []config.Problem{{File: "machine.toml", Line: 2, Key: "boot.panic", Msg: "expected a string, got integer"}}
	if len(cerr.Problems) != 1 || cerr.Problems[0] != want[0] {
		t.Errorf("got %+v, want %+v", cerr.Problems, want)
	}
}

// TestExample checks that the example in manifests parses, both as shipped
// and with its [network] example uncommented.
func TestExample(t *testing.T) {
	const path = "../../manifests/machine.example.toml"
	if _, err := config.Load(path); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	before, network, ok := strings.Cut(string(data), "# [network]\n")
	if !ok {
		t.Fatalf("%s has no commented [network] example", path)
	}
	var b strings.Builder
	b.WriteString(before + "[network]\n")
	for line := range strings.Lines(network) {
		b.WriteString(strings.TrimPrefix(strings.TrimPrefix(line, "#"), " "))
	}
	m, err := config.Parse("uncommented example", []byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	n := m.Network
	if len(n.Interfaces) != 4 || len(n.Bonds) != 1 || len(n.VLANs) != 1 || len(n.Bridges) != 1 || len(n.DNS) != 1 {
		t.Errorf("uncommented example parses to %+v; want 4 interfaces, a bond, a VLAN, a bridge and a DNS server", n)
	}
}

// TestManyEntries checks that a problem is found on its own entry's line
// among many, and that arrays of tables are bounded.
func TestManyEntries(t *testing.T) {
	var b strings.Builder
	for i := range 256 {
		fmt.Fprintf(&b, "[[network.interface]]\nname = \"eth%d\"\n", i)
	}
	data := strings.Replace(b.String(), `"eth7"`, `"eth7/"`, 1)
	_, err := config.Parse("many.toml", []byte(data))
	want := `many.toml:16: network.interface[7].name: "eth7/" contains '/', ':' or whitespace, which link names cannot`
	if err == nil || err.Error() != want {
		t.Errorf("got %v\nwant %s", err, want)
	}

	data = b.String() + "[[network.interface]]\nname = \"eth256\"\n"
	_, err = config.Parse("too-many.toml", []byte(data))
	want = "too-many.toml:513: network.interface: 257 entries; at most 256 are supported"
	if err == nil || err.Error() != want {
		t.Errorf("got %v\nwant %s", err, want)
	}
}

// TestClusterDefaults checks the ports hostd uses when [cluster] leaves
// them out, and that without a bundle the machine joins nothing.
func TestClusterDefaults(t *testing.T) {
	want := config.Cluster{GossipPort: 7946, APIPort: 7947}
	if got := config.Default().Cluster; !reflect.DeepEqual(got, want) {
		t.Errorf("Default().Cluster = %+v, want %+v", got, want)
	}
	m, err := config.Parse("ports.toml", []byte("[cluster]\nadvertise = \"lan0\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if want.Advertise = "lan0"; !reflect.DeepEqual(m.Cluster, want) {
		t.Errorf("got %+v, want %+v", m.Cluster, want)
	}
}

// TestClusterLimits checks that the longest lists and names [cluster]
// allows parse, and that one more is refused.
func TestClusterLimits(t *testing.T) {
	file := func(seeds, roles int, role string) []byte {
		var join, names []string
		for i := range seeds {
			join = append(join, fmt.Sprintf("%q", fmt.Sprintf("10.0.%d.%d:7946", i/250, i%250+1)))
		}
		for i := range roles - 1 {
			names = append(names, fmt.Sprintf(`"role%d"`, i))
		}
		names = append(names, fmt.Sprintf("%q", role))
		return fmt.Appendf(nil, "[cluster]\nbundle = \"fw_cfg\"\njoin = [%s]\nroles = [%s]\ngossip_port = 1\napi_port = 65535\n",
			strings.Join(join, ", "), strings.Join(names, ", "))
	}
	longest := strings.Repeat("a", 32)
	m, err := config.Parse("limits.toml", file(64, 16, longest))
	if err != nil {
		t.Fatal(err)
	}
	if c := m.Cluster; len(c.Join) != 64 || len(c.Roles) != 16 || c.Roles[15] != longest || c.GossipPort != 1 || c.APIPort != 65535 {
		t.Errorf("parsed to %+v", c)
	}
	for _, data := range [][]byte{file(65, 16, longest), file(64, 17, longest), file(64, 16, longest+"a")} {
		if _, err := config.Parse("over.toml", data); err == nil {
			t.Errorf("accepted %s", data)
		}
	}
}

func TestLoadMissing(t *testing.T) {
	_, err := config.Load(filepath.Join(t.TempDir(), "plinth.toml"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("got %v, want an error wrapping fs.ErrNotExist", err)
	}
}

// TestEncodeRoundTrip checks that MarshalTOML, which the toml encoder
// uses, writes every key in the schema Parse enforces.
func TestEncodeRoundTrip(t *testing.T) {
	m := config.Default()
	m.Hostname = "web1"
	m.Boot = config.Boot{
		Panic:           config.PanicHold,
		PanicCountdown:  config.Duration{time.Minute},
		ShutdownTimeout: config.Duration{20 * time.Second},
		Watchdog:        config.Duration{30 * time.Second},
		CommitTimeout:   config.Duration{time.Hour},
	}
	n := &m.Network
	n.Hostname = "web1"
	n.DNS = addrs("192.0.2.53", "fe80::53%eth0")
	n.Search = []string{"example.org"}
	n.ReadyTimeout = 90 * time.Second
	n.Interfaces = []netd.Interface{
		{Name: "eth0", MAC: mac("52:54:00:12:34:56"), Addressing: netd.Addressing{
			Addresses: prefixes("192.0.2.10/24", "2001:db8::10/64"),
			Gateway:   netip.MustParseAddr("192.0.2.1"),
			Routes: []netd.Route{
				{To: netip.MustParsePrefix("10.0.0.0/8"), Via: netip.MustParseAddr("192.0.2.254"), Metric: 100},
				{To: netip.MustParsePrefix("2001:db8:1::/48")},
			},
			MTU:      9000,
			Required: true,
		}},
		{Name: "eth1"},
		{Name: "eth2"},
	}
	n.Bonds = []netd.Bond{{Name: "bond0", Mode: netd.BondActiveBackup, Members: []string{"eth1"}, Primary: "eth1", Addressing: netd.Addressing{DHCP: true}}}
	n.VLANs = []netd.VLAN{{Name: "vlan7", Link: "bond0", ID: 7, Addressing: netd.Addressing{DHCP: true}}}
	n.Bridges = []netd.Bridge{{Name: "br0", Members: []string{"eth2"}}}
	m.Cluster = config.Cluster{
		Bundle:     config.BundleFWCfg,
		Join:       []string{"10.0.0.1", "[2001:db8::1]:8946", "node1.example.org"},
		Advertise:  "lan0",
		GossipPort: 8946,
		APIPort:    8947,
		Roles:      []string{"controller", "router"},
	}

	got, err := config.Parse("encoded", encode(t, m))
	if err != nil {
		t.Fatalf("%v\nencoded:\n%s", err, encode(t, m))
	}
	if !reflect.DeepEqual(got, m) {
		t.Errorf("got  %+v\nwant %+v", got, m)
	}
}

func encode(t testing.TB, m config.Machine) []byte {
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(m); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestDurationText(t *testing.T) {
	var d config.Duration
	if err := d.UnmarshalText([]byte("1m30s")); err != nil {
		t.Fatal(err)
	}
	if d.Duration != 90*time.Second {
		t.Errorf("UnmarshalText(1m30s) = %v", d.Duration)
	}
	text, err := d.MarshalText()
	if err != nil || string(text) != "1m30s" {
		t.Errorf("MarshalText = %q, %v; want 1m30s", text, err)
	}
	if err := d.UnmarshalText([]byte("soon")); err == nil {
		t.Error("UnmarshalText(soon) succeeded")
	}
}

// FuzzParse checks that Parse never panics, that every problem it reports
// points into the file, and that whatever it accepts survives encoding.
func FuzzParse(f *testing.F) {
	seeds, err := filepath.Glob("testdata/*/*.toml")
	if err != nil {
		f.Fatal(err)
	}
	for _, path := range seeds {
		data, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := config.Parse("fuzz.toml", data)
		if err == nil {
			again, err := config.Parse("encoded", encode(t, m))
			if err != nil || !reflect.DeepEqual(again, m) {
				t.Fatalf("accepted %+v, but its encoding parses to %+v, %v", m, again, err)
			}
			return
		}
		var cerr *config.Error
		if !errors.As(err, &cerr) {
			t.Fatalf("error %T is not a *config.Error: %v", err, err)
		}
		if len(cerr.Problems) == 0 {
			t.Fatal("*config.Error with no problems")
		}
		lines := bytes.Count(data, []byte("\n")) + 1
		for _, p := range cerr.Problems {
			wholeFile := p.Line == 0 && p.Key == ""
			if !wholeFile && (p.Line < 1 || p.Line > lines) {
				t.Errorf("problem %q: line %d is outside the file's %d lines", p, p.Line, lines)
			}
			if p.File != "fuzz.toml" {
				t.Errorf("problem %q names file %q", p, p.File)
			}
		}
	})
}

// TestBootstrapExpect checks [cluster] bootstrap_expect and its bounds.
func TestBootstrapExpect(t *testing.T) {
	m, err := config.Parse("b.toml", []byte("[cluster]\nbootstrap_expect = 3\n"))
	if err != nil || m.Cluster.BootstrapExpect != 3 {
		t.Fatalf("bootstrap_expect = 3: %v, got %d", err, m.Cluster.BootstrapExpect)
	}
	if m, err := config.Parse("b.toml", []byte("[cluster]\nbootstrap_expect = 0\n")); err != nil || m.Cluster.BootstrapExpect != 0 {
		t.Fatalf("bootstrap_expect = 0 (off): %v, got %d", err, m.Cluster.BootstrapExpect)
	}
	for _, v := range []string{"-1", "1001", "\"3\""} {
		_, err := config.Parse("b.toml", []byte("[cluster]\nbootstrap_expect = "+v+"\n"))
		if err == nil || !strings.Contains(err.Error(), "b.toml:2") || !strings.Contains(err.Error(), "bootstrap_expect") {
			t.Errorf("bootstrap_expect = %s: %v, want an error at b.toml:2 naming the key", v, err)
		}
	}
}
