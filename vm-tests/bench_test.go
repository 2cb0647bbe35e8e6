//go:build vmtest

package vmtest

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host/imagestore"
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/image"
	"github.com/plinth-os/plinth/services/controller"
	"github.com/plinth-os/plinth/services/scheduler"
)

// BenchmarkBootReady boots the plinth image and a busybox-only initramfs
// (same kernel; /init prints its uptime and powers off) alternately, eleven
// times each, and prints median kernel→ready uptime, wall time, the ratio,
// and the artifact sizes. Every other round boots busybox first, so that a
// drift in the host's speed does not favour one side.
func BenchmarkBootReady(b *testing.B) {
	kernel, initrd := plinthImage(b)
	// Against busybox on the image's own kernel: each flavour's floor.
	if data, err := os.ReadFile(filepath.Join(filepath.Dir(kernel), image.ManifestName)); err == nil {
		var m image.Manifest
		if json.Unmarshal(data, &m) == nil {
			fmt.Printf("bench boot-image: flavour %s, kernel %s\n", m.Flavour, m.KernelRelease)
		}
	}
	bb := filepath.Join(b.TempDir(), "busybox.img")
	if err := BusyboxInitrd(bb); err != nil {
		b.Fatal(err)
	}
	const rounds = 11
	var pUp, pWall, bUp, bWall []float64
	phases := map[string][]float64{}
	for i := 0; i < rounds; i++ {
		var pu, pw, bu, bw float64
		var console string
		if i%2 == 0 {
			pu, pw, console = bootToMarker(b, kernel, initrd, "plinth: ready in ", plinthExecMarker)
			bu, bw, _ = bootToMarker(b, kernel, bb, BusyboxUptimeMarker, "")
		} else {
			bu, bw, _ = bootToMarker(b, kernel, bb, BusyboxUptimeMarker, "")
			pu, pw, console = bootToMarker(b, kernel, initrd, "plinth: ready in ", plinthExecMarker)
		}
		pUp, pWall = append(pUp, pu), append(pWall, pw)
		bUp, bWall = append(bUp, bu), append(bWall, bw)
		split, err := BootPhases(console, pu)
		if err != nil {
			b.Fatal(err)
		}
		for _, p := range split {
			phases[p.Name] = append(phases[p.Name], p.Seconds)
		}
		b.Logf("round %d: ready plinth=%.2fs busybox=%.2fs phases %v", i+1, pu, bu, split)
	}
	// A TCG boot's speed varies by up to 1.7x from one boot to the next
	// (host load, not the image); the ranges show how far to trust a ratio.
	fmt.Printf("bench boot-wall: plinth=%.2fs busybox=%.2fs ratio=%.2f (plinth %s, busybox %s)\n",
		median(pWall), median(bWall), median(pWall)/median(bWall), spread(pWall), spread(bWall))
	fmt.Printf("bench boot-ready: plinth=%.2fs busybox=%.2fs ratio=%.2f (plinth %s, busybox %s)\n",
		median(pUp), median(bUp), median(pUp)/median(bUp), spread(pUp), spread(bUp))
	// Each phase's median, and its share of the time above the floor.
	above := median(pUp) - median(bUp)
	for _, name := range BootPhaseNames {
		v := phases[name]
		share := "-"
		if name != "kernel" && above > 0 {
			share = fmt.Sprintf("%.0f%%", 100*median(v)/above)
		}
		if name == "kernel" {
			share = fmt.Sprintf("%+.2fs over busybox", median(v)-median(bUp))
		}
		fmt.Printf("bench boot-phase-%s: %.3fs (%s, %s)\n", name, median(v), spread(v), share)
	}
	// initrd.img holds system.img: what a machine gets is vmlinuz and
	// initrd.img (netboot), or vmlinuz, initrd-slot.img and system.img
	// (a disk slot), the same bytes.
	dir := filepath.Dir(kernel)
	var total int64
	for _, name := range []string{"vmlinuz", "initrd-slot.img", "system.img", "initrd.img"} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			b.Fatal(err)
		}
		if name != "initrd.img" {
			total += st.Size()
		}
		fmt.Printf("bench size-%s: %.2fMB\n", name, float64(st.Size())/1e6)
	}
	fmt.Printf("bench size-total: plinth=%.2fMB target=30MB ratio=%.2f (vmlinuz, initrd-slot.img, system.img)\n", float64(total)/1e6, float64(total)/30e6)
}

// plinthExecMarker starts the line PID 1 prints after ready with when the
// kernel ran /init (BootPhases reads it).
const plinthExecMarker = "init: the kernel ran /init at "

