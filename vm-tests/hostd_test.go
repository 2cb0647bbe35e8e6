//go:build vmtest

package vmtest

import (
	"context"
	"fmt"
	"net"
	"os"
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
	bundlePath, creds, err := ClusterFiles(t.TempDir(), "vmtest")
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
	_, took := clusterConverges(t, ctx, vms, creds, ClusterAddr)
	t.Logf("all three host APIs list three alive members %.1fs after the last ready", took.Seconds())
}

// clusterConverges waits until the VMs of ClusterNodeAt(…, addr, …) are
// ready and every host API lists all of them alive at their addresses,
// and returns the host clients and how long that took after the last
// ready.
func clusterConverges(t *testing.T, ctx context.Context, vms []*VM, creds *bundle.Credentials, addr func(int) string) ([]*host.Client, time.Duration) {
	t.Helper()
	clients := make([]*host.Client, len(vms))
	for i, vm := range vms {
		if _, err := vm.WaitFor(ctx, "plinth: ready in "); err != nil {
			t.Fatalf("%s: %v\n%s", vm.Name(), err, vm.ConsoleTail(30))
		}
		var err error
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
			if p := checkMembers(ms, ids, addr); p != "" {
				problems = append(problems, vm.Name()+": "+p)
			}
		}
		if len(problems) == 0 {
			return clients, time.Since(start)
		}
		if ctx.Err() != nil {
			for _, vm := range vms {
				t.Logf("%s console:\n%s", vm.Name(), vm.ConsoleTail(30))
			}
			t.Fatalf("members never converged: %s", strings.Join(problems, "; "))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// checkMembers returns what is wrong with ms, a member list that should
// hold the nodes alive at their segment addresses addr(i), or "".
func checkMembers(ms []host.Member, ids map[string]string, addr func(int) string) string {
	if len(ms) != len(ids) {
		return fmt.Sprintf("%d members, want %d: %+v", len(ms), len(ids), ms)
	}
	for i, m := range ms {
		name := fmt.Sprintf("node%d", i+1)
		if m.ID != ids[name] || m.Hostname != name || m.Status != host.StatusAlive ||
			!strings.HasPrefix(m.Addr, net.JoinHostPort(addr(i), "")) || len(m.Roles) != 1 || m.Roles[0] != "demo" {
			return fmt.Sprintf("member %d = %+v, want %s (%s) alive at %s with role demo", i, m, name, ids[name], addr(i))
		}
	}
	return ""
}

// TestJobInImage: a job on the system rootfs runs inside the booted image
// (libcontainer under the image's PID 1, cgroup v2, tini as the job's
// init) and its output comes back over the host API.
func TestJobInImage(t *testing.T) {
	kernel, initrd := plinthImage(t)
	bundlePath, creds, err := ClusterFiles(t.TempDir(), "vmtest")
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

	// A later start, for comparison: the first one after boot competes
	// with the background module loading.
	spec.ID = "again"
	start = time.Now()
	if _, err := c.CreateJob(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if j, err = c.WaitJob(ctx, "again"); err != nil || j.Status.Exit == nil || j.Status.Exit.Code != 0 {
		t.Fatalf("second job: %+v, %v", j.Status, err)
	}
	t.Logf("second job: create→exit %.2fs", time.Since(start).Seconds())
}

// dataDisk makes a data disk for a test (see DataDisk).
func dataDisk(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skipf("needs busybox-static: %v", err)
	}
	disk, err := DataDisk(t.TempDir(), 128<<20)
	if err != nil {
		t.Fatal(err)
	}
	return disk
}

// TestResurrectAfterReboot: with a data disk, /var survives reboots; a
// job marked resurrect runs again after a hard reset and after a clean
// reboot (Ctrl-Alt-Del), on the same node ID, before any cluster service.
func TestResurrectAfterReboot(t *testing.T) {
	kernel, initrd := plinthImage(t)
	bundlePath, creds, err := ClusterFiles(t.TempDir(), "vmtest")
	if err != nil {
		t.Fatal(err)
	}
	cfg := ClusterNode(0, 1, kernel, initrd, NewSegment(t), bundlePath)
	cfg.Disks = []string{dataDisk(t)}
	cfg.AllowReboot = true
	vm := StartT(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	ready := func() *host.Client {
		t.Helper()
		if _, err := vm.WaitFor(ctx, "plinth: ready in "); err != nil {
			t.Fatalf("%v\n%s", err, vm.ConsoleTail(40))
		}
		c, err := HostClient(vm, creds)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := ready()
	if !strings.Contains(vm.Console(), "init: data partition /dev/vda mounted at /var") {
		t.Fatalf("no data partition mounted:\n%s", vm.ConsoleTail(40))
	}
	info, err := c.Host(ctx)
	if err != nil {
		t.Fatal(err)
	}
	spec := job.Spec{ID: "keeper", Rootfs: "/var/testroot", Resurrect: true,
		Cmd: []string{"sh", "-c", "echo boot $(cat /proc/sys/kernel/random/boot_id); exec sleep 3600"}}
	if _, err := c.CreateJob(ctx, spec); err != nil {
		t.Fatal(err)
	}
	first, err := waitRunning(ctx, c, "keeper", "")
	if err != nil {
		t.Fatalf("%v\n%s", err, vm.ConsoleTail(30))
	}

	for _, reboot := range []struct {
		name string
		do   func(context.Context) error
	}{{"hard reset", vm.Reset}, {"Ctrl-Alt-Del", vm.CtrlAltDel}} {
		if err := reboot.do(ctx); err != nil {
			t.Fatalf("%s: %v", reboot.name, err)
		}
		c = ready()
		again, err := c.Host(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if again.ID != info.ID {
			t.Errorf("after %s: node ID %s, want %s kept on the data partition", reboot.name, again.ID, info.ID)
		}
		j, err := waitRunning(ctx, c, "keeper", first.Status.BootID)
		if err != nil {
			t.Fatalf("after %s: %v\n%s", reboot.name, err, vm.ConsoleTail(30))
		}
		t.Logf("after %s: keeper running again as pid %d, boot %s", reboot.name, j.Status.Pid, j.Status.BootID)
		first = j
	}
	if !strings.Contains(vm.Console(), "shutdown:") {
		t.Errorf("the Ctrl-Alt-Del reboot was not an ordered shutdown:\n%s", vm.ConsoleTail(40))
	}
}

// waitRunning polls until job id runs in a boot other than notBoot.
func waitRunning(ctx context.Context, c *host.Client, id, notBoot string) (job.Job, error) {
	for {
		j, err := c.Job(ctx, id)
		if err == nil && j.Status.State == job.StateRunning && j.Status.BootID != notBoot {
			return j, nil
		}
		select {
		case <-ctx.Done():
			return j, fmt.Errorf("job %s not running in a new boot: %+v, %v", id, j.Status, err)
		case <-time.After(300 * time.Millisecond):
		}
	}
}
