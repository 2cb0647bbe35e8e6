package boot

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/plinth-os/plinth/host/mountinfo"
	"github.com/plinth-os/plinth/init/kmod"
	"github.com/plinth-os/plinth/version"
)

// modulesTimeout bounds the wait for init's background module loading.
const modulesTimeout = 60 * time.Second

// SelftestMarker starts the console line that carries the self-check report.
const SelftestMarker = "plinth-selftest: "

// Selftest is the report `plinth selftest` prints: what a running machine
// looks like from the inside, for VM tests and for people.
type Selftest struct {
	Version      string           `json:"version"`
	Kernel       string           `json:"kernel"`
	Hostname     string           `json:"hostname"`
	PID1Exe      string           `json:"pid1_exe"`
	PID1IsImage  bool             `json:"pid1_is_image_plinth"` // same bytes as the system's layer-0 binary
	ServiceExe   string           `json:"service_exe"`          // this service's binary, as the kernel names it
	ConfigSource string           `json:"config_source"`
	Mounts       map[string]Mount `json:"mounts"`          // by mount point, for the ones checked
	Modules      []string         `json:"modules"`         // loaded, from /proc/modules
	Missing      []string         `json:"missing_modules"` // in the image's list, not a driver, but not loaded
	// Drivers are the drivers bound to the PCI and USB devices (and USB
	// interfaces), "" for none: "pci 0000:00:02.0 8086:10d3" → "e1000e".
	Drivers    map[string]string    `json:"drivers"`
	Interfaces []string             `json:"interfaces"`
	Addresses  map[string][]string  `json:"addresses"`      // by interface, global unicast only
	Ping       map[string]bool      `json:"ping,omitempty"` // plinth.selftest.ping targets → answered
	Bonds      map[string]BondState `json:"bonds,omitempty"`
	Uptime     float64              `json:"uptime_seconds"`
	Problems   []string             `json:"problems"`
	OK         bool                 `json:"ok"`
}

// Mount describes one mounted filesystem.
type Mount struct {
	FSType   string `json:"fstype"`
	Source   string `json:"source"`
	ReadOnly bool   `json:"ro"`
}

// WatchMarker starts each console line of a watch round (see paramWatch).
const WatchMarker = "plinth-selftest-watch: "

// BondState is a bond as the bonding driver reports it in sysfs.
type BondState struct {
	Mode string `json:"mode"`
	// Aggregator is the active 802.3ad aggregator's ID, and PartnerMAC the
	// LACP partner's system MAC (all zeros while no partner answers).
	Aggregator string                `json:"aggregator,omitempty"`
	PartnerMAC string                `json:"partner_mac,omitempty"`
	Members    map[string]BondMember `json:"members"`
}

// BondMember is one member of a bond.
type BondMember struct {
	MII        string `json:"mii"`                  // "up" or "down"
	Aggregator string `json:"aggregator,omitempty"` // 802.3ad: the aggregator it is in
}

// Watch is one round of the watch that follows the report.
type Watch struct {
	Uptime float64              `json:"uptime_seconds"`
	Ping   map[string]bool      `json:"ping"`
	Bonds  map[string]BondState `json:"bonds,omitempty"`
}

// RunSelftest checks the running system, prints the report on one line
// and, with plinth.selftest.watch, watches the ping targets and bonds for
// that many seconds. It exits 0 when every check of the report passed.
func RunSelftest() int {
	cl := readCmdline()
	r := selftest(cl)
	data, err := json.Marshal(r)
	if err != nil {
		fmt.Fprintln(os.Stderr, "selftest:", err)
		return 1
	}
	fmt.Println(SelftestMarker + string(data))
	if rounds, err := strconv.Atoi(cl[paramWatch]); err == nil && cl[paramPing] != "" {
		watch(strings.Split(cl[paramPing], ","), min(rounds, maxWatchRounds))
	}
	if !r.OK {
		return 1
	}
	return 0
}

// maxWatchRounds bounds the watch to an hour whatever the command line says.
const maxWatchRounds = 3600

// watch prints one Watch line a round: one echo to each target, answered
// within a second or not, and the bonds' state. A test changes links under
// it and reads whether traffic still flows.
func watch(targets []string, rounds int) {
	for range rounds {
		start := time.Now()
		w := Watch{Ping: map[string]bool{}, Bonds: readBonds()}
		for _, t := range targets {
			w.Ping[t], _ = ping(t, time.Second)
		}
		w.Uptime = uptime().Seconds()
		if data, err := json.Marshal(w); err == nil {
			fmt.Println(WatchMarker + string(data))
		}
		time.Sleep(time.Second - time.Since(start))
	}
}

// ParseWatch reads a console line carrying a Watch round.
func ParseWatch(line string) (Watch, bool) {
	var w Watch
	_, data, ok := strings.Cut(line, WatchMarker)
	if !ok || json.Unmarshal([]byte(strings.TrimSpace(data)), &w) != nil {
		return w, false
	}
	return w, true
}

