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
	"github.com/plinth-os/plinth/host/job"
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

// TestJobInImage: a job on the system rootfs runs inside the booted image
// (libcontainer under the image's PID 1, cgroup v2, tini as the job's
// init) and its output comes back over the host API.
func TestJobInImage(t *testing.T) {
	kernel, initrd := plinthImage(t)
	b, err := bundle.Create("vmtest")
	if err != nil {
		t.Fatal(err)
	}
	data, _ := b.Marshal()
	bundlePath := filepath.Join(t.TempDir(), "bundle.toml")
	if err := os.WriteFile(bundlePath, data, 0o600); err != nil {
		t.Fatal(err)
	}
	creds, err := b.IssueClient("vmtest", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	vm := StartT(t, ClusterNode(0, 1, kernel, initrd, NewSegment(t), bundlePath))
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	if _, err := vm.WaitFor(ctx, "plinth: ready in "); err != nil {
		t.Fatalf("%v\n%s", err, vm.ConsoleTail(30))
	}
	c, err := HostClient(vm, creds)
	if err != nil {
		t.Fatal(err)
	}
	spec := job.Spec{ID: "hello", Rootfs: job.SystemRootfs, Cmd: []string{"plinth", "version"}}
	start := time.Now()
	if _, err := c.CreateJob(ctx, spec); err != nil {
		t.Fatalf("create: %v\n%s", err, vm.ConsoleTail(30))
	}
	j, err := c.WaitJob(ctx, "hello")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("create→exit %.2fs in the guest, status %+v", time.Since(start).Seconds(), j.Status)
	if j.Status.Exit == nil || j.Status.Exit.Code != 0 {
		t.Fatalf("exit %+v, want 0\n%s", j.Status.Exit, vm.ConsoleTail(30))
	}
	var out []string
	if err := c.JobLogs(ctx, "hello", job.LogOptions{}, func(l job.LogLine) error {
		out = append(out, l.Stream+":"+l.Text)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	info, err := c.Host(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 1 || out[0] != "stdout:"+info.Version {
		t.Errorf("job output %q, want the image's plinth version %q", out, info.Version)
	}
}
