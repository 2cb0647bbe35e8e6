package controller_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/plinth-os/plinth/internal/platformtest"
	"github.com/plinth-os/plinth/internal/testwait"
	"github.com/plinth-os/plinth/services/controller"
)

// The tests in this file run the controller as it runs on machines: a job
// of real hostd processes in network namespaces (internal/platformtest).

func TestMain(m *testing.M) { platformtest.Main(m) }

// writeLoop writes counter settings for d, one at a time, calling during
// once after the first tenth, and returns the acknowledged values, the
// highest index acknowledged, and the longest time without an
// acknowledgement.
func writeLoop(c *controller.Client, prefix string, d time.Duration, during func()) (acked []int, last uint64, gap time.Duration) {
	start := time.Now()
	called := false
	var lastAck time.Time
	for i := 0; time.Since(start) < d && i < 100000; i++ {
		if !called && time.Since(start) > d/10 {
			during()
			called = true
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		s, err := c.PutSetting(ctx, fmt.Sprintf("%s-%06d", prefix, i), strconv.Itoa(i), nil)
		cancel()
		if err != nil {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		now := time.Now()
		if !lastAck.IsZero() {
			gap = max(gap, now.Sub(lastAck))
		}
		acked, last, lastAck = append(acked, i), max(last, s.ModifyIndex), now
	}
	return acked, last, gap
}

// checkAcked fails unless every acknowledged counter value is stored.
func checkAcked(t *testing.T, c *controller.Client, prefix string, acked []int, last uint64) {
	t.Helper()
	settings, _, err := c.Settings(testwait.Ctx(t, 15*time.Second), controller.QueryOptions{Index: last - 1, Wait: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, s := range settings {
		have[s.Key] = true
	}
	lost := 0
	for _, i := range acked {
		if !have[fmt.Sprintf("%s-%06d", prefix, i)] {
			lost++
		}
	}
	if lost > 0 || len(acked) == 0 {
		t.Fatalf("%d of %d acknowledged writes lost", lost, len(acked))
	}
}

func TestControllerJobsSurviveKillsRestartsAndMoves(t *testing.T) {
	p := platformtest.New(t, "plct", "10.78.0", 3)
	ctx := func(d time.Duration) context.Context { return testwait.Ctx(t, d) }
	for _, h := range p.Hosts {
		p.StartController(h)
	}
	st := p.Healthy(3, 90*time.Second)
	t.Logf("3 voters, leader %s", st.Leader)

	// SIGKILL the leader's controller while a client writes: a new
	// leader within seconds, and no acknowledged write lost.
	old := p.ByID(st.Leader)
	var killed time.Time
	acked, last, gap := writeLoop(p.Controllers(), "kill", 8*time.Second, func() {
		if err := p.HostClient(old).SignalJob(ctx(5*time.Second), old.ControllerJob, "KILL"); err != nil {
			t.Fatal(err)
		}
		killed = time.Now()
	})
	checkAcked(t, p.Controllers(), "kill", acked, last)
	if gap > 10*time.Second {
		t.Errorf("writes stopped for %v after the leader was killed", gap)
	}
	st = p.Healthy(3, 60*time.Second)
	t.Logf("SIGKILL of the leader's controller: %d writes acknowledged, none for %.1fs at most; leader now %s; all 3 voters healthy %.1fs after the kill", len(acked), gap.Seconds(), st.Leader, time.Since(killed).Seconds())

	// A follower's host loses power: writes go on; it comes back and is a
	// voter again.
	var follower *platformtest.Host
	var others []*platformtest.Host
	for _, h := range p.Hosts {
		if h.ID != st.Leader && follower == nil {
			follower = h
		} else {
			others = append(others, h)
		}
	}
	p.PowerCut(follower)
	for i := range 5 {
		if _, err := p.Controllers(others...).PutSetting(ctx(10*time.Second), fmt.Sprintf("follower-down-%d", i), "x", nil); err != nil {
			t.Fatalf("write %d with a follower's host down: %v", i, err)
		}
	}
	p.PowerOn(follower)
	st = p.Healthy(3, 60*time.Second)

	// A host gets a new address: it stays the same voter.
	var mover *platformtest.Host
	for _, h := range p.Hosts {
		if h.ID != st.Leader {
			mover = h
		}
	}
	p.Seg.MoveHost(mover.NS, 50)
	testwait.For(t, "the moved host's voter at its new address", 60*time.Second, func() error {
		s, err := p.Controllers().Status(ctx(5 * time.Second))
		if err != nil {
			return err
		}
		for _, v := range s.Voters {
			if v.ID == mover.ID {
				if !strings.HasPrefix(v.API, mover.NS.Addr+":") || !s.Healthy() || len(s.Voters) != 3 {
					return fmt.Errorf("voter %+v", v)
				}
				return nil
			}
		}
		return fmt.Errorf("%s is not a voter: %+v", mover.ID, s.Voters)
	})
	moved, err := p.Controllers().PutSetting(ctx(10*time.Second), "after-move", "x", nil)
	if err != nil {
		t.Fatal(err)
	}

	// Every host loses power at once and comes back: same state, a leader
	// elected with no help.
	before, _, err := p.Controllers().Settings(ctx(10*time.Second), controller.QueryOptions{Index: moved.ModifyIndex - 1, Wait: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range p.Hosts {
		p.PowerCut(h)
	}
	for _, h := range p.Hosts {
		p.PowerOn(h)
	}
	st = p.Healthy(3, 90*time.Second)
	var newest uint64
	for _, s := range before {
		newest = max(newest, s.ModifyIndex)
	}
	// Read once the restarted controller applied its log that far.
	after, _, err := p.Controllers().Settings(ctx(30*time.Second), controller.QueryOptions{Index: newest - 1, Wait: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("after a cold start: %d settings, before %d", len(after), len(before))
	}
	t.Logf("cold start: leader %s, %d settings intact", st.Leader, len(after))
}
