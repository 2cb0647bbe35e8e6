//go:build vmtest

package vmtest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/plinth-os/plinth/host/imagestore"
	"github.com/plinth-os/plinth/services/controller"
	"github.com/plinth-os/plinth/services/updater"
)

// newDiskPlatformVMs is newPlatformVMs with each VM booting a plinth
// disk (out/'s build in slot A) under UEFI instead of a kernel and a
// data disk, so that its hosts can be upgraded.
func newDiskPlatformVMs(t *testing.T, n int) *platformVMs {
	t.Helper()
	testKernel(t)
	if _, err := os.Stat(OVMFCode); err != nil {
		t.Skipf("needs OVMF (apt-get install ovmf): %v", err)
	}
	bundlePath, creds, err := ClusterFiles(t.TempDir(), "vmtest")
	if err != nil {
		t.Fatal(err)
	}
	seg := NewSegment(t)
	p := &platformVMs{t: t, creds: creds}
	for i := range n {
		disk := filepath.Join(t.TempDir(), "disk.img")
		if out, err := exec.Command("../out/plinth", "image", "disk", "--dir", "../out", "--out", disk,
			"--cmdline", "console=ttyS0 quiet").CombinedOutput(); err != nil {
			t.Fatalf("image disk: %v\n%s", err, out)
		}
		cfg := PlatformNode(i, n, "", "", seg, bundlePath, disk)
		cfg.UEFI, cfg.AllowReboot = true, true
		cfg.Memory = 768
		p.cfgs = append(p.cfgs, cfg)
	}
	return p
}

// anyController is a client of every VM's controller.
func (p *platformVMs) anyController() *controller.Client {
	var addrs []string
	for _, vm := range p.vms {
		addrs = append(addrs, vm.HostAddr(ControllerAPIPort))
	}
	// The VMs share one network namespace: any VM's dialer reaches all.
	return controller.NewClientTransport(addrs, &http.Transport{TLSClientConfig: p.creds.TLS(), DialContext: p.vms[0].DialContext})
}

