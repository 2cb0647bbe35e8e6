package placement

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
)

const gib = 1 << 30

func mkHost(id string, edits ...func(*Host)) Host {
	h := Host{ID: id, Status: Alive}
	for _, e := range edits {
		e(&h)
	}
	return h
}

func roles(r ...string) func(*Host) { return func(h *Host) { h.Roles = r } }
func status(s Status) func(*Host)   { return func(h *Host) { h.Status = s } }
func memory(b int64) func(*Host)    { return func(h *Host) { h.MemoryBytes = b } }
func cpus(n float64) func(*Host)    { return func(h *Host) { h.CPUs = n } }
func cordoned(h *Host)              { h.Cordoned = true }
func draining(h *Host)              { h.Cordoned, h.Draining = true, true }

func tag(k, v string) func(*Host) {
	return func(h *Host) {
		if h.Tags == nil {
			h.Tags = map[string]string{}
		}
		h.Tags[k] = v
	}
}

// zoned is a count formation "web" constrained to the label zone.
func zoned(count int, zone string) Formation {
	return Formation{Name: "web", Job: "web", Count: count, Constraints: map[string]string{"zone": zone}}
}

// running is a healthy placement of formation at key "<host>/<job>".
func running(formation, key string) Placement {
	host, job, _ := strings.Cut(key, "/")
	return Placement{Formation: formation, Host: host, Job: job, Healthy: true}
}

func reserving(p Placement, mem int64) Placement { p.MemoryBytes = mem; return p }

func replacing(p Placement, old string, healthy bool) Placement {
	p.Replaces, p.Healthy = old, healthy
	return p
}

// lines renders d one line per item: "+ formation key [replaces key]",
// "- key: reason", "! formation missing n: reason".
func lines(d Decision) []string {
	var out []string
	for _, p := range d.Place {
		l := "+ " + p.Formation + " " + p.Key()
		if p.Replaces != "" {
			l += " replaces " + p.Replaces
		}
		out = append(out, l)
	}
	for _, r := range d.Remove {
		out = append(out, "- "+r.Placement.Key()+": "+r.Reason)
	}
	for _, s := range d.Shortfalls {
		out = append(out, fmt.Sprintf("! %s missing %d: %s", s.Formation, s.Missing, s.Reason))
	}
	return out
}

// plan runs Plan and checks what holds for every decision: new
// placements are unhealthy, reserve what their formation asks, and land
// on open hosts that match and have room.
func plan(t testing.TB, formations []Formation, hosts []Host, placements []Placement) Decision {
	t.Helper()
	d := Plan(formations, hosts, placements)
	if err := checkPlaced(d, formations, hosts, placements); err != nil {
		t.Fatal(err)
	}
	return d
}

func checkPlaced(d Decision, formations []Formation, hosts []Host, placements []Placement) error {
	forms := map[string]Formation{}
	for _, f := range formations {
		forms[f.Name] = f
	}
	byID := map[string]Host{}
	for _, h := range hosts {
		byID[h.ID] = h
	}
	mem, cpu := map[string]int64{}, map[string]int64{}
	for _, p := range append(slices.Clone(placements), d.Place...) {
		mem[p.Host] += p.MemoryBytes
		cpu[p.Host] += milli(p.CPUs)
	}
	for _, p := range d.Place {
		f, h := forms[p.Formation], byID[p.Host]
		switch {
		case p.Healthy:
			return fmt.Errorf("new placement %s is healthy", p.Key())
		case p.MemoryBytes != f.MemoryBytes || p.CPUs != f.CPUs:
			return fmt.Errorf("%s reserves %d bytes and %v CPUs, its formation asks %d and %v", p.Key(), p.MemoryBytes, p.CPUs, f.MemoryBytes, f.CPUs)
		case h.Status != Alive || h.Cordoned || h.Draining:
			return fmt.Errorf("%s is on a host that takes no new placements: %+v", p.Key(), h)
		case !(&host{Host: h}).matches(f.Constraints):
			return fmt.Errorf("%s is on a host that does not match %v", p.Key(), f.Constraints)
		case h.MemoryBytes > 0 && mem[h.ID] > h.MemoryBytes:
			return fmt.Errorf("host %s has %d bytes reserved of %d", h.ID, mem[h.ID], h.MemoryBytes)
		case h.CPUs > 0 && cpu[h.ID] > milli(h.CPUs):
			return fmt.Errorf("host %s has %d milli-CPUs reserved of %v CPUs", h.ID, cpu[h.ID], h.CPUs)
		}
	}
	return nil
}

