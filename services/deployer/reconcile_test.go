package deployer

import (
	"fmt"
	"slices"
	"testing"

	"github.com/plinth-os/plinth/services/controller"
)

const img = "demo@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func release(v int) controller.Release {
	return controller.Release{ID: controller.ReleaseID("demo", v), App: "demo", Version: v, Image: img,
		Processes: map[string]controller.Process{"web": {Port: 8080}, "worker": {}}}
}

// formation is release v's formation of typ with count, of which running
// run, and healthy of those healthy (instances reported).
func formation(v int, typ string, count, running int) controller.Formation {
	r := release(v)
	f := controller.ProcessFormation(&r, typ, count)
	f.Status.Running = running
	f.ModifyIndex = uint64(100 + v)
	return f
}

func healthyInstances(f controller.Formation, n int) []controller.Instance {
	var out []controller.Instance
	for i := 1; i <= n; i++ {
		out = append(out, controller.Instance{ID: fmt.Sprintf("h/%s-%d/demo", f.Name, i), Host: "h", Job: fmt.Sprintf("%s-%d", f.Name, i), Healthy: true})
	}
	return out
}

func describe(fixes []fix) []string {
	var out []string
	for _, f := range fixes {
		switch {
		case f.delete:
			out = append(out, "delete "+f.name)
		case f.cas == 0:
			out = append(out, fmt.Sprintf("make %s=%d", f.name, f.formation.Count))
		default:
			out = append(out, fmt.Sprintf("scale %s=%d", f.name, f.formation.Count))
		}
	}
	slices.Sort(out)
	return out
}

func TestReconcile(t *testing.T) {
	v2 := release(2)
	app := controller.App{Name: "demo", Release: 2, LastRelease: 2, Scale: map[string]int{"web": 2, "worker": 1}}
	rels := map[string]controller.Release{v2.ID: v2}
	web2 := formation(2, "web", 2, 2)
	worker2 := formation(2, "worker", 1, 1)
	for _, c := range []struct {
		name       string
		apps       []controller.App
		formations []controller.Formation
		instances  []controller.Instance
		busy       bool
		want       []string
	}{
		{name: "serving release made at its scale", apps: []controller.App{app},
			want: []string{"make demo.web.v2=2", "make demo.worker.v2=1"}},
		{name: "scale followed", apps: []controller.App{{Name: "demo", Release: 2, Scale: map[string]int{"web": 3}}},
			formations: []controller.Formation{web2, formation(2, "worker", 0, 0)}, want: []string{"scale demo.web.v2=3"}},
		{name: "old release kept while the serving one is not healthy", apps: []controller.App{app},
			formations: []controller.Formation{formation(1, "web", 2, 2), web2, worker2},
			instances:  healthyInstances(web2, 1)},
		{name: "old release scaled down once the serving one is healthy", apps: []controller.App{app},
			formations: []controller.Formation{formation(1, "web", 2, 2), web2, worker2},
			instances:  healthyInstances(web2, 2), want: []string{"scale demo.web.v1=0"}},
		{name: "old release deleted once its jobs are gone", apps: []controller.App{app},
			formations: []controller.Formation{formation(1, "web", 0, 1), formation(1, "worker", 0, 0), web2, worker2},
			instances:  healthyInstances(web2, 2), want: []string{"delete demo.worker.v1"}},
		{name: "a deploy in progress is left alone", apps: []controller.App{app}, busy: true,
			formations: []controller.Formation{formation(1, "web", 1, 1), formation(2, "web", 1, 1)}},
		{name: "a destroyed app's formations go", formations: []controller.Formation{web2, formation(1, "web", 0, 0)},
			want: []string{"delete demo.web.v1", "scale demo.web.v2=0"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := &state{apps: map[string]controller.App{}, releases: rels, formations: c.formations, instances: c.instances}
			for _, a := range c.apps {
				s.apps[a.Name] = a
			}
			got := describe(reconcile(s, map[string]bool{"demo": c.busy}))
			if !slices.Equal(got, c.want) {
				t.Fatalf("fixes %v, want %v", got, c.want)
			}
		})
	}
}

func TestHealthyCountsWholeInstances(t *testing.T) {
	f := formation(2, "web", 3, 3)
	ins := healthyInstances(f, 3)
	ins[1].Draining = true
	ins = append(ins, controller.Instance{Host: "h", Job: f.Name + "-10", Healthy: false})
	// Another formation whose name starts the same is not counted.
	ins = append(ins, controller.Instance{Host: "h", Job: f.Name + "0-1", Healthy: true})
	if n := healthy(&f, ins); n != 2 {
		t.Fatalf("healthy %d, want 2 (one draining, one failing, one another formation's)", n)
	}
	worker := formation(2, "worker", 2, 1)
	if n := healthy(&worker, nil); n != 1 {
		t.Fatalf("a process without a service: %d healthy, want its 1 running", n)
	}
}
