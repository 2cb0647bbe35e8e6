// Package bootstrap brings up the platform on a new cluster by running a
// manifest (manifests/platform.toml): a list of steps, each an action with
// inputs templated from the caller's variables and the outputs of earlier
// steps. This file and its neighbours are the engine: parsing, checking,
// ordering by dependencies, running one step at a time, keeping each step's
// outputs so a run can be resumed, and reporting. The platform's actions
// (wait for hosts, start the controller…) live beside it in actions.go.
//
// The engine does not retry, roll back or run steps concurrently: actions
// are idempotent, so the answer to a failure is to fix its cause and run
// again. It does not decide when to bootstrap either; the caller does (first
// boot, on the node whose config says so).
package bootstrap

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"
)

// Action is one kind of step.
type Action interface {
	// Inputs are the names of the inputs the action requires; a step must
	// give exactly these.
	Inputs() []string
	// Outputs are the names of the outputs the action always returns.
	Outputs() []string
	// Run does the step, idempotently: when what it would do is already
	// done, it returns the same outputs with Changed false. log reports
	// progress of a step that takes a while; it may be called from
	// several goroutines.
	Run(ctx context.Context, in map[string]string, log func(format string, args ...any)) (Result, error)
}

// Result is what an action's Run returns.
type Result struct {
	Outputs map[string]string
	Changed bool // false: it was already done
}

// Runner runs manifests. Actions must be set; the rest may be left zero.
type Runner struct {
	Actions map[string]Action
	// Vars are what templates read as .vars.NAME.
	Vars map[string]string
	// Steps, when not empty, runs only these steps (by ID); the outputs of
	// steps they depend on come from State.
	Steps []string
	// State keeps the outputs of each step's last successful run. It may be
	// nil; then Steps must include every step the selected ones depend on.
	State State
	// Out receives the report, a line per step, and the actions' logs.
	Out io.Writer
}

// Run checks m, then runs its steps (or the selected Steps) in dependency
// order, saving each one's outputs in State and reporting it to Out. It
// stops at the first failure; the steps after it are reported skipped.
// The report is returned whenever a step has been tried, with the error
// of the failed step if any.
func (r *Runner) Run(ctx context.Context, m *Manifest) (*Report, error) {
	p, err := m.plan(r.Actions, slices.Collect(maps.Keys(r.Vars)))
	if err != nil {
		return nil, err
	}
	run, err := r.selected(p)
	if err != nil {
		return nil, err
	}
	data := map[string]map[string]string{varsScope: r.Vars}
	if err := r.loadDeps(ctx, p, run, data); err != nil {
		return nil, err
	}
	out := r.Out
	if out == nil {
		out = io.Discard
	}

	rep := &Report{}
	failed := -1 // in rep.Steps
	for _, i := range p.order {
		if !run[i] {
			continue
		}
		s := &p.steps[i]
		sr := StepReport{ID: s.ID, Action: s.Action}
		if failed >= 0 {
			sr.Status = StatusSkipped
		} else {
			start := time.Now()
			res, err := r.runStep(ctx, s, data, out)
			sr.Duration = time.Since(start)
			switch {
			case err != nil:
				sr.Status, sr.Err = StatusFailed, err
			case res.Changed:
				sr.Status, sr.Outputs = StatusDone, res.Outputs
			default:
				sr.Status, sr.Outputs = StatusAlreadyDone, res.Outputs
			}
			if err == nil {
				data[s.ID] = res.Outputs
			}
		}
		writeStep(out, sr, s.action.Outputs())
		rep.Steps = append(rep.Steps, sr)
		if sr.Status == StatusFailed {
			failed = len(rep.Steps) - 1
		}
	}
	if failed >= 0 {
		return rep, r.failure(rep, rep.Steps[failed])
	}
	return rep, nil
}

// selected returns which steps (by index) to run.
func (r *Runner) selected(p *plan) ([]bool, error) {
	run := make([]bool, len(p.steps))
	if len(r.Steps) == 0 {
		for i := range run {
			run[i] = true
		}
		return run, nil
	}
	for _, id := range r.Steps {
		i := slices.IndexFunc(p.steps, func(s plannedStep) bool { return s.ID == id })
		if i < 0 {
			ids := make([]string, len(p.steps))
			for j, s := range p.steps {
				ids[j] = s.ID
			}
			return nil, fmt.Errorf("--steps names step %q, which the manifest does not have; its steps are %s", id, list(ids))
		}
		run[i] = true
	}
	return run, nil
}

