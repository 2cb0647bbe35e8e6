package bootstrap

import (
	"context"
	"errors"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// threeSteps is written out of dependency order: joined needs the two
// steps after it.
const threeSteps = `
[[step]]
id = "joined"
action = "join"
[step.input]
a = "{{ .left.id }}"
b = "{{ .right.id }}"

[[step]]
id = "left"
action = "make"
input = { name = "{{ .vars.name }}-l" }

[[step]]
id = "right"
action = "make"
input = { name = "{{ .vars.name }}-r" }
`

func TestRunDependencyOrder(t *testing.T) {
	w := newWorld()
	var out strings.Builder
	r := &Runner{Actions: w.actions(), Vars: map[string]string{"name": "n"}, Out: &out}
	rep, err := r.Run(context.Background(), mustParse(t, threeSteps))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"make n-l", "make n-r", "join id-n-l id-n-r"}; !slices.Equal(w.ran, want) {
		t.Errorf("ran %q, want %q", w.ran, want)
	}
	wantLines(t, out.String(),
		"step left: making n-l",
		"step left (make): done in D",
		"  id = id-n-l",
		"step right: making n-r",
		"step right (make): done in D",
		"  id = id-n-r",
		"step joined (join): already done in D",
		"  joined = id-n-l+id-n-r",
	)
	var got []string
	for _, s := range rep.Steps {
		got = append(got, s.ID+" "+s.Status)
	}
	if want := []string{"left done", "right done", "joined already done"}; !slices.Equal(got, want) {
		t.Errorf("report %q, want %q", got, want)
	}
	if want := map[string]string{"joined": "id-n-l+id-n-r"}; !reflect.DeepEqual(rep.Steps[2].Outputs, want) {
		t.Errorf("joined outputs %v, want %v", rep.Steps[2].Outputs, want)
	}
}

func TestRunKeepsManifestOrderWhereFree(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		want      []string
	}{
		{"independent", `
[[step]]
id = "c"
action = "make"
input = { name = "c" }
[[step]]
id = "a"
action = "make"
input = { name = "a" }
[[step]]
id = "b"
action = "make"
input = { name = "b" }
`, []string{"make c", "make a", "make b"}},
		// Only c must move: it goes just before the step that needs it.
		{"one dependency", `
[[step]]
id = "a"
action = "make"
input = { name = "a" }
[[step]]
id = "b"
action = "make"
input = { name = "{{ .c.id }}" }
[[step]]
id = "d"
action = "make"
input = { name = "d" }
[[step]]
id = "c"
action = "make"
input = { name = "c" }
`, []string{"make a", "make c", "make id-c", "make d"}},
		{"after", `
[[step]]
id = "a"
action = "make"
input = { name = "a" }
after = ["b"]
[[step]]
id = "b"
action = "make"
input = { name = "b" }
`, []string{"make b", "make a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld()
			r := &Runner{Actions: w.actions()}
			if _, err := r.Run(context.Background(), mustParse(t, tc.src)); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(w.ran, tc.want) {
				t.Errorf("ran %q, want %q", w.ran, tc.want)
			}
		})
	}
}

