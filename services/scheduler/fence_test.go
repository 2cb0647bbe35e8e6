package scheduler_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/internal/platformtest"
	"github.com/plinth-os/plinth/internal/testwait"
	"github.com/plinth-os/plinth/services/controller"
	"github.com/plinth-os/plinth/services/scheduler"
)

// partition stands between a scheduler and the controller: once cut,
// the scheduler's lease renewals fail, and its schedule writes are held
// until the test lets them through, late.
type partition struct {
	scheduler.Controller
	mu      sync.Mutex
	cut     bool
	held    chan controller.Schedule
	release chan struct{}
	result  chan error
}

func (p *partition) Lease(ctx context.Context, name, holder, hostID string, ttl time.Duration) (controller.Lease, error) {
	p.mu.Lock()
	cut := p.cut
	p.mu.Unlock()
	if cut {
		return controller.Lease{}, errors.New("partitioned")
	}
	return p.Controller.Lease(ctx, name, holder, hostID, ttl)
}

func (p *partition) Schedule(ctx context.Context, s controller.Schedule) (uint64, error) {
	p.mu.Lock()
	cut := p.cut
	p.mu.Unlock()
	if !cut {
		return p.Controller.Schedule(ctx, s)
	}
	p.held <- s
	<-p.release
	// The write arrives late, after the scheduler lost the lease; its
	// own context may be over by now, the network's delivery is not.
	index, err := p.Controller.Schedule(context.Background(), s)
	p.result <- err
	return index, err
}

// TestDeposedSchedulersWriteIsRefused holds the active scheduler's
// decision (and its renewals) until another scheduler has taken over
// and acted, then delivers it: the controller refuses it, and the
// formation runs once.
func TestDeposedSchedulersWriteIsRefused(t *testing.T) {
	p := platformtest.New(t, "plfe", "10.77.0", 1)
	h := p.Hosts[0]
	p.StartController(h)
	p.Healthy(1, 60*time.Second)
	cl := p.Controllers()
	dial := func(addr string) scheduler.HostAPI {
		return host.NewClientTransport(addr, &http.Transport{TLSClientConfig: p.Creds.TLS(), DialContext: p.Seg.DialContext(p.Client)})
	}
	start := func(name string, c scheduler.Controller) context.CancelFunc {
		cfg := scheduler.DefaultConfig()
		cfg.Host, cfg.Controller, cfg.Dial = p.HostClient(h), c, dial
		cfg.LeaseTTL, cfg.Resync, cfg.Retry = 2*time.Second, 500*time.Millisecond, 200*time.Millisecond
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil)).With("scheduler", name)
		s, err := scheduler.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { s.Run(ctx); close(done) }()
		return func() { cancel(); <-done }
	}
	lease := func() controller.Lease {
		ls, _, err := cl.Leases(testwait.Ctx(t, 5*time.Second), controller.QueryOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range ls {
			if l.Name == scheduler.LeaseName {
				return l
			}
		}
		return controller.Lease{}
	}

	a := &partition{Controller: cl, held: make(chan controller.Schedule), release: make(chan struct{}), result: make(chan error, 1)}
	stopA := start("a", a)
	defer stopA()
	var first controller.Lease
	testwait.For(t, "scheduler a active", 20*time.Second, func() error {
		if first = lease(); first.Holder == "" {
			return errors.New("no holder")
		}
		return nil
	})

	a.mu.Lock()
	a.cut = true
	a.mu.Unlock()
	f := controller.Formation{Name: "fenced", Count: 1, Job: job.Spec{Rootfs: job.SystemRootfs, Cmd: []string{"/bin/busybox", "sleep", "3600"}}}
	if _, err := cl.PutFormation(testwait.Ctx(t, 5*time.Second), f, nil); err != nil {
		t.Fatal(err)
	}
	var late controller.Schedule
	select {
	case late = <-a.held:
	case <-time.After(20 * time.Second):
		t.Fatal("scheduler a made no decision for the new formation")
	}
	if len(late.Place) != 1 || late.Place[0].Formation != "fenced" || late.Fence.Token != first.Token {
		t.Fatalf("a's held decision: %+v, want one placement of fenced under token %d", late, first.Token)
	}

	stopB := start("b", cl)
	defer stopB()
	testwait.For(t, "scheduler b active and the formation placed", 30*time.Second, func() error {
		if l := lease(); l.Token == first.Token {
			return errors.New("a still holds the lease")
		}
		if n := count(formationJobs(t, p, "fenced")); n != 1 {
			return errors.New("fenced is not running")
		}
		return nil
	})

	close(a.release)
	if err := <-a.result; !controller.IsConflict(err) {
		t.Fatalf("a's late write: %v, want a conflict (fenced)", err)
	}
	ps, _, err := cl.Placements(testwait.Ctx(t, 5*time.Second), controller.QueryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, pl := range ps {
		if pl.Formation == "fenced" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d placements of fenced, want 1: %+v", n, ps)
	}
	// Let a scheduling round pass: still one job.
	time.Sleep(time.Second)
	if jobs := formationJobs(t, p, "fenced"); count(jobs) != 1 {
		t.Fatalf("fenced runs %v, want one job", jobs)
	}
}