func TestPlan(t *testing.T) {
	web := func(count int) Formation { return Formation{Name: "web", Job: "web", Count: count} }
	agent := Formation{Name: "agent", Job: "agent", Omni: true}
	db := Formation{Name: "db", Job: "db", Count: 1, Constraints: map[string]string{"role": "db"}}

	for _, tc := range []struct {
		name       string
		formations []Formation
		hosts      []Host
		placements []Placement
		want       []string
	}{
		{
			name:       "spread: each instance on the host with the fewest, ties by ID",
			formations: []Formation{web(5)},
			hosts:      []Host{mkHost("n1"), mkHost("n2"), mkHost("n3")},
			want: []string{
				"+ web n1/web-1", "+ web n1/web-4", "+ web n2/web-2", "+ web n2/web-5", "+ web n3/web-3",
			},
		},
		{
			name: "spread counts running instances; ties go to the most memory free",
			formations: []Formation{
				{Name: "web", Job: "web", Count: 3, MemoryBytes: gib},
				{Name: "cache", Job: "cache", Count: 1, MemoryBytes: 4 * gib},
			},
			hosts: []Host{mkHost("n1", memory(8*gib)), mkHost("n2", memory(8*gib)), mkHost("n3", memory(8*gib))},
			placements: []Placement{
				reserving(running("web", "n1/web-1"), gib),
				reserving(running("cache", "n2/cache-1"), 4*gib),
			},
			want: []string{"+ web n2/web-3", "+ web n3/web-2"},
		},
		{
			name:       "constraint on role matches any of the host's roles",
			formations: []Formation{{Name: "db", Job: "db", Count: 3, Constraints: map[string]string{"role": "db"}}},
			hosts:      []Host{mkHost("n1", roles("web")), mkHost("n2", roles("web", "db")), mkHost("n3", roles("db"))},
			want:       []string{"+ db n2/db-1", "+ db n2/db-3", "+ db n3/db-2"},
		},
		{
			name:       "constraint on a tag",
			formations: []Formation{{Name: "web", Job: "web", Count: 2, Constraints: map[string]string{"zone": "b"}}},
			hosts:      []Host{mkHost("n1", tag("zone", "a")), mkHost("n2", tag("zone", "b")), mkHost("n3", tag("zone", "b")), mkHost("n4")},
			want:       []string{"+ web n2/web-1", "+ web n3/web-2"},
		},
		{
			name:       "every constraint must match",
			formations: []Formation{{Name: "db", Job: "db", Count: 2, Constraints: map[string]string{"role": "db", "disk": "ssd"}}},
			hosts: []Host{
				mkHost("n1", roles("db"), tag("disk", "ssd")),
				mkHost("n2", roles("db"), tag("disk", "hdd")),
				mkHost("n3", roles("web"), tag("disk", "ssd")),
			},
			want: []string{"+ db n1/db-1", "+ db n1/db-2"},
		},
		{
			name: "placements decided earlier in the same plan take room",
			formations: []Formation{
				{Name: "a-cache", Job: "cache", Count: 2, MemoryBytes: 3 * gib},
				{Name: "b-web", Job: "web", Count: 2, MemoryBytes: 2 * gib},
			},
			hosts: []Host{mkHost("n1", memory(5*gib)), mkHost("n2", memory(4*gib))},
			want: []string{
				"+ a-cache n1/cache-1", "+ b-web n1/web-1", "+ a-cache n2/cache-2",
				"! b-web missing 1: needs 2.0 GiB of memory; the most free on an eligible host is 1.0 GiB (n2)",
			},
		},
		{
			name:       "existing placements take room; unknown memory never limits",
			formations: []Formation{{Name: "web", Job: "web", Count: 3, MemoryBytes: gib}, db},
			hosts:      []Host{mkHost("n1", roles("db"), memory(2*gib)), mkHost("n2")},
			placements: []Placement{reserving(running("db", "n1/db-1"), 2*gib)},
			want:       []string{"+ web n2/web-1", "+ web n2/web-2", "+ web n2/web-3"},
		},
		{
			name:       "CPUs add up exactly",
			formations: []Formation{{Name: "web", Job: "web", Count: 4, CPUs: 0.3}},
			hosts:      []Host{mkHost("n1", cpus(1))},
			want: []string{
				"+ web n1/web-1", "+ web n1/web-2", "+ web n1/web-3",
				"! web missing 1: needs 0.3 CPUs; the most free on an eligible host is 0.1 CPUs (n1)",
			},
		},
		{
			name:       "a failed host's placements go; count formations get replacements elsewhere",
			formations: []Formation{web(2), agent},
			hosts:      []Host{mkHost("n1"), mkHost("n2", status(Failed)), mkHost("n3")},
			placements: []Placement{
				running("web", "n1/web-1"), running("web", "n2/web-2"),
				running("agent", "n1/agent"), running("agent", "n2/agent"), running("agent", "n3/agent"),
			},
			want: []string{"+ web n3/web-3", "- n2/agent: host n2 failed", "- n2/web-2: host n2 failed"},
		},
		{
			name:       "a placement on an unknown host is replaced",
			formations: []Formation{web(1)},
			hosts:      []Host{mkHost("n1")},
			placements: []Placement{running("web", "n9/web-1")},
			want:       []string{"+ web n1/web-2", "- n9/web-1: host n9 is not a member of the cluster"},
		},
		{
			name:       "an unreachable host keeps its placements, which count, and gets no new one",
			formations: []Formation{web(3), agent},
			hosts:      []Host{mkHost("n1"), mkHost("n2", status(Unreachable))},
			placements: []Placement{running("web", "n1/web-2"), {Formation: "web", Host: "n2", Job: "web-1"}},
			want:       []string{"+ agent n1/agent", "+ web n1/web-3"},
		},
		{
			name:       "scale down: cordoned hosts first, then the most instances, then the highest key",
			formations: []Formation{web(4)},
			hosts:      []Host{mkHost("n1", cordoned), mkHost("n2"), mkHost("n3"), mkHost("n4")},
			placements: []Placement{
				running("web", "n1/web-1"),
				running("web", "n2/web-2"), running("web", "n2/web-3"), running("web", "n2/web-4"),
				running("web", "n3/web-5"), running("web", "n3/web-6"),
				running("web", "n4/web-7"),
			},
			want: []string{
				"- n1/web-1: formation web is scaled to 4",
				"- n2/web-4: formation web is scaled to 4",
				"- n3/web-6: formation web is scaled to 4",
			},
		},
		{
			name:       "placements of a deleted formation go",
			formations: []Formation{web(1)},
			hosts:      []Host{mkHost("n1")},
			placements: []Placement{running("web", "n1/web-1"), running("old", "n1/old-1")},
			want:       []string{"- n1/old-1: formation old was deleted"},
		},
		{
			name:       "omni: every alive matching host; cordoned, draining and unreachable ones keep theirs",
			formations: []Formation{{Name: "agent", Job: "agent", Omni: true, Constraints: map[string]string{"role": "edge"}}},
			hosts: []Host{
				mkHost("n1", roles("edge")),
				mkHost("n2", roles("edge"), cordoned),
				mkHost("n3", roles("edge"), cordoned),
				mkHost("n4"),
				mkHost("n5", roles("edge"), status(Unreachable)),
				mkHost("n6", roles("edge"), draining),
				mkHost("n7", roles("edge"), status(Unreachable)),
			},
			placements: []Placement{
				running("agent", "n2/agent"), running("agent", "n4/agent"), running("agent", "n6/agent"),
				running("agent", "n7/agent"),
			},
			want: []string{
				"+ agent n1/agent",
				"- n4/agent: host n4 no longer matches role=edge",
			},
		},
		{
			name: "omni formations are placed before count formations and report the hosts they miss",
			formations: []Formation{
				{Name: "a-web", Job: "web", Count: 1, MemoryBytes: 2 * gib},
				{Name: "agent", Job: "agent", Omni: true, MemoryBytes: 2 * gib},
			},
			hosts: []Host{mkHost("n1", memory(gib)), mkHost("n2", memory(4*gib)), mkHost("n3", memory(2*gib))},
			want: []string{
				"+ agent n2/agent", "+ a-web n2/web-1", "+ agent n3/agent",
				"! agent missing 1: needs 2.0 GiB of memory; the most free on an eligible host is 1.0 GiB (n1)",
			},
		},
		{
			name:       "job names take the smallest free n",
			formations: []Formation{web(5)},
			hosts:      []Host{mkHost("n1"), mkHost("n2")},
			placements: []Placement{running("web", "n1/web-1"), running("web", "n1/web-3"), running("web", "n1/web-x")},
			want:       []string{"+ web n2/web-2", "+ web n2/web-4"},
		},
		{
			name:       "drain: a move that fits nowhere leaves the placement and reports why",
			formations: []Formation{db},
			hosts:      []Host{mkHost("n1", roles("db"), draining), mkHost("n2", roles("web"))},
			placements: []Placement{running("db", "n1/db-1")},
			want: []string{
				"! db missing 1: cannot move n1/db-1 off draining host n1: the only alive host that matches role=db is cordoned",
			},
		},
		{
			name:       "drain: one shortfall per formation, however many moves fit nowhere",
			formations: []Formation{{Name: "db", Job: "db", Count: 2, Constraints: map[string]string{"role": "db"}}},
			hosts:      []Host{mkHost("n1", roles("db"), draining), mkHost("n2", roles("db"), draining), mkHost("n3")},
			placements: []Placement{running("db", "n1/db-1"), running("db", "n2/db-2")},
			want: []string{
				"! db missing 1: cannot move n1/db-1 off draining host n1: all 2 alive hosts that match role=db are cordoned",
			},
		},
		{
			name:       "drain: a replacement on a host that began to drain waits for its own move to finish",
			formations: []Formation{web(1)},
			hosts:      []Host{mkHost("n1", draining), mkHost("n2", draining), mkHost("n3")},
			placements: []Placement{running("web", "n1/web-1"), replacing(running("web", "n2/web-2"), "n1/web-1", false)},
		},
		{
			name:       "drain: a replacement of a replacement is an ordinary placement",
			formations: []Formation{web(1)},
			hosts:      []Host{mkHost("n1", draining), mkHost("n2", draining), mkHost("n3")},
			placements: []Placement{
				running("web", "n1/web-1"),
				replacing(running("web", "n2/web-2"), "n1/web-1", false),
				replacing(running("web", "n3/web-3"), "n2/web-2", true),
			},
			want: []string{"- n1/web-1: formation web is scaled to 1", "- n2/web-2: formation web is scaled to 1"},
		},
		{
			name:       "drain: a placement of another formation is no replacement",
			formations: []Formation{web(1), {Name: "api", Job: "api", Count: 1}},
			hosts:      []Host{mkHost("n1", draining), mkHost("n2")},
			placements: []Placement{running("web", "n1/web-1"), replacing(running("api", "n2/api-1"), "n1/web-1", true)},
			want:       []string{"+ web n2/web-2 replaces n1/web-1"},
		},
		{
			name:       "drain: a placement that names itself as replaced is ordinary",
			formations: []Formation{web(1)},
			hosts:      []Host{mkHost("n1", draining), mkHost("n2")},
			placements: []Placement{replacing(running("web", "n1/web-1"), "n1/web-1", true)},
			want:       []string{"+ web n2/web-2 replaces n1/web-1"},
		},
		{
			name:       "drain: one move at a time per draining host",
			formations: []Formation{web(2)},
			hosts:      []Host{mkHost("n1", draining), mkHost("n2", draining), mkHost("n3")},
			placements: []Placement{running("web", "n1/web-1"), running("web", "n2/web-2")},
			want:       []string{"+ web n3/web-3 replaces n1/web-1", "+ web n3/web-4 replaces n2/web-2"},
		},
		{
			name:       "drain: a move in flight holds back the host's next one",
			formations: []Formation{web(2)},
			hosts:      []Host{mkHost("n1", draining), mkHost("n2")},
			placements: []Placement{
				running("web", "n1/web-1"), running("web", "n1/web-2"),
				replacing(running("web", "n2/web-3"), "n1/web-2", false),
			},
		},
		{
			name:       "drain: a move off a host that no longer drains is over: both placements count",
			formations: []Formation{web(1)},
			hosts:      []Host{mkHost("n1"), mkHost("n2")},
			placements: []Placement{running("web", "n1/web-1"), replacing(running("web", "n2/web-2"), "n1/web-1", false)},
			want:       []string{"- n2/web-2: formation web is scaled to 1"},
		},
		{
			name:       "drain: a replacement whose old placement is gone is an ordinary placement",
			formations: []Formation{web(1)},
			hosts:      []Host{mkHost("n1", draining), mkHost("n2")},
			placements: []Placement{replacing(running("web", "n2/web-2"), "n1/web-1", false)},
		},
		{
			name:       "drain: a failed replacement is placed again",
			formations: []Formation{web(1)},
			hosts:      []Host{mkHost("n1", draining), mkHost("n2", status(Failed)), mkHost("n3")},
			placements: []Placement{running("web", "n1/web-1"), replacing(running("web", "n2/web-2"), "n1/web-1", false)},
			want:       []string{"+ web n3/web-3 replaces n1/web-1", "- n2/web-2: host n2 failed"},
		},
		{
			name:       "drain: scaling down a moving instance removes both halves of the move",
			formations: []Formation{web(1)},
			hosts:      []Host{mkHost("n1", draining), mkHost("n2"), mkHost("n3")},
			placements: []Placement{
				running("web", "n1/web-1"),
				replacing(running("web", "n2/web-2"), "n1/web-1", false),
				running("web", "n3/web-3"),
			},
			want: []string{"- n1/web-1: formation web is scaled to 1", "- n2/web-2: formation web is scaled to 1"},
		},
		{
			name:       "constraints: an instance on a host that no longer matches moves, replacement first",
			formations: []Formation{zoned(2, "b")},
			hosts:      []Host{mkHost("n1", tag("zone", "a")), mkHost("n2", tag("zone", "b")), mkHost("n3", tag("zone", "b"))},
			placements: []Placement{running("web", "n1/web-1"), running("web", "n2/web-2")},
			want:       []string{"+ web n3/web-3 replaces n1/web-1"},
		},
		{
			name:       "constraints: the old instance goes once its replacement is healthy",
			formations: []Formation{zoned(2, "b")},
			hosts:      []Host{mkHost("n1", tag("zone", "a")), mkHost("n2", tag("zone", "b")), mkHost("n3", tag("zone", "b"))},
			placements: []Placement{running("web", "n1/web-1"), running("web", "n2/web-2"), replacing(running("web", "n3/web-3"), "n1/web-1", true)},
			want:       []string{"- n1/web-1: moved off host n1, which no longer matches zone=b: replaced by n3/web-3"},
		},
		{
			name:       "constraints: one move at a time per host, each host its own",
			formations: []Formation{zoned(4, "b")},
			hosts: []Host{mkHost("n1", tag("zone", "a")), mkHost("n2", tag("zone", "a")),
				mkHost("n3", tag("zone", "b")), mkHost("n4", tag("zone", "b"))},
			placements: []Placement{running("web", "n1/web-1"), running("web", "n1/web-2"), running("web", "n2/web-3"), running("web", "n2/web-4")},
			want:       []string{"+ web n3/web-5 replaces n1/web-1", "+ web n4/web-6 replaces n2/web-3"},
		},
		{
			name:       "constraints: an instance that fits nowhere else keeps running where it is, and says why",
			formations: []Formation{zoned(1, "b")},
			hosts:      []Host{mkHost("n1", tag("zone", "a")), mkHost("n2")},
			placements: []Placement{running("web", "n1/web-1")},
			want:       []string{"! web missing 1: cannot move n1/web-1 off host n1, which no longer matches zone=b: no alive host matches zone=b"},
		},
		{
			name:       "constraints: scaling down removes the instance on a host that no longer matches first",
			formations: []Formation{zoned(1, "b")},
			hosts:      []Host{mkHost("n1", tag("zone", "a")), mkHost("n2", tag("zone", "b"))},
			placements: []Placement{running("web", "n1/web-1"), running("web", "n2/web-2")},
			want:       []string{"- n1/web-1: formation web is scaled to 1"},
		},
		{
			name:       "shortfall: no alive host matches",
			formations: []Formation{{Name: "ml", Job: "ml", Count: 2, Constraints: map[string]string{"role": "gpu"}}},
			hosts:      []Host{mkHost("n1", roles("web")), mkHost("n2", roles("gpu"), status(Failed))},
			want:       []string{"! ml missing 2: no alive host matches role=gpu"},
		},
		{
			name:       "shortfall: no host is alive",
			formations: []Formation{web(1)},
			hosts:      []Host{mkHost("n1", status(Unreachable))},
			want:       []string{"! web missing 1: no host is alive"},
		},
		{
			name:       "shortfall: every matching host is cordoned",
			formations: []Formation{{Name: "db", Job: "db", Count: 1, Constraints: map[string]string{"role": "db"}}},
			hosts:      []Host{mkHost("n1", roles("db"), cordoned), mkHost("n2", roles("db"), draining), mkHost("n3")},
			want:       []string{"! db missing 1: all 2 alive hosts that match role=db are cordoned"},
		},
		{
			name:       "shortfall: neither memory nor CPUs suffice anywhere",
			formations: []Formation{{Name: "web", Job: "web", Count: 1, MemoryBytes: 2 * gib, CPUs: 2}},
			hosts:      []Host{mkHost("n1", memory(gib), cpus(1)), mkHost("n2", memory(512<<20), cpus(1.5))},
			want: []string{
				"! web missing 1: needs 2.0 GiB of memory and 2 CPUs; the most free on an eligible host is 1.0 GiB (n1) and 1.5 CPUs (n2)",
			},
		},
		{
			name:       "shortfall: memory and CPUs suffice, but not on one host",
			formations: []Formation{{Name: "web", Job: "web", Count: 1, MemoryBytes: 2 * gib, CPUs: 2}},
			hosts:      []Host{mkHost("n1", memory(4*gib), cpus(1)), mkHost("n2", memory(gib), cpus(4))},
			want:       []string{"! web missing 1: needs 2.0 GiB of memory and 2 CPUs; no eligible host has both free"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := lines(plan(t, tc.formations, tc.hosts, tc.placements))
			if !slices.Equal(got, tc.want) {
				t.Errorf("got:\n\t%s\nwant:\n\t%s", strings.Join(got, "\n\t"), strings.Join(tc.want, "\n\t"))
			}
		})
	}
}

