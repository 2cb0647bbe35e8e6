//go:build vmtest

package vmtest

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host/container"
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/services/controller"
)

// TestIPv6Cluster: three VMs whose cluster segment is IPv6-only form a
// cluster over it (Serf, the host API's certificates) and run the
// container overlay over it: a job on node 2 fetches from a job on node 1
// at its overlay address. The only IPv4 a VM has is its own QEMU user
// network, which the test uses to reach its host API and which no other
// VM shares.
func TestIPv6Cluster(t *testing.T) {
	kernel, initrd := plinthImage(t)
	bundlePath, creds, err := ClusterFiles(t.TempDir(), "vmtest")
	if err != nil {
		t.Fatal(err)
	}
	seg := NewSegment(t)
	addr := func(i int) string { return fmt.Sprintf("2001:db8:61::%d", i+1) }
	var cfgs []Config
	for i := range 3 {
		cfgs = append(cfgs, ClusterNodeAt(i, 3, addr, 64, kernel, initrd, seg, bundlePath))
	}
	vms := StartN(t, cfgs...)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	clients, took := clusterConverges(t, ctx, vms, creds, addr)
	t.Logf("three members alive at their IPv6 addresses %.1fs after the last ready", took.Seconds())

	// The overlay: echoback on node 1 and on node 2, bridge network.
	archive := appArchive(t, t.TempDir())
	for i := range 2 {
		f, err := os.Open(archive)
		if err != nil {
			t.Fatal(err)
		}
		imgs, err := clients[i].ImportImage(ctx, f)
		f.Close()
		if err != nil {
			t.Fatalf("%s: import: %v", vms[i].Name(), err)
		}
		// In a user namespace, as apps are: these hosts have no data
		// disk, and the 6.1 kernel cannot idmap their tmpfs /var, so the
		// jobs get copies of the layers.
		if _, err := clients[i].CreateJob(ctx, job.Spec{ID: "echo", Image: imgs[0].ID, Network: job.NetworkBridge, PreferUserNamespace: true}); err != nil {
			t.Fatalf("%s: create job: %v", vms[i].Name(), err)
		}
	}
	var ip netip.Addr
	for {
		j, err := clients[0].Job(ctx, "echo")
		if err == nil && j.Status.State == job.StateRunning && j.Status.IP.IsValid() {
			ip = j.Status.IP
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("node1's job never ran with an address: %+v, %v", j.Status, err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	url := fmt.Sprintf("http://%s:8080/over-ipv6", ip)
	var last string
	for {
		r, err := clients[1].ExecJob(ctx, "echo", []string{"/echoback", "--get", url}, 20*time.Second)
		if err == nil && r.ExitCode == 0 && strings.HasPrefix(r.Output, "web ") && strings.Contains(r.Output, "/over-ipv6") {
			t.Logf("node2's job fetched %s: %s", url, strings.TrimSpace(r.Output))
			break
		}
		last = fmt.Sprintf("%+v, %v", r, err)
		if ctx.Err() != nil {
			for _, vm := range vms[:2] {
				t.Logf("%s console:\n%s", vm.Name(), vm.ConsoleTail(40))
			}
			t.Fatalf("node2's job never fetched %s over the overlay: %s", url, last)
		}
		time.Sleep(time.Second)
	}
	r, err := clients[1].ExecJob(ctx, "echo", []string{"/echoback", "--get", fmt.Sprintf("http://%s:8080/uid_map", ip)}, 20*time.Second)
	if want := fmt.Sprintf("0 %d %d", container.UserNSBase, container.UserNSSize); err != nil || strings.Join(strings.Fields(r.Output), " ") != want {
		t.Errorf("node1's job's uid_map: %+v, %v; want %q", r, err, want)
	}
}

// TestIPv6Platform: the platform bootstraps itself on three hosts whose
// cluster segment is IPv6-only (the controller's raft and API, the
// scheduler, discovery, the routers, the registry), and an app pushed to
// it is deployed and served by every router.
func TestIPv6Platform(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	p := newPlatformVMsAt(t, 3, func(i int) string { return fmt.Sprintf("2001:db8:62::%d", i+1) }, 64)
	start := time.Now()
	p.boot(ctx)
	p.healthy(ctx, "bootstrap over IPv6", nil)
	t.Logf("bootstrapped and healthy %.1fs after power-on", time.Since(start).Seconds())
	p.deployApp(ctx)
	p.appServes(ctx, "app deployed over IPv6")

	// The platform DNS, asked from inside an app instance, names the
	// controller hosts by their IPv6 addresses (AAAA).
	want := []string{"2001:db8:62::1", "2001:db8:62::2", "2001:db8:62::3"}
	var got string
	for {
		for _, c := range p.hosts {
			jobs, err := c.Jobs(ctx)
			if err != nil {
				continue
			}
			for _, j := range jobs {
				if j.Spec.Tags[controller.AppTag] != "demo" || j.Status.State != job.StateRunning {
					continue
				}
				r, err := c.ExecJob(ctx, j.Spec.ID, []string{"/echoback", "--resolve", "controller.plinth"}, 20*time.Second)
				got = fmt.Sprintf("%+v, %v", r, err)
				if err == nil && r.ExitCode == 0 {
					lines := strings.Fields(r.Output)
					slices.Sort(lines)
					if slices.Equal(lines, want) {
						t.Logf("controller.plinth from app instance %s: %s", j.Spec.ID, strings.Join(lines, " "))
						return
					}
				}
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("controller.plinth never resolved to %v in an app instance: %s", want, got)
		}
		time.Sleep(time.Second)
	}
}
