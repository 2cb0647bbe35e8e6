//go:build vmtest

package vmtest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/bundle"
)

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
	var cfgs []Config
	for i := range 3 {
		cfgs = append(cfgs, ClusterNode(i, 3, kernel, initrd, seg, bundlePath))
	}
	vms := StartN(t, cfgs...)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	clients := make([]*host.Client, len(vms))
	for i, vm := range vms {
		if _, err := vm.WaitFor(ctx, "plinth: ready in "); err != nil {
			t.Fatalf("%s: %v\n%s", vm.Name(), err, vm.ConsoleTail(30))
		}
		if clients[i], err = HostClient(vm, creds); err != nil {
			t.Fatal(err)
		}
	}
	ids := map[string]string{} // node name → ID, from /v1/host
	for i, vm := range vms {
		info, err := clients[i].Host(ctx)
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
		for i, vm := range vms {
			ms, err := clients[i].Members(ctx)
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
			!strings.HasPrefix(m.Addr, ClusterAddr(i)+":") || len(m.Roles) != 1 || m.Roles[0] != "demo" {
			return fmt.Sprintf("member %d = %+v, want %s (%s) alive at %s with role demo", i, m, name, ids[name], ClusterAddr(i))
		}
	}
	return ""
}