// TestDrain follows one drain call by call, applying each decision and
// what the scheduler then observes.
func TestDrain(t *testing.T) {
	formations := []Formation{
		{Name: "web", Job: "web", Count: 2},
		{Name: "agent", Job: "agent", Omni: true},
	}
	hosts := []Host{mkHost("n1", draining), mkHost("n2"), mkHost("n3")}
	placements := []Placement{
		running("web", "n1/web-1"), running("web", "n1/web-2"),
		running("agent", "n1/agent"), running("agent", "n2/agent"), running("agent", "n3/agent"),
	}
	steps := []struct {
		observe func([]Placement) // what changed on the hosts since the last call
		want    []string
	}{
		{want: []string{"+ web n2/web-3 replaces n1/web-1"}},
		{want: nil}, // the replacement is not healthy yet
		{
			observe: func(ps []Placement) { healthy(ps, "n2/web-3") },
			want:    []string{"+ web n3/web-4 replaces n1/web-2", "- n1/web-1: moved off draining host n1: replaced by n2/web-3"},
		},
		{
			observe: func(ps []Placement) { healthy(ps, "n3/web-4") },
			want:    []string{"- n1/web-2: moved off draining host n1: replaced by n3/web-4"},
		},
		{want: nil}, // only the omni placement is left on n1, and it stays
	}
	for i, step := range steps {
		if step.observe != nil {
			step.observe(placements)
		}
		d := plan(t, formations, hosts, placements)
		if got := lines(d); !slices.Equal(got, step.want) {
			t.Fatalf("call %d: got:\n\t%s\nwant:\n\t%s", i+1, strings.Join(got, "\n\t"), strings.Join(step.want, "\n\t"))
		}
		placements = apply(placements, d)
	}
}