func TestRunAgainIsAlreadyDone(t *testing.T) {
	w := newWorld()
	m := mustParse(t, threeSteps)
	r := &Runner{Actions: w.actions(), Vars: map[string]string{"name": "n"}}
	if _, err := r.Run(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	r.Out = &out
	if _, err := r.Run(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	wantLines(t, out.String(),
		"step left (make): already done in D",
		"  id = id-n-l",
		"step right (make): already done in D",
		"  id = id-n-r",
		"step joined (join): already done in D",
		"  joined = id-n-l+id-n-r",
	)
}

func TestRunSelectedStepsUseSavedState(t *testing.T) {
	state := FileState{Path: filepath.Join(t.TempDir(), "state.json")}
	m := mustParse(t, threeSteps)
	w := newWorld()
	r := &Runner{Actions: w.actions(), Vars: map[string]string{"name": "n"}, State: state}
	if _, err := r.Run(context.Background(), m); err != nil {
		t.Fatal(err)
	}

	// A new process: nothing in memory but the state file.
	w = newWorld()
	var out strings.Builder
	r = &Runner{Actions: w.actions(), Vars: map[string]string{"name": "n"}, State: state, Steps: []string{"joined"}, Out: &out}
	if _, err := r.Run(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	if want := []string{"join id-n-l id-n-r"}; !slices.Equal(w.ran, want) {
		t.Errorf("ran %q, want %q", w.ran, want)
	}
	wantLines(t, out.String(),
		"step joined (join): already done in D",
		"  joined = id-n-l+id-n-r",
	)
}

func TestRunSelectedStepsNeedTheirDependencies(t *testing.T) {
	m := mustParse(t, threeSteps+`
[[step]]
id = "last"
action = "make"
input = { name = "last" }
after = ["right"]
`)
	empty := FileState{Path: filepath.Join(t.TempDir(), "state.json")}
	for _, tc := range []struct {
		name  string
		steps []string
		state State
		want  string
	}{
		{"no state", []string{"joined", "left"}, nil,
			"step joined needs step right, which --steps leaves out, and no state of earlier runs is kept: add right to --steps"},
		{"not run", []string{"joined", "left"}, empty,
			"step joined needs the outputs of step right, which has not run: add it to --steps"},
		{"after, not run", []string{"last"}, empty,
			"step last runs after step right, which has not run: add it to --steps"},
		{"unknown step", []string{"left", "rigth"}, empty,
			`--steps names step "rigth", which the manifest does not have; its steps are joined, left, right, last`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld()
			r := &Runner{Actions: w.actions(), Vars: map[string]string{"name": "n"}, Steps: tc.steps, State: tc.state}
			_, err := r.Run(context.Background(), m)
			wantErr(t, err, tc.want)
			if len(w.ran) > 0 {
				t.Errorf("ran %q, want nothing run", w.ran)
			}
		})
	}
}

func TestRunStopsAtFailure(t *testing.T) {
	m := mustParse(t, `
[[step]]
id = "a"
action = "make"
input = { name = "a" }

[[step]]
id = "broken"
action = "fail"
input = { why = "disk on fire ({{ .a.id }})" }

[[step]]
id = "c"
action = "make"
input = { name = "c" }
`)
	w := newWorld()
	var out strings.Builder
	state := FileState{Path: filepath.Join(t.TempDir(), "state.json")}
	r := &Runner{Actions: w.actions(), Out: &out, State: state}
	rep, err := r.Run(context.Background(), m)
	wantErr(t, err, "step broken (fail) failed: disk on fire (id-a); run the manifest again: steps are idempotent, those already done stay done, or resume with --steps broken,c")
	if want := []string{"make a", "fail"}; !slices.Equal(w.ran, want) {
		t.Errorf("ran %q, want %q", w.ran, want)
	}
	wantLines(t, out.String(),
		"step a: making a",
		"step a (make): done in D",
		"  id = id-a",
		"step broken (fail): FAILED after D: disk on fire (id-a)",
		"step c (make): skipped",
	)
	var got []string
	for _, s := range rep.Steps {
		got = append(got, s.ID+" "+s.Status)
	}
	if want := []string{"a done", "broken failed", "c skipped"}; !slices.Equal(got, want) {
		t.Errorf("report %q, want %q", got, want)
	}
	if rep.Steps[1].Err == nil || rep.Steps[1].Err.Error() != "disk on fire (id-a)" {
		t.Errorf("report of broken: Err = %v, want disk on fire (id-a)", rep.Steps[1].Err)
	}
	saved, err := state.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]map[string]string{"a": {"id": "id-a"}}; !reflect.DeepEqual(saved, want) {
		t.Errorf("saved %v, want %v", saved, want)
	}
}

func TestRunChecksOutputs(t *testing.T) {
	for _, tc := range []struct{ action, want string }{
		{"extra", "step s (extra) failed: action extra returned output surprise, which it does not declare (it declares out): fix the action"},
		{"lacking", "step s (lacking) failed: action lacking did not return its output more: fix the action"},
	} {
		t.Run(tc.action, func(t *testing.T) {
			m := mustParse(t, "[[step]]\nid = \"s\"\naction = \""+tc.action+"\"\n")
			r := &Runner{Actions: newWorld().actions()}
			rep, err := r.Run(context.Background(), m)
			wantErr(t, err, tc.want)
			if rep.Steps[0].Status != StatusFailed {
				t.Errorf("status %q, want failed", rep.Steps[0].Status)
			}
		})
	}
}

func TestRunChecksFirst(t *testing.T) {
	w := newWorld()
	m := mustParse(t, threeSteps)
	r := &Runner{Actions: w.actions()} // no variable "name"
	rep, err := r.Run(context.Background(), m)
	wantErr(t, err, "step left: input name uses variable name, which is not given; the variables are none")
	if rep != nil || len(w.ran) > 0 {
		t.Errorf("ran %q with report %v, want nothing run", w.ran, rep)
	}
}

func TestStepReportLine(t *testing.T) {
	for _, tc := range []struct {
		s    StepReport
		want string
	}{
		{StepReport{ID: "controller", Action: "start-controller", Status: StatusDone, Duration: 1321 * time.Millisecond,
			Outputs: map[string]string{"hosts": "a,b,c", "ca": "line1\nline2"}},
			"step controller (start-controller): done in 1.32s\n  hosts = a,b,c\n  ca = \"line1\\nline2\"\n"},
		{StepReport{ID: "x", Action: "a", Status: StatusAlreadyDone, Duration: 12345 * time.Microsecond},
			"step x (a): already done in 12ms\n"},
		{StepReport{ID: "x", Action: "a", Status: StatusFailed, Duration: 3100*time.Millisecond + 2*time.Microsecond, Err: context.DeadlineExceeded},
			"step x (a): FAILED after 3.1s: context deadline exceeded\n"},
		{StepReport{ID: "x", Action: "a", Status: StatusSkipped}, "step x (a): skipped\n"},
	} {
		var b strings.Builder
		var outputs []string
		if tc.s.Outputs != nil {
			outputs = []string{"hosts", "ca"}
		}
		writeStep(&b, tc.s, outputs)
		if b.String() != tc.want {
			t.Errorf("got %q, want %q", b.String(), tc.want)
		}
	}
}

func TestRunTemplateError(t *testing.T) {
	m := mustParse(t, `
[[step]]
id = "a"
action = "make"
input = { name = "{{ slice .vars.name 10 }}" }
`)
	r := &Runner{Actions: newWorld().actions(), Vars: map[string]string{"name": "n"}}
	_, err := r.Run(context.Background(), m)
	wantErr(t, err, `step a (make) failed: input name: template: name:1:3: executing "name" at <slice .vars.name 10>: error calling slice: index out of range: 10`)
}

func TestRunCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	w := newWorld()
	var out strings.Builder
	rep, err := (&Runner{Actions: w.actions(), Vars: map[string]string{"name": "n"}, Out: &out}).Run(ctx, mustParse(t, threeSteps))
	wantErr(t, err, "step left (make) failed: not started: context canceled; run the manifest again")
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error %v is not context.Canceled", err)
	}
	if len(w.ran) > 0 || len(rep.Steps) != 3 {
		t.Errorf("ran %q, reported %d steps; want nothing run, 3 steps reported", w.ran, len(rep.Steps))
	}
	wantLines(t, out.String(),
		"step left (make): FAILED after D: not started: context canceled",
		"step right (make): skipped",
		"step joined (join): skipped",
	)
}
