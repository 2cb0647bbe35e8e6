package deployer_test

import (
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host/imagestore"
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/internal/platformtest"
	"github.com/plinth-os/plinth/internal/testwait"
	"github.com/plinth-os/plinth/services/controller"
)

// BenchmarkDeploy: `plinth deploy --strategy all-at-once` of a 20 MB
// image to three instances (two web, one echo) on three netns hosts,
// from the command to both web instances answering through a router,
// against the floor: the same archive imported into three hosts through
// their APIs and a job started on each, until each answers. Each round
// deploys a new image (its layers new to every host), plinth and the
// floor alternating.
func BenchmarkDeploy(b *testing.B) {
	p := platformtest.New(b, "plbd", "10.72.0", 3, platformtest.WithContainerNetwork())
	p.Bootstrap(3 * time.Minute)
	dir := b.TempDir()
	decl := filepath.Join(dir, "plinth.toml")
	quick := strings.NewReplacer(`interval = "500ms"`, `interval = "200ms"`, `timeout = "400ms"`, `timeout = "150ms"`).Replace(appTOML)
	if err := os.WriteFile(decl, []byte(quick), 0o644); err != nil {
		b.Fatal(err)
	}
	if out, err := p.CLI(testwait.Ctx(b, 30*time.Second), "apps", "create", "demo"); err != nil {
		b.Fatal(err, out)
	}
	// The first deploy and apply make the app, its routes and its scale
	// (two web instances); the rounds deploy new images to it.
	if out, err := p.CLI(testwait.Ctx(b, 3*time.Minute), "deploy", "-a", "demo", "--image", bigImage(b, dir, 0), "--file", decl); err != nil {
		b.Fatal(err, out)
	}
	if out, err := p.CLI(testwait.Ctx(b, 3*time.Minute), "apply", "-f", decl); err != nil {
		b.Fatal(err, out)
	}
	const rounds = 3
	var plinth, floor []time.Duration
	var phases []string
	for round := 1; round <= rounds; round++ {
		archive := bigImage(b, dir, 2*round-1)
		start := time.Now()
		out, err := p.CLI(testwait.Ctx(b, 5*time.Minute), "deploy", "-a", "demo", "--image", archive, "--file", decl, "--strategy", "all-at-once")
		if err != nil {
			b.Fatal(err, out)
		}
		name := fmt.Sprintf("round%d", round)
		waitServing(b, p, name)
		plinth = append(plinth, time.Since(start))
		phases = append(phases, deployPhases(b, p, start))
		floor = append(floor, byHand(b, p, bigImage(b, dir, 2*round), round))
	}
	slices.Sort(plinth)
	slices.Sort(floor)
	pm, fm := plinth[rounds/2], floor[rounds/2]
	fmt.Printf("bench deploy-netns: plinth=%.2fs floor=%.2fs ratio=%.2f (medians of %d rounds: a 20 MB image to 3 instances on 3 netns hosts, all at once; floor: import and start by hand)\n",
		pm.Seconds(), fm.Seconds(), pm.Seconds()/fm.Seconds(), rounds)
	for i, ph := range phases {
		fmt.Printf("bench deploy-netns phases round %d: %s\n", i+1, ph)
	}
}

// bigImage writes the test app's image with 14 MB of random bytes (so
// the layer is about 20 MB and new to every host), named by n so that
// the answers tell rounds apart.
func bigImage(b testing.TB, dir string, n int) string {
	noise := make([]byte, 14<<20)
	rand.Read(noise)
	path := appImageIn(b, dir, fmt.Sprintf("app-%d.tar", n),
		imagestore.File{Name: "noise", Data: noise, Mode: 0o644},
		imagestore.File{Name: "round", Data: fmt.Appendf(nil, "%d\n", n), Mode: 0o644})
	return path
}

// waitServing waits until demo.test answers from two instances through
// the first host's router, each with the new release (its image changed,
// so the instances are new).
func waitServing(b testing.TB, p *platformtest.Platform, what string) {
	seen := map[string]bool{}
	testwait.For(b, what+": both instances serving", 2*time.Minute, func() error {
		body, err := get(p, p.Hosts[0].NS.Addr)
		if err != nil {
			return err
		}
		f := strings.Fields(body)
		if len(f) < 3 {
			return fmt.Errorf("%q", body)
		}
		seen[f[2]] = true
		if len(seen) < 2 {
			return fmt.Errorf("%d instances answered", len(seen))
		}
		return nil
	})
}

// deployPhases reads the last deploy's log: the push (from start to the
// deploy's start), then each step's time from the one before.
func deployPhases(b testing.TB, p *platformtest.Platform, start time.Time) string {
	c := p.Controllers()
	ds, _, err := c.Deploys(testwait.Ctx(b, 10*time.Second), controller.QueryOptions{})
	if err != nil {
		b.Fatal(err)
	}
	last := slices.MaxFunc(ds, func(x, y controller.Deploy) int { return x.To - y.To })
	parts := []string{fmt.Sprintf("push+release %.2fs", last.Started.Sub(start).Seconds())}
	prev := last.Started
	for _, s := range last.Log {
		parts = append(parts, fmt.Sprintf("%.2fs %q", s.Time.Sub(prev).Seconds(), s.Text))
		prev = s.Time
	}
	return strings.Join(parts, "; ")
}

// byHand is the floor: the archive imported into every host through its
// API, in parallel, and a bridge job started on each, until each answers
// on its port (from its host).
func byHand(b testing.TB, p *platformtest.Platform, archive string, round int) time.Duration {
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, len(p.Hosts))
	for i, h := range p.Hosts {
		wg.Go(func() {
			hc := p.HostClient(h)
			ctx := testwait.Ctx(b, 5*time.Minute)
			f, err := os.Open(archive)
			if err != nil {
				errs[i] = err
				return
			}
			imgs, err := hc.ImportImage(ctx, f)
			f.Close()
			if err != nil {
				errs[i] = err
				return
			}
			id := fmt.Sprintf("floor-%d", round)
			j, err := hc.CreateJob(ctx, job.Spec{ID: id, Image: imgs[0].ID, Network: job.NetworkBridge,
				Cmd: []string{"/echoback", "--http", ":8080"}})
			if err != nil {
				errs[i] = err
				return
			}
			dial := p.Seg.DialContext(h.NS)
			addr := net.JoinHostPort(j.Status.IP.String(), "8080")
			for ctx.Err() == nil {
				if c, err := dial(ctx, "tcp", addr); err == nil {
					c.Close()
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
			errs[i] = fmt.Errorf("job %s on %s never answered", id, h.NS.Name)
		})
	}
	wg.Wait()
	took := time.Since(start)
	for _, err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	for _, h := range p.Hosts {
		p.HostClient(h).RemoveJob(testwait.Ctx(b, 30*time.Second), fmt.Sprintf("floor-%d", round), true)
	}
	return took
}