// readBonds reads every bond's state from sysfs.
func readBonds() map[string]BondState {
	dirs, _ := filepath.Glob("/sys/class/net/*/bonding")
	if len(dirs) == 0 {
		return nil
	}
	read := func(path string) string {
		data, _ := os.ReadFile(path)
		return strings.TrimSpace(string(data))
	}
	bonds := map[string]BondState{}
	for _, dir := range dirs {
		b := BondState{Members: map[string]BondMember{}}
		b.Mode, _, _ = strings.Cut(read(dir+"/mode"), " ") // "802.3ad 4"
		if b.Mode == "802.3ad" {
			b.Aggregator = read(dir + "/ad_aggregator")
			b.PartnerMAC = read(dir + "/ad_partner_mac")
		}
		for _, m := range strings.Fields(read(dir + "/slaves")) {
			slave := "/sys/class/net/" + m + "/bonding_slave/"
			b.Members[m] = BondMember{MII: read(slave + "mii_status"), Aggregator: read(slave + "ad_aggregator_id")}
		}
		bonds[filepath.Base(filepath.Dir(dir))] = b
	}
	return bonds
}

func selftest(cl cmdline) Selftest {
	r := Selftest{Version: version.Version, Kernel: kernelRelease(), ConfigSource: os.Getenv("PLINTH_CONFIG_SOURCE"), Mounts: map[string]Mount{}}
	problem := func(format string, args ...any) { r.Problems = append(r.Problems, fmt.Sprintf(format, args...)) }

	r.Hostname, _ = os.Hostname()
	// PID 1 runs the initramfs's /init, which stage 1 makes the system's
	// layer-0 binary (see bindBinary): the services must run that same
	// file, or the system runs another binary than its init.
	r.PID1Exe, _ = os.Readlink("/proc/1/exe")
	if same, err := sameContent("/proc/1/exe", binaryPath); err != nil {
		problem("compare PID 1 with %s: %v", binaryPath, err)
	} else if r.PID1IsImage = same; !same {
		problem("PID 1 (%s) is not the binary %s", r.PID1Exe, binaryPath)
	}
	// The CLI and the platform's jobs run /usr/bin/plinth.
	if st, err := os.Stat(platformBinary); err != nil {
		problem("platform binary: %v", err)
	} else if !st.Mode().IsRegular() || st.Mode()&0o111 == 0 || st.Size() == 0 {
		problem("platform binary %s is not an executable file (%s, %d bytes)", platformBinary, st.Mode(), st.Size())
	}
	// Services (this one too) run the binary by the path of its directory
	// in the system, where libcontainer finds it to seal it per container.
	if r.ServiceExe, _ = os.Readlink("/proc/self/exe"); r.ServiceExe != binaryPath {
		problem("services run %q, want %s", r.ServiceExe, binaryPath)
	}

	mounts, err := mountinfo.Read(mountinfo.Self)
	if err != nil {
		problem("read mounts: %v", err)
	}
	for _, m := range mounts {
		// Later entries for the same target are on top; keep the last.
		r.Mounts[m.Target] = Mount{FSType: m.FSType, Source: m.Source, ReadOnly: m.ReadOnly()}
	}
	want := map[string]string{"/": "squashfs", "/run": "tmpfs", "/tmp": "tmpfs", "/var": "tmpfs", "/sys/fs/cgroup": "cgroup2"}
	for target, fstype := range want {
		// /var is the data partition on a machine that has one.
		if got := r.Mounts[target]; got.FSType != fstype && (target != "/var" || got.FSType != "ext4") {
			problem("%s is %q, want %s", target, got.FSType, fstype)
		}
	}
	if !r.Mounts["/"].ReadOnly {
		problem("/ is writable, want read-only")
	}
	// Unprivileged processes (a user-namespaced job's root among them)
	// walk and read the system image.
	if st, err := os.Stat("/"); err != nil {
		problem("stat /: %v", err)
	} else if st.Mode().Perm()&0o005 != 0o005 {
		problem("/ has mode %v: others cannot walk and read the system", st.Mode().Perm())
	}
	for t := range r.Mounts {
		if _, ok := want[t]; !ok {
			delete(r.Mounts, t)
		}
	}

	listed, err := kmod.ReadList(filepath.Join("/lib/modules", r.Kernel))
	if err != nil {
		problem("read module list: %v", err)
	}
	// Init loads most modules in the background after ready; give it time.
	for deadline := time.Now().Add(modulesTimeout); ; time.Sleep(100 * time.Millisecond) {
		r.Modules, r.Missing = loadedModules(), nil
		loaded := map[string]bool{}
		for _, m := range r.Modules {
			loaded[m] = true
		}
		for _, m := range listed {
			// Drivers load only for the devices that need them.
			if !loaded[m.Name] && !m.OnDemand {
				r.Missing = append(r.Missing, m.Name)
			}
		}
		if len(r.Missing) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(r.Missing) > 0 {
		problem("modules not loaded: %s", strings.Join(r.Missing, ", "))
	}
	r.Drivers = boundDrivers("/sys")

	if entries, err := os.ReadDir("/sys/class/net"); err == nil {
		for _, e := range entries {
			r.Interfaces = append(r.Interfaces, e.Name())
		}
	}
	r.Addresses = interfaceAddresses()
	if targets := cl[paramPing]; targets != "" {
		r.Ping = map[string]bool{}
		for _, t := range strings.Split(targets, ",") {
			ok, err := ping(t, pingTimeout)
			r.Ping[t] = ok
			if !ok {
				problem("ping %s: %v", t, err)
			}
		}
	}
	r.Bonds = readBonds()
	r.Uptime = uptime().Seconds()
	r.OK = len(r.Problems) == 0
	return r
}

// pingTimeout bounds the wait for each ping target: the peers of a test
// boot at about the same time, so the first echoes may go unanswered.
const pingTimeout = 60 * time.Second

// ping sends ICMP (or ICMPv6) echo requests to target, one a second,
// until one is answered or timeout passes.
func ping(target string, timeout time.Duration) (bool, error) {
	dst, err := netip.ParseAddr(target)
	if err != nil {
		return false, fmt.Errorf("%q is not an IP address", target)
	}
	network, listen, proto := "ip4:icmp", "0.0.0.0", 1
	var echo, reply icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
	if dst.Is6() {
		network, listen, proto = "ip6:ipv6-icmp", "::", 58
		echo, reply = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply
	}
	c, err := icmp.ListenPacket(network, listen)
	if err != nil {
		return false, fmt.Errorf("open ICMP socket: %w", err)
	}
	defer c.Close()
	buf := make([]byte, 1500)
	for seq, deadline := 1, time.Now().Add(timeout); time.Now().Before(deadline); seq++ {
		msg := icmp.Message{Type: echo, Body: &icmp.Echo{ID: os.Getpid() & 0xffff, Seq: seq, Data: []byte("plinth")}}
		wb, _ := msg.Marshal(nil) // the kernel fills in the ICMPv6 checksum
		if _, err = c.WriteTo(wb, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
			time.Sleep(time.Second)
			continue
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		for {
			n, from, rerr := c.ReadFrom(buf)
			if rerr != nil {
				err = fmt.Errorf("no reply: %w", rerr)
				break
			}
			m, perr := icmp.ParseMessage(proto, buf[:n])
			if perr != nil || m.Type != reply || from.String() != dst.String() {
				continue
			}
			if e, ok := m.Body.(*icmp.Echo); ok && e.ID == os.Getpid()&0xffff {
				return true, nil
			}
		}
	}
	return false, err
}

// interfaceAddresses lists each interface's global unicast addresses.
func interfaceAddresses() map[string][]string {
	out := map[string][]string{}
	ifs, err := net.Interfaces()
	if err != nil {
		return out
	}
	for _, itf := range ifs {
		addrs, _ := itf.Addrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.IsGlobalUnicast() {
				out[itf.Name] = append(out[itf.Name], n.String())
			}
		}
	}
	return out
}

// sameContent reports whether files a and b have the same bytes.
func sameContent(a, b string) (bool, error) {
	sum := func(path string) ([]byte, error) {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		return h.Sum(nil), nil
	}
	sa, err := sum(a)
	if err != nil {
		return false, err
	}
	sb, err := sum(b)
	if err != nil {
		return false, err
	}
	return bytes.Equal(sa, sb), nil
}

func loadedModules() []string {
	f, err := os.Open("/proc/modules")
	if err != nil {
		return nil
	}
	defer f.Close()
	var mods []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if name, _, ok := strings.Cut(sc.Text(), " "); ok {
			mods = append(mods, name)
		}
	}
	sort.Strings(mods)
	return mods
}

