//go:build vmtest

package vmtest

import (
	"context"
	"fmt"
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
