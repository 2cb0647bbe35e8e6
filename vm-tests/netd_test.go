//go:build vmtest

package vmtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	boot "github.com/plinth-os/plinth/init"
)

// selftestAfterNetwork boots vms (each with plinth.selftest=1 in its
// cmdline) and returns each one's self-check report, after asserting that
// init logged "network ready".
func selftestReports(t *testing.T, ctx context.Context, vms []*VM) []boot.Selftest {
	t.Helper()
	reports := make([]boot.Selftest, len(vms))
	for i, vm := range vms {
		if _, err := vm.WaitFor(ctx, "init: network ready in "); err != nil {
			t.Fatalf("%s: %v", vm.Name(), err)
		}
		if _, err := vm.WaitFor(ctx, boot.SelftestMarker); err != nil {
			t.Fatalf("%s: %v", vm.Name(), err)
		}
		r, err := boot.ParseSelftest(vm.Console())
		if err != nil {
			t.Fatalf("%s: %v", vm.Name(), err)
		}
		reports[i] = r
	}
	return reports
}

// TestNetdUserNetDHCP: with no [network] config, netd runs DHCP on the NIC
// with carrier and gets QEMU's built-in DHCP server's address.
func TestNetdUserNetDHCP(t *testing.T) {
	kernel, initrd := plinthImage(t)
	vm := StartT(t, Config{Name: "dhcp", Kernel: kernel, Initrd: initrd, Cmdline: "plinth.selftest=1",
		NICs: []NIC{{User: &UserNet{}}}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r := selftestReports(t, ctx, []*VM{vm})[0]
	if !slices.Contains(r.Addresses["eth0"], "10.0.2.15/24") {
		t.Errorf("eth0 addresses %v, want 10.0.2.15/24 from QEMU's DHCP server (report %+v)", r.Addresses, r)
	}
}

// TestNetdStaticSegment: three VMs on one L2 segment with static addresses
// from their machine configs ping each other.
func TestNetdStaticSegment(t *testing.T) {
	kernel, initrd := plinthImage(t)
	seg := NewSegment(t)
	addr := func(i int) string { return fmt.Sprintf("10.50.0.%d", i+1) }
	var cfgs []Config
	for i := range 3 {
		var others []string
		for j := range 3 {
			if j != i {
				others = append(others, addr(j))
			}
		}
		cfgs = append(cfgs, Config{
			Name: fmt.Sprintf("static%d", i+1), Kernel: kernel, Initrd: initrd,
			Cmdline: "plinth.selftest=1 plinth.selftest.ping=" + strings.Join(others, ","),
			NICs:    []NIC{{MAC: fmt.Sprintf("52:54:00:50:00:%02d", i+1), Segment: seg}},
			MachineConfig: []byte(fmt.Sprintf(`hostname = "static%d"
[[network.interface]]
mac = "52:54:00:50:00:%02d"
name = "lan0"
addresses = ["%s/24"]
required = true
`, i+1, i+1, addr(i))),
		})
	}
	vms := StartN(t, cfgs...)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	for i, r := range selftestReports(t, ctx, vms) {
		if !slices.Contains(r.Addresses["lan0"], addr(i)+"/24") {
			t.Errorf("%s: lan0 addresses %v, want %s/24", vms[i].Name(), r.Addresses, addr(i))
		}
		for target, ok := range r.Ping {
			if !ok {
				t.Errorf("%s: no answer from %s", vms[i].Name(), target)
			}
		}
		if len(r.Ping) != 2 {
			t.Errorf("%s: pinged %v, want the 2 other VMs", vms[i].Name(), r.Ping)
		}
	}
}

// TestNetdIPv6Segment: three VMs on an IPv6-only segment (no IPv4
// address anywhere), each addressed its own way: a static address from
// its machine config, SLAAC from router advertisements, and DHCPv6. The
// router is dnsmasq on the test's port to the segment, advertising the
// prefix (autonomous, managed) and a DNS server, and serving DHCPv6.
// Every VM pings the others' addresses of those kinds and the router.
func TestNetdIPv6Segment(t *testing.T) {
	kernel, initrd := plinthImage(t)
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		t.Skip("dnsmasq not installed (scripts/deps.sh installs it)")
	}
	seg := NewSegment(t)
	const port, router = "v6port", "2001:db8:60::fe"
	seg.HostPort(t, port)
	if err := ip("-n", seg.Netns, "addr", "add", router+"/64", "dev", port, "nodad"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	mac := func(i int) string { return fmt.Sprintf("52:54:00:66:00:%02d", i+1) }
	// The DHCPv6 VM's DUID is DUID-LL of its MAC: type 3, hardware 1.
	dnsmasq := exec.Command("ip", "netns", "exec", seg.Netns, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
		"--port=0", "--user=root", "--log-facility=-", "--log-dhcp", "--interface="+port, "--bind-interfaces",
		"--enable-ra", "--ra-param="+port+",3",
		"--dhcp-range=2001:db8:60::100,2001:db8:60::1ff,slaac,64,10m",
		"--dhcp-host=id:00:03:00:01:"+mac(2)+",[2001:db8:60::103]",
		"--dhcp-option=option6:dns-server,[2001:db8:60::53]",
		"--dhcp-leasefile="+filepath.Join(dir, "leases"), "--pid-file="+filepath.Join(dir, "pid"))
	dlog, err := os.Create(filepath.Join(dir, "dnsmasq.log"))
	if err != nil {
		t.Fatal(err)
	}
	dnsmasq.Stdout, dnsmasq.Stderr = dlog, dlog
	if err := dnsmasq.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		dnsmasq.Process.Kill()
		dnsmasq.Wait()
		dlog.Close()
		if t.Failed() {
			out, _ := os.ReadFile(dlog.Name())
			t.Logf("dnsmasq:\n%s", out)
		}
	})

	static, slaac, leased := "2001:db8:60::1", "2001:db8:60:0:5054:ff:fe66:2", "2001:db8:60::103"
	addressing := []string{
		`addresses = ["` + static + `/64"]` + "\n" + `gateway = "` + router + `"`,
		``,             // SLAAC: the kernel's, from the advertisement
		`dhcp6 = true`, // and SLAAC as well
	}
	own := []string{static + "/64", slaac + "/64", leased + "/128"}
	var cfgs []Config
	for i := range 3 {
		targets := []string{router}
		for j := range 3 {
			if j != i {
				targets = append(targets, strings.TrimSuffix(strings.TrimSuffix(own[j], "/64"), "/128"))
			}
		}
		cfgs = append(cfgs, Config{
			Name: fmt.Sprintf("v6-%d", i+1), Kernel: kernel, Initrd: initrd,
			Cmdline: "plinth.selftest=1 plinth.selftest.ping=" + strings.Join(targets, ","),
			NICs:    []NIC{{MAC: mac(i), Segment: seg}},
			MachineConfig: []byte(fmt.Sprintf(`[[network.interface]]
mac = "%s"
name = "lan0"
required = true
%s
`, mac(i), addressing[i])),
		})
	}
	vms := StartN(t, cfgs...)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	for i, r := range selftestReports(t, ctx, vms) {
		// Each is ready with the address of its own kind (the DHCPv6 VM
		// only once it holds its lease).
		if got := r.Addresses["lan0"]; !slices.Contains(got, own[i]) {
			t.Errorf("%s: lan0 addresses %v, want %s among them", vms[i].Name(), got, own[i])
		}
		if len(r.Ping) != 3 {
			t.Errorf("%s: pinged %v, want the router and the 2 other VMs", vms[i].Name(), r.Ping)
		}
		for target, ok := range r.Ping {
			if !ok {
				t.Errorf("%s: no answer from %s (problems %v)", vms[i].Name(), target, r.Problems)
			}
		}
	}
	if log, _ := os.ReadFile(dlog.Name()); !strings.Contains(string(log), "DHCPREPLY("+port+") "+leased) {
		t.Errorf("dnsmasq did not lease %s:\n%s", leased, log)
	}
}