// bootToMarker boots to marker and returns the uptime printed after it, the
// wall time from start to the marker and the console until then, or until
// the line then when given.
func bootToMarker(b *testing.B, kernel, initrd, marker, then string) (uptime, wall float64, console string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	vm, err := Start(ctx, Config{Name: "bench", Kernel: kernel, Initrd: initrd})
	if err != nil {
		b.Fatal(err)
	}
	defer vm.Close()
	line, err := vm.WaitFor(ctx, marker)
	if err != nil {
		b.Fatal(err)
	}
	wall = time.Since(start).Seconds()
	rest := line[strings.Index(line, marker)+len(marker):]
	uptime, err = strconv.ParseFloat(strings.TrimSuffix(strings.Fields(rest)[0], "s"), 64)
	if err != nil {
		b.Fatalf("parse uptime in %q: %v", line, err)
	}
	if then != "" {
		if _, err := vm.WaitFor(ctx, then); err != nil {
			b.Fatal(err)
		}
	}
	return uptime, wall, vm.Console()
}

// spread formats the range of v.
func spread(v []float64) string {
	return fmt.Sprintf("%.2f-%.2f", slices.Min(v), slices.Max(v))
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkPlatform times, on three VMs with data disks and
// bootstrap_expect = 3 (TCG):
//
//   - power-on to `plinth status` healthy, against the 60 s target,
//     split into boot (the last VM's "plinth: ready"), bootstrap (until
//     every host's console says its platform jobs are up) and the rest
//     (until status says healthy: formations adopted and checked; the
//     CLI runs in a container, whose start is counted);
//   - SIGKILL of a VM running a web instance (count 2, TCP health
//     checks every second) to both instances healthy on the others,
//     against the 8 s target, split into failure detection (the
//     controller records the host failed), decision (the scheduler's
//     replacement placement) and start (until discovery reports the new
//     instance healthy); then, apart, until `plinth status` says
//     healthy (the CLI runs in a container: its own start is counted).
//
// It prints the bootstrap's step report and what else the killed VM
// held (the controller's leadership, the scheduler's lease), to show
// where the time went. Runs spread widely: three TCG guests share this
// machine's two cores, so every phase is CPU-bound.
func BenchmarkPlatform(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	p := newPlatformVMs(b, 3)
	start := time.Now()
	p.boot(ctx)
	booted := time.Since(start)
	for _, vm := range p.vms {
		if _, err := vm.WaitFor(ctx, `msg="platform jobs up" count=3`); err != nil {
			b.Fatalf("%s: %v\n%s", vm.Name(), err, vm.ConsoleTail(30))
		}
	}
	jobsUp := time.Since(start)
	p.healthy(ctx, "power-on", p.runsOnce(ctx, 0))
	healthy := time.Since(start)
	fmt.Printf("bench platform-power-on: plinth=%.1fs target=60s ratio=%.2f (boot %s, bootstrap %s, to healthy %s)\n",
		healthy.Seconds(), healthy.Seconds()/60,
		share(booted, healthy), share(jobsUp-booted, healthy), share(healthy-jobsUp, healthy))

	// Where the bootstrap phase went: the report of the host that ran it.
	for i, hc := range p.hosts {
		hc.JobLogs(ctx, "plinth-bootstrap", job.LogOptions{}, func(l job.LogLine) error {
			if strings.HasPrefix(strings.TrimSpace(l.Text), "step ") || strings.Contains(l.Text, "bootstrap_expect") {
				fmt.Printf("  node%d bootstrap: %s\n", i+1, strings.TrimSpace(l.Text))
			}
			return nil
		})
	}

	c := p.controller(0)
	if _, err := c.PutFormation(ctx, webFormation(), nil); err != nil {
		b.Fatal(err)
	}
	p.healthy(ctx, "web placed", p.runsOnce(ctx, 2))
	// The victim runs a web instance and is not node1, whose controller
	// the watches below ask.
	web, err := p.formationJobs(ctx, "web")
	if err != nil {
		b.Fatal(err)
	}
	victim, victimID := -1, ""
	for i := 1; i < len(p.hosts); i++ {
		info, err := p.hosts[i].Host(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if web[info.ID] > 0 {
			victim, victimID = i, info.ID
		}
	}
	if victim < 0 {
		b.Fatalf("no web instance outside node1: %v", web)
	}
	// What else the victim holds changes what its loss costs: a raft
	// election before its failure can be recorded, a scheduler lease
	// to take over.
	var held []string
	if st, err := c.Status(ctx); err == nil && st.Leader == victimID {
		held = append(held, "controller leader")
	}
	if ls, _, err := c.Leases(ctx, controller.QueryOptions{}); err == nil {
		for _, l := range ls {
			if l.Name == scheduler.LeaseName && l.Host == victimID {
				held = append(held, "scheduler lease")
			}
		}
	}
	hosts, meta, err := c.Hosts(ctx, controller.QueryOptions{})
	if err != nil {
		b.Fatal(err)
	}
	failed := make(chan time.Time, 1)
	go func() {
		index := meta.Index
		for ctx.Err() == nil {
			hosts, meta, err = c.Hosts(ctx, controller.QueryOptions{Index: index, Wait: time.Minute})
			if err != nil {
				continue
			}
			index = meta.Index
			for _, h := range hosts {
				if h.ID == victimID && h.Status == controller.HostFailed {
					failed <- time.Now()
					return
				}
			}
		}
	}()
	placed := make(chan time.Time, 1)
	go func() {
		var index uint64
		for ctx.Err() == nil {
			ps, meta, err := c.Placements(ctx, controller.QueryOptions{Index: index, Wait: time.Minute})
			if err != nil {
				continue
			}
			n := 0
			for _, pl := range ps {
				if pl.Formation == "web" && pl.Host != victimID {
					n++
				}
			}
			if n == 2 {
				placed <- time.Now()
				return
			}
			index = meta.Index
		}
	}()
	healthy2 := make(chan time.Time, 1)
	go func() {
		var index uint64
		for ctx.Err() == nil {
			is, meta, err := c.Instances(ctx, controller.QueryOptions{Index: index, Wait: time.Minute})
			if err != nil {
				continue
			}
			n := 0
			for _, in := range is {
				if in.Service == "web" && in.Host != victimID && in.Healthy {
					n++
				}
			}
			if n == 2 {
				healthy2 <- time.Now()
				return
			}
			index = meta.Index
		}
	}()
	killed := time.Now()
	p.vms[victim].Kill()
	<-p.vms[victim].Exited()
	tFailed, tPlaced, tHealthy := <-failed, <-placed, <-healthy2
	p.healthy(ctx, "after the kill", p.runsOnce(ctx, 2))
	status := time.Since(killed)
	total := tHealthy.Sub(killed)
	fmt.Printf("bench platform-failover: plinth=%.1fs target=8s ratio=%.2f (detect %s, decide %s, start %s; plinth status healthy at %.1fs; the victim held: %s)\n",
		total.Seconds(), total.Seconds()/8,
		share(tFailed.Sub(killed), total), share(tPlaced.Sub(tFailed), total), share(tHealthy.Sub(tPlaced), total), status.Seconds(),
		cmp.Or(strings.Join(held, ", "), "a web instance only"))
}

// share formats a phase and its share of the whole.
func share(d, whole time.Duration) string {
	return fmt.Sprintf("%.1fs %.0f%%", d.Seconds(), 100*d.Seconds()/whole.Seconds())
}

// BenchmarkDeploy: a 20 MB image pushed to a VM's registry and deployed
// all at once to two web instances on three VMs, until both answer
// through a router,
// against the floor: the same archive imported into two VMs through
// their host APIs and a job started on each, until it runs. Each side
// has an image of its own, new to every host.
func BenchmarkDeploy(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	p := newPlatformVMs(b, 3)
	p.boot(ctx)
	p.healthy(ctx, "power-on", nil)
	dir := b.TempDir()
	noise := func(n int) imagestore.File {
		data := make([]byte, 14<<20)
		rand.Read(data)
		return imagestore.File{Name: fmt.Sprintf("noise-%d", n), Data: data, Mode: 0o644}
	}
	if _, err := p.controller(0).PutApp(ctx, controller.App{Name: "demo", Scale: map[string]int{"web": 2}}, new(uint64)); err != nil {
		b.Fatal(err)
	}

	archive := appArchive(b, dir, noise(1))
	start := time.Now()
	digest := p.pushApp(ctx, 0, archive, "bench")
	pushed := time.Since(start)
	d := p.deployRelease(ctx, digest, controller.StrategyAllAtOnce)
	if _, err := p.controller(0).AddRoute(ctx, controller.Route{Type: controller.RouteHTTP, Service: "demo", Domain: "demo.test"}); err != nil && !controller.IsConflict(err) {
		b.Fatal(err)
	}
	p.appServes(ctx, "bench")
	plinth := time.Since(start)

	floorArchive := appArchive(b, dir, noise(2))
	start = time.Now()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, hc := range p.hosts[1:] {
		wg.Go(func() {
			f, err := os.Open(floorArchive)
			if err != nil {
				errs[i] = err
				return
			}
			defer f.Close()
			imgs, err := hc.ImportImage(ctx, f)
			if err != nil {
				errs[i] = err
				return
			}
			_, errs[i] = hc.CreateJob(ctx, job.Spec{ID: "floor", Image: imgs[0].ID, Network: job.NetworkBridge})
		})
	}
	wg.Wait()
	floor := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		b.Fatal(err)
	}
	var steps []string
	prev := d.Started
	for _, s := range d.Log {
		steps = append(steps, fmt.Sprintf("%.1fs %q", s.Time.Sub(prev).Seconds(), s.Text))
		prev = s.Time
	}
	fmt.Printf("bench deploy-vm: plinth=%.1fs floor=%.1fs ratio=%.2f (a 20 MB image to 2 instances on 3 VMs: push %.1fs, deploy %.1fs, routed %.1fs; floor: import into 2 VMs and the jobs started)\n",
		plinth.Seconds(), floor.Seconds(), plinth.Seconds()/floor.Seconds(), pushed.Seconds(), d.Ended.Sub(d.Started).Seconds(), (plinth - pushed - d.Ended.Sub(d.Started)).Seconds())
	fmt.Printf("bench deploy-vm phases: %s\n", strings.Join(steps, "; "))
}