// ParseSelftest extracts the report from console output.
func ParseSelftest(console string) (Selftest, error) {
	var r Selftest
	i := strings.LastIndex(console, SelftestMarker)
	if i < 0 {
		return r, fmt.Errorf("no %q line in console output", strings.TrimSpace(SelftestMarker))
	}
	line, _, _ := strings.Cut(console[i+len(SelftestMarker):], "\n")
	if err := json.Unmarshal([]byte(strings.TrimSpace(line)), &r); err != nil {
		return r, fmt.Errorf("parse self-test report: %w", err)
	}
	return r, nil
}

// boundDrivers maps the PCI and USB devices under sys to the drivers
// bound to them.
func boundDrivers(sys string) map[string]string {
	out := map[string]string{}
	for _, bus := range []string{"pci", "usb"} {
		devs, _ := filepath.Glob(filepath.Join(sys, "bus", bus, "devices", "*"))
		for _, d := range devs {
			read := func(f string) string {
				b, _ := os.ReadFile(filepath.Join(d, f))
				return strings.TrimPrefix(strings.TrimSpace(string(b)), "0x")
			}
			key := bus + " " + filepath.Base(d)
			switch {
			case read("vendor") != "":
				key += " " + read("vendor") + ":" + read("device")
			case read("idVendor") != "":
				key += " " + read("idVendor") + ":" + read("idProduct")
			}
			driver := ""
			if l, err := os.Readlink(filepath.Join(d, "driver")); err == nil {
				driver = filepath.Base(l)
			}
			out[key] = driver
		}
	}
	return out
}