// TestRollingUpgrade: three VMs booted from disks run the platform and
// an app with two instances; `plinth cluster upgrade` (the same steps,
// through the controller and the registry) takes every host to a new
// version, one at a time, while a client loop asks the app through the
// routers of the hosts in service: no request fails, the controller
// never has more than one voter away, and every host ends on the new
// version with its slots committed. In make test-vm-all.
func TestRollingUpgrade(t *testing.T) {
	if os.Getenv("PLINTH_VM_ALL") == "" {
		t.Skip("a long VM test (about 20 minutes under TCG): make test-vm-all runs it")
	}
	base := outManifest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Minute)
	defer cancel()
	p := newDiskPlatformVMs(t, 3)
	start := time.Now()
	p.boot(ctx)
	v2 := buildForUpgrade(t, "v2", base.Serial+1, "")
	p.healthy(ctx, "bootstrap from disks", nil)
	t.Logf("bootstrapped from disks and healthy %.1fs after power-on", time.Since(start).Seconds())
	p.deployApp(ctx)
	p.appServes(ctx, "app deployed")
	c := p.anyController()

	// Which hosts are in service: the client loop uses the routers of
	// the others, as a load balancer with health checks would.
	var inService sync.Map // VM index → bool
	ids := make([]string, len(p.vms))
	for i, hc := range p.hosts {
		info, err := hc.Host(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = info.ID
		inService.Store(i, true)
	}
	loopCtx, stopLoop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	// Quorum: at most one voter's host down (as Serf sees it) at any
	// time; the longest stretch without a leader (elections) is reported.
	var requests, failed, maxAway, maxLeaderless atomic.Int64
	var failures sync.Map
	wg.Go(func() {
		lastLeader := time.Now()
		for loopCtx.Err() == nil {
			hosts, _, err := c.Hosts(loopCtx, controller.QueryOptions{})
			if err == nil {
				for i, id := range ids {
					for _, h := range hosts {
						if h.ID == id {
							inService.Store(i, !h.Cordoned && h.Status == "alive")
						}
					}
				}
			}
			st, err := c.Status(loopCtx)
			if err == nil {
				away := int64(0)
				for _, v := range st.Voters {
					if v.Serf != "alive" {
						away++
					}
				}
				atomicMax(&maxAway, away)
			}
			if err == nil && st.Leader != "" {
				lastLeader = time.Now()
			} else if loopCtx.Err() == nil {
				atomicMax(&maxLeaderless, int64(time.Since(lastLeader)/time.Millisecond))
			}
			sleepCtx(loopCtx, 300*time.Millisecond)
		}
	})
	wg.Go(func() {
		clients := make([]*http.Client, len(p.vms))
		for i, vm := range p.vms {
			clients[i] = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: vm.DialContext, DisableKeepAlives: true}}
		}
		for n := 0; loopCtx.Err() == nil; n++ {
			i := n % len(p.vms)
			if ok, _ := inService.Load(i); ok != true {
				sleepCtx(loopCtx, 10*time.Millisecond)
				continue
			}
			req, _ := http.NewRequestWithContext(loopCtx, http.MethodGet, "http://"+p.vms[i].HostAddr(RouterHTTPPort)+"/", nil)
			req.Host = "demo.test"
			resp, err := clients[i].Do(req)
			if loopCtx.Err() != nil {
				return
			}
			requests.Add(1)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					err = fmt.Errorf("%s", resp.Status)
				}
			}
			if err != nil {
				failed.Add(1)
				failures.Store(fmt.Sprintf("%s via %s", time.Now().Format("15:04:05.000"), p.vms[i].Name()), err.Error())
			}
			sleepCtx(loopCtx, 100*time.Millisecond)
		}
	})

	// What `plinth cluster upgrade` does: the bundle to the registry,
	// the upgrade to the controller.
	img, m, err := updater.BundleImage(v2.Bundle)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(p.vms[0].HostAddr(RegistryPort) + "/" + updater.BundleRepo + ":" + updater.BundleTag(m.Version))
	if err != nil {
		t.Fatal(err)
	}
	tr := imagestore.HTTPSOnly(&http.Transport{TLSClientConfig: p.creds.TLS(), DialContext: p.vms[0].DialContext})
	if err := remote.Write(ref, img, remote.WithContext(ctx), remote.WithTransport(tr)); err != nil {
		t.Fatalf("push the bundle: %v", err)
	}
	digest, _ := img.Digest()
	up, err := updater.Start(ctx, c, updater.NewUpgrade(m, digest.String(), false, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	upStart := time.Now()
	t.Logf("upgrade %s started", up.ID)
	var index uint64
	printed := 0
	for up.State == controller.UpgradeRunning {
		next, meta, err := c.Upgrade(ctx, up.ID, controller.QueryOptions{Index: index, Wait: 30 * time.Second})
		if err != nil {
			if ctx.Err() != nil {
				t.Fatalf("upgrade not done: %v\n%s", err, strings.Join(up.Log, "\n"))
			}
			sleepCtx(ctx, 2*time.Second)
			continue
		}
		up, index = next, meta.Index
		for _, line := range up.Log[min(printed, len(up.Log)):] {
			t.Log("  " + line)
		}
		printed = len(up.Log)
	}
	elapsed := time.Since(upStart)
	stopLoop()
	wg.Wait()
	if up.State != controller.UpgradeDone {
		for _, vm := range p.vms {
			t.Logf("%s console:\n%s", vm.Name(), vm.ConsoleTail(40))
		}
		t.Fatalf("upgrade %s: %s", up.State, up.Reason)
	}
	fmt.Printf("bench upgrade-rolling: plinth=%.1fs hosts=%d requests=%d failed=%d voters-down-max=%d leaderless-max=%.1fs\n",
		elapsed.Seconds(), len(p.vms), requests.Load(), failed.Load(), maxAway.Load(), float64(maxLeaderless.Load())/1000)
	failures.Range(func(k, v any) bool {
		t.Errorf("request at %s failed: %s", k, v)
		return true
	})
	if requests.Load() < 100 {
		t.Errorf("only %d requests during the upgrade", requests.Load())
	}
	if maxAway.Load() > 1 {
		t.Errorf("%d controller voters' hosts were down at once", maxAway.Load())
	}
	// Every VM rebooted: new clients, as after a cold start (a kept-alive
	// connection to a host from before its reboot may hang).
	for i, vm := range p.vms {
		if p.hosts[i], err = HostClient(vm, p.creds); err != nil {
			t.Fatal(err)
		}
	}
	for i, hc := range p.hosts {
		info, err := hc.Host(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.Version != "v2" || info.Slots.Upgrade != "committed" || info.Slots.Booted != "b" {
			t.Errorf("%s: version %s, slots %+v", p.vms[i].Name(), info.Version, info.Slots)
		}
	}
	// Bounded, so that a platform that does not come back fails with
	// the consoles and job logs well before the test's deadline.
	fctx, fcancel := context.WithTimeout(ctx, 10*time.Minute)
	defer fcancel()
	p.healthy(fctx, "after the upgrade", nil)
	p.appServes(fctx, "after the upgrade")
}

func atomicMax(a *atomic.Int64, v int64) {
	for {
		m := a.Load()
		if v <= m || a.CompareAndSwap(m, v) {
			return
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