// TestNetdBondAndVLAN: VM a bonds its two NICs (active-backup) and runs a
// VLAN on the bond; VM b has the same VLAN on its one NIC. Traffic passes
// both untagged over the bond and tagged over the VLAN. (The dev host's
// kernel has neither bonding nor 8021q, so this runs in guests.)
func TestNetdBondAndVLAN(t *testing.T) {
	kernel, initrd := plinthImage(t)
	ns := NewNetns(t)
	seg1, seg2 := ns.Segment(), ns.Segment()
	a := Config{
		Name: "bond", Kernel: kernel, Initrd: initrd,
		Cmdline: "plinth.selftest=1 plinth.selftest.ping=10.60.0.2,10.60.10.2",
		NICs:    []NIC{{MAC: "52:54:00:60:00:01", Segment: seg1}, {MAC: "52:54:00:60:00:02", Segment: seg2}},
		MachineConfig: []byte(`[[network.interface]]
name = "eth0"
mac = "52:54:00:60:00:01"
[[network.interface]]
name = "eth1"
mac = "52:54:00:60:00:02"
[[network.bond]]
name = "bond0"
mode = "active-backup"
members = ["eth0", "eth1"]
primary = "eth0"
addresses = ["10.60.0.1/24"]
required = true
[[network.vlan]]
name = "vlan10"
link = "bond0"
id = 10
addresses = ["10.60.10.1/24"]
required = true
`),
	}
	b := Config{
		Name: "peer", Kernel: kernel, Initrd: initrd, Cmdline: "plinth.selftest=1",
		NICs: []NIC{{MAC: "52:54:00:60:00:03", Segment: seg1}},
		MachineConfig: []byte(`[[network.interface]]
name = "eth0"
mac = "52:54:00:60:00:03"
addresses = ["10.60.0.2/24"]
required = true
[[network.vlan]]
name = "vlan10"
link = "eth0"
id = 10
addresses = ["10.60.10.2/24"]
required = true
`),
	}
	vms := StartN(t, a, b)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	reports := selftestReports(t, ctx, vms)
	ra := reports[0]
	if !slices.Contains(ra.Addresses["bond0"], "10.60.0.1/24") || !slices.Contains(ra.Addresses["vlan10"], "10.60.10.1/24") {
		t.Errorf("bond VM addresses %v, want 10.60.0.1/24 on bond0 and 10.60.10.1/24 on vlan10", ra.Addresses)
	}
	for _, target := range []string{"10.60.0.2", "10.60.10.2"} {
		if !ra.Ping[target] {
			t.Errorf("bond VM: no answer from %s (ping %v, problems %v)", target, ra.Ping, ra.Problems)
		}
	}
}

