package host

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/plinth-os/plinth/host/bundle"
)

// BenchmarkGossip measures, for 5, 20 and 100 members on loopback (one
// process, real encrypted Serf), how long a cluster takes to converge
// after every member joins the first, and how long until every survivor
// has declared a silently stopped member failed. The baseline is the same
// code with memberlist's LAN defaults (what Serf uses unless told
// otherwise), measured in the same run; the order alternates by round.
//
//	bench gossip-detect-20: plinth=1.70s serf-lan=6.10s ratio=0.28
func BenchmarkGossip(b *testing.B) {
	const rounds = 3
	key, err := bundle.Create("bench")
	if err != nil {
		b.Fatal(err)
	}
	configs := []struct {
		name   string
		gossip Gossip
	}{{"plinth", FastGossip()}, {"serf-lan", lanDefaults()}}
	for range b.N {
		for _, n := range []int{5, 20, 100} {
			join := map[string][]time.Duration{}
			detect := map[string][]time.Duration{}
			for r := range rounds {
				order := slices.Clone(configs)
				if r%2 == 1 {
					slices.Reverse(order)
				}
				for _, c := range order {
					j, d, err := gossipRound(b, n, c.gossip, key.SerfKey)
					if err != nil {
						b.Fatalf("%s, %d members: %v", c.name, n, err)
					}
					b.Logf("round %d %s n=%d: join %.2fs detect %.2fs", r+1, c.name, n, j.Seconds(), d.Seconds())
					join[c.name] = append(join[c.name], j)
					detect[c.name] = append(detect[c.name], d)
				}
			}
			for _, fig := range []struct {
				name string
				vals map[string][]time.Duration
			}{{"join", join}, {"detect", detect}} {
				p, s := median(fig.vals["plinth"]), median(fig.vals["serf-lan"])
				fmt.Printf("bench gossip-%s-%d: plinth=%.2fs serf-lan=%.2fs ratio=%.2f\n",
					fig.name, n, p.Seconds(), s.Seconds(), p.Seconds()/s.Seconds())
			}
		}
	}
}

// lanDefaults are memberlist's LAN timings, which Serf uses by default.
func lanDefaults() Gossip {
	ml := memberlist.DefaultLANConfig()
	g := FastGossip()
	g.ProbeInterval, g.ProbeTimeout, g.GossipInterval = ml.ProbeInterval, ml.ProbeTimeout, ml.GossipInterval
	g.SuspicionMult, g.SuspicionMaxTimeoutMult, g.TCPTimeout = ml.SuspicionMult, ml.SuspicionMaxTimeoutMult, ml.TCPTimeout
	return g
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// gossipRound starts n members, all joining the first at once, and
// returns the time until every member has seen every other join, then
// stops one member without leaving and returns the time until every other
// member has reported it failed.
func gossipRound(b *testing.B, n int, g Gossip, key []byte) (join, detect time.Duration, err error) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()

	cfg := DefaultConfig()
	cfg.BindAddr, cfg.Advertise, cfg.GossipPort, cfg.APIPort = "127.0.0.1", "127.0.0.1", 0, 0
	cfg.Gossip = g
	lo := netip.MustParseAddr("127.0.0.1")
	members := make([]*membership, n)
	seen := make([]map[string]bool, n)
	allJoined := make(chan struct{}, n)
	failed := make(chan struct{}, n)
	var victim string
	var victimMu sync.Mutex
	start := time.Now()
	for i := range members {
		c := cfg
		c.StateDir = b.TempDir()
		if i > 0 {
			c.Join = []string{members[0].Local().Addr}
		}
		m := newMembership(c, NewNodeID(), fmt.Sprintf("m%d", i), key, slog.New(slog.DiscardHandler))
		if err := m.start(lo); err != nil {
			return 0, 0, err
		}
		members[i], seen[i] = m, map[string]bool{}
		events, _ := m.subscribe()
		wg.Go(func() {
			for e := range events {
				switch e.Type {
				case "member-join":
					if !seen[i][e.Member.ID] {
						if seen[i][e.Member.ID] = true; len(seen[i]) == n {
							allJoined <- struct{}{}
						}
					}
				case "member-failed":
					victimMu.Lock()
					v := victim
					victimMu.Unlock()
					if e.Member.ID == v {
						failed <- struct{}{}
					}
				}
			}
		})
		wg.Go(func() { m.run(ctx) })
	}
	timeout := time.After(60 * time.Second)
	for range n {
		select {
		case <-allJoined:
		case <-timeout:
			return 0, 0, fmt.Errorf("members did not all see each other within 60s")
		}
	}
	join = time.Since(start)

	last := members[n-1]
	victimMu.Lock()
	victim = last.id
	victimMu.Unlock()
	stopped := time.Now()
	last.current().Shutdown()
	for range n - 1 {
		select {
		case <-failed:
		case <-timeout:
			return 0, 0, fmt.Errorf("not every member reported the stopped one failed within 60s")
		}
	}
	return join, time.Since(stopped), nil
}
