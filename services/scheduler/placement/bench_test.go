package placement

import (
	"fmt"
	"runtime"
	"testing"
	"time"
)

// The benchmarks time one Plan for a cluster of 1,000 hosts and
// 10,000 instances, and check the decision before they report it:
//
//	go test -run '^$' -bench . -benchtime 1x ./services/scheduler/placement/
//
// Each prints one line in the project's bench format, against the
// target the scheduler's loop can afford.

// BenchmarkPlace places every instance of an empty cluster.
func BenchmarkPlace(b *testing.B) {
	formations, hosts := benchCluster()
	runtime.GC() // the setup's garbage is not the plan's to collect
	var d Decision
	for b.Loop() {
		d = Plan(formations, hosts, nil)
	}
	if err := checkAllPlaced(d, formations, hosts, nil); err != nil {
		b.Fatal(err)
	}
	took := b.Elapsed() / time.Duration(b.N)
	fmt.Printf("bench scheduler-place: plinth=%.3fs target=1s ratio=%.3f\n", took.Seconds(), took.Seconds()/1)
}

// BenchmarkReconcile starts from the placements BenchmarkPlace's plan
// made, all healthy, and fails 100 hosts: their placements must go and
// every count-formation instance among them come back elsewhere.
func BenchmarkReconcile(b *testing.B) {
	formations, hosts := benchCluster()
	var placements []Placement
	for _, p := range Plan(formations, hosts, nil).Place {
		p.Healthy = true
		placements = append(placements, p)
	}
	failed := map[string]bool{}
	for i := range hosts {
		if i%10 == 5 {
			hosts[i].Status = Failed
			failed[hosts[i].ID] = true
		}
	}

	runtime.GC()
	var d Decision
	for b.Loop() {
		d = Plan(formations, hosts, placements)
	}
	if err := checkAllPlaced(d, formations, hosts, placements); err != nil {
		b.Fatal(err)
	}
	omni := map[string]bool{}
	for _, f := range formations {
		omni[f.Name] = f.Omni
	}
	lost, replaced := map[string]bool{}, 0
	for _, p := range placements {
		if failed[p.Host] {
			lost[p.Key()] = true
			if !omni[p.Formation] {
				replaced++
			}
		}
	}
	for _, r := range d.Remove {
		if !lost[r.Placement.Key()] {
			b.Fatalf("removed %s, which is not on a failed host: %s", r.Placement.Key(), r.Reason)
		}
	}
	if len(d.Remove) != len(lost) || len(d.Place) != replaced {
		b.Fatalf("removed %d and placed %d; want the %d placements on failed hosts removed and %d of them replaced",
			len(d.Remove), len(d.Place), len(lost), replaced)
	}
	took := b.Elapsed() / time.Duration(b.N)
	fmt.Printf("bench scheduler-reconcile: plinth=%.1fms target=100ms ratio=%.3f\n",
		float64(took)/float64(time.Millisecond), took.Seconds()/0.1)
}

// benchCluster is 1,000 hosts, a tenth of them database hosts with more
// memory, in four zones, a third with SSDs; one omni formation and 90
// count formations of 100 instances each, a third of them unconstrained
// and the rest bound to a zone, the database hosts, SSDs or a zone's
// SSDs. Memory is what runs out first on the narrowest of those.
func benchCluster() ([]Formation, []Host) {
	var hosts []Host
	for i := range 1000 {
		h := Host{
			ID:          fmt.Sprintf("node-%04d", i),
			Roles:       []string{"worker"},
			Tags:        map[string]string{"zone": fmt.Sprint("z", i%4), "disk": "hdd"},
			Status:      Alive,
			MemoryBytes: 12 * gib,
			CPUs:        16,
		}
		if i%3 == 0 {
			h.Tags["disk"] = "ssd"
			h.MemoryBytes = 24 * gib
		}
		if i%10 == 0 {
			h.Roles = append(h.Roles, "db")
			h.MemoryBytes, h.CPUs = 48*gib, 32
		}
		hosts = append(hosts, h)
	}
	formations := []Formation{{Name: "agent", Job: "agent", Omni: true, MemoryBytes: 256 << 20, CPUs: 0.1}}
	for i := range 90 {
		f := Formation{
			Name:        fmt.Sprintf("app-%02d", i),
			Job:         fmt.Sprintf("app-%02d", i),
			Count:       100,
			MemoryBytes: 256 << 20 << (i % 4),
			CPUs:        0.25,
		}
		zone := fmt.Sprint("z", i%4)
		switch i % 6 {
		case 2:
			f.Constraints = map[string]string{"zone": zone}
		case 3:
			f.Constraints = map[string]string{"role": "db"}
		case 4:
			f.Constraints = map[string]string{"disk": "ssd"}
		case 5:
			f.Constraints = map[string]string{"zone": zone, "disk": "ssd"}
		}
		formations = append(formations, f)
	}
	return formations, hosts
}

// checkAllPlaced checks that d leaves every formation at full strength
// within its hosts' limits.
func checkAllPlaced(d Decision, formations []Formation, hosts []Host, placements []Placement) error {
	if len(d.Shortfalls) > 0 {
		return fmt.Errorf("%d formations fall short, %s first: %s", len(d.Shortfalls), d.Shortfalls[0].Formation, d.Shortfalls[0].Reason)
	}
	if err := checkPlaced(d, formations, hosts, placements); err != nil {
		return err
	}
	removed := map[string]bool{}
	for _, r := range d.Remove {
		removed[r.Placement.Key()] = true
	}
	count := map[string]int{}
	for _, p := range append(placements, d.Place...) {
		if !removed[p.Key()] {
			count[p.Formation]++
		}
	}
	alive := 0
	for _, h := range hosts {
		if h.Status == Alive {
			alive++
		}
	}
	for _, f := range formations {
		want := f.Count
		if f.Omni {
			want = alive
		}
		if count[f.Name] != want {
			return fmt.Errorf("formation %s has %d instances, want %d", f.Name, count[f.Name], want)
		}
	}
	return nil
}
