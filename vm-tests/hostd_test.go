//go:build vmtest

package vmtest

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/bundle"
)

// hostClient calls the host API of vm through its forwarded port.
func hostClient(t *testing.T, vm *VM, creds *bundle.Credentials) *host.Client {
	t.Helper()
	addr := vm.HostAddr(host.DefaultAPIPort)
	if addr == "" {
		t.Fatalf("%s forwards no host API port", vm.Name())
	}
	tr := &http.Transport{TLSClientConfig: creds.TLS(), DialContext: vm.DialContext}
	return host.NewClientTransport(addr, tr)
}

// TestHostdClusterOfThree: three VMs share a cluster bundle (fw_cfg) and
// one L2 segment; each joins the others and every host API lists all three
// alive, at their segment addresses.
func TestHostdClusterOfThree(t *testing.T) {
	kernel, initrd := plinthImage(t)
	b, err := bundle.Create("vmtest")
	if err != nil {
		t.Fatal(err)
	}
	data, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	bundlePath := filepath.Join(t.TempDir(), "bundle.toml")
	if err := os.WriteFile(bundlePath, data, 0o600); err != nil {
		t.Fatal(err)
	}
	creds, err := b.IssueClient("vmtest", time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	seg := NewSegment(t)
	addr := func(i int) string { return fmt.Sprintf("10.60.0.%d", i+1) }
	seeds := fmt.Sprintf(`"%s", "%s", "%s"`, addr(0), addr(1), addr(2))
	var cfgs []Config
	for i := range 3 {
		cfgs = append(cfgs, Config{
			Name: fmt.Sprintf("node%d", i+1), Kernel: kernel, Initrd: initrd,
			NICs: []NIC{
				{MAC: fmt.Sprintf("52:54:00:60:00:%02d", i+1), Segment: seg},
				// The harness reaches each host API through a forward.
				{MAC: fmt.Sprintf("52:54:00:60:01:%02d", i+1), User: &UserNet{Forwards: []Forward{{GuestPort: host.DefaultAPIPort}}}},
			},
			ExtraArgs: []string{"-fw_cfg", "name=opt/plinth/bundle,file=" + bundlePath},
			MachineConfig: []byte(fmt.Sprintf(`hostname = "node%d"
[[network.interface]]
mac = "52:54:00:60:00:%02d"
name = "lan0"
addresses = ["%s/24"]
required = true

[[network.interface]]
mac = "52:54:00:60:01:%02d"
name = "mgmt0"
addresses = ["10.0.2.15/24"]

[cluster]
bundle = "fw_cfg"
join = [%s]
advertise = "lan0"
roles = ["test"]
`, i+1, i+1, addr(i), i+1, seeds)),
		})
	}
	vms := StartN(t, cfgs...)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	for _, vm := range vms {
		if _, err := vm.WaitFor(ctx, "plinth: ready in "); err != nil {
			t.Fatalf("%s: %v\n%s", vm.Name(), err, vm.ConsoleTail(30))
		}
	}
	ids := map[string]string{} // node name → ID, from /v1/host
	for _, vm := range vms {
		info, err := hostClient(t, vm, creds).Host(ctx)
		if err != nil {
			t.Fatalf("%s: /v1/host: %v\n%s", vm.Name(), err, vm.ConsoleTail(30))
		}
		if info.Hostname != vm.Name() || info.Cluster != "vmtest" {
			t.Errorf("%s: /v1/host = %+v, want its hostname and cluster vmtest", vm.Name(), info)
		}
		ids[vm.Name()] = info.ID
	}
	start := time.Now()
	for {
		var problems []string
		for _, vm := range vms {
			ms, err := hostClient(t, vm, creds).Members(ctx)
			if err != nil {
				problems = append(problems, fmt.Sprintf("%s: %v", vm.Name(), err))
				continue
			}
			if p := checkMembers(ms, ids); p != "" {
				problems = append(problems, vm.Name()+": "+p)
			}
		}
		if len(problems) == 0 {
			break
		}
		if ctx.Err() != nil {
			for _, vm := range vms {
				t.Logf("%s console:\n%s", vm.Name(), vm.ConsoleTail(30))
			}
			t.Fatalf("members never converged: %s", strings.Join(problems, "; "))
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("all three host APIs list three alive members %.1fs after the last ready", time.Since(start).Seconds())
}

// checkMembers returns what is wrong with ms, a member list that should
// hold the three nodes alive at their segment addresses, or "".
func checkMembers(ms []host.Member, ids map[string]string) string {
	if len(ms) != len(ids) {
		return fmt.Sprintf("%d members, want %d: %+v", len(ms), len(ids), ms)
	}
	for i, m := range ms {
		name := fmt.Sprintf("node%d", i+1)
		if m.ID != ids[name] || m.Hostname != name || m.Status != host.StatusAlive ||
			!strings.HasPrefix(m.Addr, fmt.Sprintf("10.60.0.%d:", i+1)) || len(m.Roles) != 1 || m.Roles[0] != "test" {
			return fmt.Sprintf("member %d = %+v, want %s (%s) alive at 10.60.0.%d with role test", i, m, name, ids[name], i+1)
		}
	}
	return ""
}