func healthy(ps []Placement, key string) {
	for i := range ps {
		if ps[i].Key() == key {
			ps[i].Healthy = true
		}
	}
}

// apply is what the scheduler records once it has acted on d.
func apply(ps []Placement, d Decision) []Placement {
	ps = slices.DeleteFunc(slices.Clone(ps), func(p Placement) bool {
		return slices.ContainsFunc(d.Remove, func(r Removal) bool { return r.Placement.Key() == p.Key() })
	})
	return append(ps, d.Place...)
}

// TestDeterministic shuffles the inputs of a plan that does a bit of
// everything and wants the same decision each time.
func TestDeterministic(t *testing.T) {
	var hosts []Host
	for i := range 30 {
		h := mkHost(fmt.Sprintf("n%02d", i), memory(int64(4+i%3)*gib), cpus(4), tag("zone", fmt.Sprint("z", i%3)))
		switch i % 10 {
		case 1:
			h.Status = Failed
		case 2:
			h.Status = Unreachable
		case 3:
			h.Draining = true
		case 4:
			h.Cordoned = true
		}
		if i%4 == 0 {
			h.Roles = []string{"db"}
		}
		hosts = append(hosts, h)
	}
	formations := []Formation{
		{Name: "agent", Job: "agent", Omni: true, MemoryBytes: gib / 4},
		{Name: "api", Job: "api", Count: 25, MemoryBytes: gib, CPUs: 0.5},
		{Name: "db", Job: "db", Count: 5, MemoryBytes: 2 * gib, Constraints: map[string]string{"role": "db"}},
		{Name: "edge", Job: "edge", Count: 12, Constraints: map[string]string{"zone": "z1"}, MemoryBytes: 3 * gib},
		{Name: "web", Job: "web", Count: 10, MemoryBytes: gib / 2, CPUs: 0.25},
	}
	first := Plan(formations, hosts, nil)
	placements := apply(nil, first)
	for i := range placements {
		placements[i].Healthy = i%3 != 0
	}
	placements = append(placements, running("gone", "n05/gone-1"))
	formations[1].Count, formations[4].Count = 20, 14
	for i := range hosts {
		switch i % 10 {
		case 5:
			hosts[i].Status = Failed
		case 6:
			hosts[i].Draining = true
		}
	}

	want := plan(t, formations, hosts, placements)
	if len(want.Place) == 0 || len(want.Remove) == 0 || len(want.Shortfalls) == 0 {
		t.Fatalf("the plan should place, remove and fall short: %v", lines(want))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 50 {
		rng.Shuffle(len(formations), func(i, j int) { formations[i], formations[j] = formations[j], formations[i] })
		rng.Shuffle(len(hosts), func(i, j int) { hosts[i], hosts[j] = hosts[j], hosts[i] })
		rng.Shuffle(len(placements), func(i, j int) { placements[i], placements[j] = placements[j], placements[i] })
		if got := Plan(formations, hosts, placements); !reflect.DeepEqual(got, want) {
			t.Fatalf("shuffled inputs changed the decision:\n\t%s\nwant:\n\t%s",
				strings.Join(lines(got), "\n\t"), strings.Join(lines(want), "\n\t"))
		}
	}
}