// bondModes are the bonding modes TestNetdBondModes runs, one bond each.
var bondModes = []string{"802.3ad", "balance-xor", "balance-rr", "broadcast", "active-backup", "balance-tlb", "balance-alb"}

// switchedModes are the modes meant for members on a plain switch; the
// others need the switch's ports grouped, as a bond of the same mode does.
var switchedModes = []string{"active-backup", "balance-tlb", "balance-alb"}

// TestNetdBondModes: two VMs cabled by two links per bonding mode. VM 1
// has one bond per mode over its two links. VM 2 is the switch: for modes
// that need grouped switch ports it has a bond of the same mode (802.3ad
// with LACP, which its bonding driver speaks), for the others a bridge.
// Every bond passes traffic; 802.3ad negotiates one aggregator with the
// peer; when one cable of every bond is pulled (both ends' carrier off),
// traffic flows on over the other; and after the cable is back both members
// are in use again.
func TestNetdBondModes(t *testing.T) {
	kernel, initrd := plinthImage(t)
	mac := func(side, bond, member int) string {
		return fmt.Sprintf("52:54:00:7%d:%02d:%02d", side, bond, member)
	}
	addr := func(side, bond int) string { return fmt.Sprintf("10.70.%d.%d", bond, side+1) }
	cfgs := make([]Config, 2)
	for side := range cfgs {
		var conf strings.Builder
		for k, mode := range bondModes {
			for m := range 2 {
				fmt.Fprintf(&conf, "[[network.interface]]\nname = \"b%dm%d\"\nmac = %q\n", k, m, mac(side, k, m))
			}
			if side == 1 && slices.Contains(switchedModes, mode) {
				fmt.Fprintf(&conf, "[[network.bridge]]\nname = \"br%d\"\nmembers = [\"b%dm0\", \"b%dm1\"]\n", k, k, k)
			} else {
				fmt.Fprintf(&conf, "[[network.bond]]\nname = \"bond%d\"\nmode = %q\nmembers = [\"b%dm0\", \"b%dm1\"]\nmiimon = 100\n", k, mode, k, k)
				switch mode {
				case "802.3ad":
					conf.WriteString("lacp_rate = \"fast\"\nxmit_hash_policy = \"layer2+3\"\n")
				case "balance-xor":
					conf.WriteString("xmit_hash_policy = \"layer2+3\"\n")
				}
			}
			fmt.Fprintf(&conf, "addresses = [\"%s/24\"]\nrequired = true\n", addr(side, k))
		}
		cfgs[side] = Config{Name: fmt.Sprintf("bonds%d", side+1), Kernel: kernel, Initrd: initrd,
			Cmdline: "plinth.selftest=1", MachineConfig: []byte(conf.String())}
	}
	var targets []string
	for k := range bondModes {
		targets = append(targets, addr(1, k))
	}
	cfgs[0].Cmdline += " plinth.selftest.ping=" + strings.Join(targets, ",") + " plinth.selftest.watch=400"
	for k := range bondModes {
		for m := range 2 {
			a, b, err := NewLink()
			if err != nil {
				t.Fatal(err)
			}
			cfgs[0].NICs = append(cfgs[0].NICs, NIC{MAC: mac(0, k, m), Link: a, Speed: 10000})
			cfgs[1].NICs = append(cfgs[1].NICs, NIC{MAC: mac(1, k, m), Link: b, Speed: 10000})
		}
	}
	vms := StartN(t, cfgs...)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	reports := selftestReports(t, ctx, vms)
	t.Logf("reports at uptime %.1fs and %.1fs", reports[0].Uptime, reports[1].Uptime)
	for k, mode := range bondModes {
		if b := reports[0].Bonds[fmt.Sprintf("bond%d", k)]; b.Mode != mode || len(b.Members) != 2 {
			t.Errorf("bond%d is %+v, want mode %s with 2 members", k, b, mode)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	// bondWrong says what is wrong with bond k in a round, with its second
	// cable pulled or not.
	bondWrong := func(w boot.Watch, k int, pulled bool) string {
		name, target := fmt.Sprintf("bond%d", k), addr(1, k)
		b := w.Bonds[name]
		for m, st := range b.Members {
			want := "up"
			if pulled && m == fmt.Sprintf("b%dm1", k) {
				want = "down"
			}
			if st.MII != want {
				return fmt.Sprintf("%s member %s is %s", name, m, st.MII)
			}
			if b.Mode == "802.3ad" && want == "up" && st.Aggregator != b.Aggregator {
				return fmt.Sprintf("%s member %s is in aggregator %s, the active one is %s", name, m, st.Aggregator, b.Aggregator)
			}
		}
		if peer := []string{mac(1, k, 0), mac(1, k, 1)}; b.Mode == "802.3ad" && !slices.Contains(peer, b.PartnerMAC) {
			return fmt.Sprintf("%s's LACP partner is %q, want the peer's bond (one of %v)", name, b.PartnerMAC, peer)
		}
		if !w.Ping[target] {
			return fmt.Sprintf("%s: no answer from %s", name, target)
		}
		return ""
	}
	// settle waits until every bond has been right in some round, and logs
	// how long each took.
	settle := func(what string, pulled bool) {
		t.Helper()
		since := time.Now()
		took := make([]time.Duration, len(bondModes))
		waitWatch(t, ctx, vms[0], what, func(w boot.Watch) string {
			var wrong []string
			for k := range bondModes {
				if took[k] != 0 {
					continue
				}
				if p := bondWrong(w, k, pulled); p != "" {
					wrong = append(wrong, p)
				} else {
					took[k] = time.Since(since)
				}
			}
			return strings.Join(wrong, "; ")
		})
		var figures []string
		for k, mode := range bondModes {
			figures = append(figures, fmt.Sprintf("%s=%.1fs", mode, took[k].Seconds()))
		}
		t.Logf("%s: %s", what, strings.Join(figures, " "))
	}
	settle("every bond up with both members, 802.3ad aggregated with the peer", false)

	// Pull the second cable of every bond: carrier off at both ends.
	setCables := func(up bool) {
		for k := range bondModes {
			for _, vm := range vms {
				netdev := fmt.Sprintf("net%d", 2*k+1)
				if _, err := vm.QMP(ctx, "set_link", map[string]any{"name": netdev, "up": up}); err != nil {
					t.Fatalf("%s: set_link %s up=%v: %v", vm.Name(), netdev, up, err)
				}
			}
		}
	}
	setCables(false)
	settle("cable pulled: second member down, peer answering", true)
	for range 3 {
		waitWatch(t, ctx, vms[0], "every peer still answering with one cable", func(w boot.Watch) string {
			var wrong []string
			for k := range bondModes {
				if p := bondWrong(w, k, true); p != "" {
					wrong = append(wrong, p)
				}
			}
			return strings.Join(wrong, "; ")
		})
	}
	setCables(true)
	settle("cable back: both members up and in use", false)

	for _, vm := range vms {
		if strings.Contains(vm.Console(), "replacing bond") {
			t.Errorf("%s: netd replaced a bond that had not changed:\n%s", vm.Name(), vm.ConsoleTail(40))
		}
	}
}

// waitWatch waits for the next watch round of vm's self-check for which
// wrong returns "", and fails the test with the last round's wrong if none
// comes within a minute.
func waitWatch(t *testing.T, ctx context.Context, vm *VM, want string, wrong func(boot.Watch) string) boot.Watch {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	last := "no round yet"
	for {
		line, err := vm.WaitFor(ctx, boot.WatchMarker)
		if err != nil {
			t.Fatalf("%s: waiting for %s: last round: %s: %v", vm.Name(), want, last, err)
		}
		w, ok := boot.ParseWatch(line)
		if !ok {
			t.Fatalf("%s: unreadable watch line %q", vm.Name(), line)
		}
		if last = wrong(w); last == "" {
			return w
		}
	}
}
