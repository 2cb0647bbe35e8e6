package bootstrap

import (
	"context"
	"errors"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// world is what the fake actions change: the things made so far, and the
// order in which steps ran.
type world struct {
	made map[string]bool
	ran  []string
}

// fake is an action whose Run is a function of its inputs.
type fake struct {
	inputs, outputs []string
	run             func(in map[string]string, log func(string, ...any)) (Result, error)
}

func (f *fake) Inputs() []string  { return f.inputs }
func (f *fake) Outputs() []string { return f.outputs }
func (f *fake) Run(_ context.Context, in map[string]string, log func(string, ...any)) (Result, error) {
	return f.run(in, log)
}

// actions returns fake actions over w:
//
//	make     name → id: makes "name", idempotently; id is "id-" + name
//	join     a, b → joined: a + "+" + b, never a change
//	fail     why → none: fails with why
//	extra    → out: returns out and an undeclared output
//	lacking  → out, more: returns out only
func (w *world) actions() map[string]Action {
	return map[string]Action{
		"make": &fake{inputs: []string{"name"}, outputs: []string{"id"},
			run: func(in map[string]string, log func(string, ...any)) (Result, error) {
				w.ran = append(w.ran, "make "+in["name"])
				changed := !w.made[in["name"]]
				if changed {
					log("making %s", in["name"])
				}
				w.made[in["name"]] = true
				return Result{Outputs: map[string]string{"id": "id-" + in["name"]}, Changed: changed}, nil
			}},
		"join": &fake{inputs: []string{"a", "b"}, outputs: []string{"joined"},
			run: func(in map[string]string, _ func(string, ...any)) (Result, error) {
				w.ran = append(w.ran, "join "+in["a"]+" "+in["b"])
				return Result{Outputs: map[string]string{"joined": in["a"] + "+" + in["b"]}}, nil
			}},
		"fail": &fake{inputs: []string{"why"},
			run: func(in map[string]string, _ func(string, ...any)) (Result, error) {
				w.ran = append(w.ran, "fail")
				return Result{}, errors.New(in["why"])
			}},
		"extra": &fake{outputs: []string{"out"},
			run: func(map[string]string, func(string, ...any)) (Result, error) {
				return Result{Outputs: map[string]string{"out": "x", "surprise": "y"}, Changed: true}, nil
			}},
		"lacking": &fake{outputs: []string{"out", "more"},
			run: func(map[string]string, func(string, ...any)) (Result, error) {
				return Result{Outputs: map[string]string{"out": "x"}, Changed: true}, nil
			}},
	}
}

func newWorld() *world { return &world{made: map[string]bool{}} }

func mustParse(t *testing.T, src string) *Manifest {
	t.Helper()
	m, err := ParseManifest("test.toml", []byte(src))
	if err != nil {
		t.Fatalf("ParseManifest: %v", err)
	}
	return m
}

// wantErr fails unless err contains each of wants.
func wantErr(t *testing.T, err error, wants ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one containing %q", wants)
	}
	for _, w := range wants {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error\n\t%v\ndoes not contain\n\t%s", err, w)
		}
	}
}

var durations = regexp.MustCompile(`(in|after) [0-9.]+(µs|ms|s)`)

// reportLines returns the lines of a runner's output with durations
// replaced by D, as they differ from run to run.
func reportLines(out string) []string {
	return strings.Split(strings.TrimSuffix(durations.ReplaceAllString(out, "$1 D"), "\n"), "\n")
}

func wantLines(t *testing.T, got string, want ...string) {
	t.Helper()
	if lines := reportLines(got); !slices.Equal(lines, want) {
		t.Errorf("output:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
}