// loadDeps puts into data the saved outputs of the steps that the selected
// steps depend on but will not run, and fails if one of them has none.
func (r *Runner) loadDeps(ctx context.Context, p *plan, run []bool, data map[string]map[string]string) error {
	var saved map[string]map[string]string
	loaded := false
	for _, i := range p.order {
		if !run[i] {
			continue
		}
		s := &p.steps[i]
		for _, d := range s.deps {
			dep := p.steps[d].ID
			if run[d] {
				continue
			}
			if r.State == nil {
				return fmt.Errorf("step %s needs step %s, which --steps leaves out, and no state of earlier runs is kept: add %s to --steps", s.ID, dep, dep)
			}
			if !loaded {
				var err error
				if saved, err = r.State.Load(ctx); err != nil {
					return err
				}
				loaded = true
			}
			outs, ok := saved[dep]
			if !ok {
				if len(s.uses[dep]) == 0 {
					return fmt.Errorf("step %s runs after step %s, which has not run: add it to --steps", s.ID, dep)
				}
				return fmt.Errorf("step %s needs the outputs of step %s, which has not run: add it to --steps", s.ID, dep)
			}
			for _, o := range s.uses[dep] {
				if _, ok := outs[o]; !ok {
					return fmt.Errorf("step %s needs output %s of step %s, which its last run did not save: add %s to --steps", s.ID, o, dep, dep)
				}
			}
			data[dep] = outs
		}
	}
	return nil
}

// runStep renders the inputs of s, runs its action, checks the outputs
// against those the action declares, and saves them.
func (r *Runner) runStep(ctx context.Context, s *plannedStep, data map[string]map[string]string, out io.Writer) (Result, error) {
	if err := ctx.Err(); err != nil {
		return Result{}, fmt.Errorf("not started: %w", err)
	}
	in := make(map[string]string, len(s.inputs))
	for _, name := range slices.Sorted(maps.Keys(s.inputs)) {
		var b strings.Builder
		if err := s.inputs[name].Execute(&b, data); err != nil {
			return Result{}, fmt.Errorf("input %s: %w", name, err)
		}
		in[name] = b.String()
	}
	// Actions may log from several goroutines at once.
	var mu sync.Mutex
	log := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(out, "step %s: %s\n", s.ID, strings.TrimSuffix(fmt.Sprintf(format, args...), "\n"))
	}
	res, err := s.action.Run(ctx, in, log)
	if err != nil {
		return Result{}, err
	}
	declared := s.action.Outputs()
	for _, o := range slices.Sorted(maps.Keys(res.Outputs)) {
		if !slices.Contains(declared, o) {
			return Result{}, fmt.Errorf("action %s returned output %s, which it does not declare (it declares %s): fix the action", s.Action, o, list(declared))
		}
	}
	for _, o := range declared {
		if _, ok := res.Outputs[o]; !ok {
			return Result{}, fmt.Errorf("action %s did not return its output %s: fix the action", s.Action, o)
		}
	}
	if r.State != nil {
		if err := r.State.Save(ctx, s.ID, res.Outputs); err != nil {
			return Result{}, fmt.Errorf("the action succeeded, but its outputs could not be saved: %w", err)
		}
	}
	return res, nil
}

// failure is the error Run returns when step f failed.
func (r *Runner) failure(rep *Report, f StepReport) error {
	next := "run the manifest again: steps are idempotent, those already done stay done"
	if r.State != nil {
		var rest []string
		for _, s := range rep.Steps {
			if s.Status == StatusFailed || s.Status == StatusSkipped {
				rest = append(rest, s.ID)
			}
		}
		next += ", or resume with --steps " + strings.Join(rest, ",")
	}
	return fmt.Errorf("step %s (%s) failed: %w; %s", f.ID, f.Action, f.Err, next)
}
