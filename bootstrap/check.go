package bootstrap

import (
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"text/template"
	"text/template/parse"
)

// varsScope is the template name under which the caller's variables are
// found; no step may take it as its ID.
const varsScope = "vars"

var validID = regexp.MustCompile(`^[a-z0-9-]+$`)

// Check validates m against actions and the names of the variables the
// caller will give: every step's action exists and gets exactly the inputs
// it takes, step IDs are valid and unique, every template parses and uses
// only known variables and outputs that the referenced step's action
// declares, and the steps form no cycle. It reports every problem it finds.
func (m *Manifest) Check(actions map[string]Action, vars []string) error {
	_, err := m.plan(actions, vars)
	return err
}

// plan is a checked manifest, ready to run.
type plan struct {
	steps []plannedStep // as in Manifest.Steps
	order []int         // indexes into steps, in the order to run them
}

type plannedStep struct {
	Step
	action Action
	inputs map[string]*template.Template
	// uses lists, by step ID, the outputs that the inputs use.
	uses map[string][]string
	// deps are the indexes of the steps that must run first, ascending.
	deps []int
}

// ref is what a template reads: variable name of scope "vars", or output
// name of step scope.
type ref struct{ scope, name string }

func (m *Manifest) plan(actions map[string]Action, vars []string) (*plan, error) {
	c := &checker{m: m, actions: actions, vars: vars, index: make(map[string]int, len(m.Steps))}
	c.ids()
	p := &plan{steps: make([]plannedStep, len(m.Steps))}
	for i := range m.Steps {
		p.steps[i] = c.step(i)
	}
	if len(c.errs) > 0 {
		return nil, manifestError(m.Name, c.errs)
	}
	order, err := p.sort()
	if err != nil {
		return nil, manifestError(m.Name, []error{err})
	}
	p.order = order
	return p, nil
}

// checker collects the problems of a manifest.
type checker struct {
	m       *Manifest
	actions map[string]Action
	vars    []string
	index   map[string]int // step ID → index, for valid IDs
	valid   []string       // the valid IDs, in manifest order
	errs    []error
}

func (c *checker) fail(format string, args ...any) {
	c.errs = append(c.errs, fmt.Errorf(format, args...))
}

// ids checks the step IDs and indexes the valid ones.
func (c *checker) ids() {
	for i, s := range c.m.Steps {
		switch {
		case s.ID == "":
			c.fail(`step %d has no id: add id = "NAME"`, i+1)
		case !validID.MatchString(s.ID):
			c.fail("step %d: id %q is invalid: use lowercase letters, digits and '-'", i+1, s.ID)
		case s.ID == varsScope:
			c.fail("step %d: id %q is reserved for the variables (.vars.NAME): choose another", i+1, s.ID)
		default:
			if j, dup := c.index[s.ID]; dup {
				c.fail("steps %d and %d both have id %s: step ids must be unique", j+1, i+1, s.ID)
				continue
			}
			c.index[s.ID] = i
			c.valid = append(c.valid, s.ID)
		}
	}
}

// step checks step i: its action and inputs, and what its inputs and its
// after list refer to.
func (c *checker) step(i int) plannedStep {
	s := c.m.Steps[i]
	ps := plannedStep{
		Step:   s,
		inputs: make(map[string]*template.Template, len(s.Input)),
		uses:   make(map[string][]string),
	}
	label := "step " + s.ID
	if s.ID == "" || !validID.MatchString(s.ID) {
		label = fmt.Sprintf("step %d", i+1)
	}

	a, ok := c.actions[s.Action]
	switch {
	case s.Action == "":
		c.fail(`%s has no action: add action = "NAME"; the actions are %s`, label, list(slices.Sorted(maps.Keys(c.actions))))
	case !ok:
		c.fail("%s: unknown action %q; the actions are %s", label, s.Action, list(slices.Sorted(maps.Keys(c.actions))))
	default:
		ps.action = a
		for _, name := range a.Inputs() {
			if _, ok := s.Input[name]; !ok {
				c.fail("%s: action %s needs input %s: add it under [step.input]", label, s.Action, name)
			}
		}
		for _, name := range slices.Sorted(maps.Keys(s.Input)) {
			if !slices.Contains(a.Inputs(), name) {
				c.fail("%s: action %s has no input %s: it takes %s", label, s.Action, name, list(a.Inputs()))
			}
		}
	}

	deps := make(map[int]bool)
	for _, name := range slices.Sorted(maps.Keys(s.Input)) {
		t, refs, err := parseInput(name, s.Input[name])
		if err != nil {
			c.fail("%s: input %s: %v", label, name, err)
			continue
		}
		ps.inputs[name] = t
		for _, r := range refs {
			if j, ok := c.ref(label, name, r); ok {
				deps[j] = true
				if !slices.Contains(ps.uses[r.scope], r.name) {
					ps.uses[r.scope] = append(ps.uses[r.scope], r.name)
				}
			}
		}
	}
	for _, id := range s.After {
		j, ok := c.index[id]
		if !ok {
			c.fail("%s: after names step %s, and there is no such step; the steps are %s", label, id, list(c.valid))
			continue
		}
		deps[j] = true
	}
	ps.deps = slices.Sorted(maps.Keys(deps))
	return ps
}

// ref checks what input reads, and returns the index of the step it reads
// from, if it reads a step's output.
func (c *checker) ref(label, input string, r ref) (int, bool) {
	if r.scope == varsScope {
		if !slices.Contains(c.vars, r.name) {
			c.fail("%s: input %s uses variable %s, which is not given; the variables are %s",
				label, input, r.name, list(slices.Sorted(slices.Values(c.vars))))
		}
		return 0, false
	}
	j, ok := c.index[r.scope]
	if !ok {
		c.fail("%s: input %s uses output %s of step %s, and there is no such step; the steps are %s",
			label, input, r.name, r.scope, list(c.valid))
		return 0, false
	}
	dep := c.m.Steps[j]
	if a, ok := c.actions[dep.Action]; ok && !slices.Contains(a.Outputs(), r.name) {
		c.fail("%s uses output %s of step %s, which action %s does not give: it gives %s",
			label, r.name, r.scope, dep.Action, list(a.Outputs()))
	}
	return j, true
}

// sort returns the steps in an order where each runs after the steps it
// depends on. Steps run in the order written, except that a step's
// dependencies written after it are pulled up to run just before it.
func (p *plan) sort() ([]int, error) {
	const (
		unvisited = iota
		visiting
		visited
	)
	state := make([]int, len(p.steps))
	order := make([]int, 0, len(p.steps))
	var stack []int // the steps being visited, each needing the next
	var visit func(i int) error
	visit = func(i int) error {
		switch state[i] {
		case visited:
			return nil
		case visiting:
			return p.cycle(stack[slices.Index(stack, i):])
		}
		state[i] = visiting
		stack = append(stack, i)
		for _, d := range p.steps[i].deps {
			if err := visit(d); err != nil {
				return err
			}
		}
		stack = stack[:len(stack)-1]
		state[i] = visited
		order = append(order, i)
		return nil
	}
	for i := range p.steps {
		if err := visit(i); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// cycle describes the cycle of steps in path, each needing the next and
// the last needing the first.
func (p *plan) cycle(path []int) error {
	// Start from the step written first, so that the message does not
	// depend on where the search entered the cycle.
	first := slices.Index(path, slices.Min(path))
	path = append(slices.Clone(path[first:]), path[:first+1]...)
	ids := make([]string, len(path))
	for i, s := range path {
		ids[i] = p.steps[s].ID
	}
	return fmt.Errorf("steps %s form a cycle (each needs the next): remove one of these references or after entries",
		strings.Join(ids, " → "))
}

func manifestError(name string, errs []error) error {
	if name != "" {
		for i, err := range errs {
			errs[i] = fmt.Errorf("%s: %w", name, err)
		}
	}
	return errors.Join(errs...)
}

// parseInput parses the template of an input and returns what it reads
// from its data, found in its parse tree. Constructs that hide what they
// read (a bare dot, range, with, template) are refused: the runner must
// know every dependency before running.
func parseInput(name, text string) (*template.Template, []ref, error) {
	t, err := template.New(name).Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, nil, err
	}
	w := &refWalker{}
	if t.Tree != nil {
		w.node(t.Tree.Root)
	}
	return t, w.refs, w.err
}

type refWalker struct {
	refs []ref
	err  error
}

func (w *refWalker) fail(format string, args ...any) {
	if w.err == nil {
		w.err = fmt.Errorf(format, args...)
	}
}

func (w *refWalker) node(n parse.Node) {
	switch n := n.(type) {
	case *parse.ListNode:
		if n == nil {
			return
		}
		for _, c := range n.Nodes {
			w.node(c)
		}
	case *parse.ActionNode:
		w.node(n.Pipe)
	case *parse.IfNode:
		w.node(n.Pipe)
		w.node(n.List)
		w.node(n.ElseList)
	case *parse.PipeNode:
		// Declared variables are written, not read; what they are set
		// to is in the commands.
		for _, c := range n.Cmds {
			w.node(c)
		}
	case *parse.CommandNode:
		if path, ok := indexPath(n); ok {
			w.path(path)
			return
		}
		for _, a := range n.Args {
			w.node(a)
		}
	case *parse.ChainNode:
		w.node(n.Node)
	case *parse.FieldNode:
		w.path(n.Ident)
	case *parse.VariableNode:
		// $ is the data; other variables hold what their declaration read.
		if n.Ident[0] == "$" {
			w.path(n.Ident[1:])
		}
	case *parse.DotNode:
		w.fail("{{ . }} hides what it uses: write .vars.NAME or .STEP.OUTPUT")
	case *parse.RangeNode, *parse.WithNode, *parse.TemplateNode:
		w.fail("%s hides what it uses: inputs may use only if, pipelines and functions; write .vars.NAME or .STEP.OUTPUT", n)
	}
}

// path records a read of .path[0].path[1]...
func (w *refWalker) path(path []string) {
	dotted := "." + strings.Join(path, ".")
	switch {
	case len(path) == 0:
		w.fail("{{ $ }} hides what it uses: write .vars.NAME or .STEP.OUTPUT")
	case len(path) == 1:
		w.fail("%s is a whole step or the whole variables: name one, as in %s.NAME", dotted, dotted)
	case len(path) > 2:
		w.fail("%s: outputs and variables are strings, so .%s.%s has no field %s", dotted, path[0], path[1], path[2])
	default:
		w.refs = append(w.refs, ref{scope: path[0], name: path[1]})
	}
}

// indexPath returns the path that `index ROOT "a" "b"` reads, ROOT being .,
// $ or a field: index is the only way to reach a step whose ID has a '-'.
func indexPath(c *parse.CommandNode) ([]string, bool) {
	if len(c.Args) < 3 {
		return nil, false
	}
	if id, ok := c.Args[0].(*parse.IdentifierNode); !ok || id.Ident != "index" {
		return nil, false
	}
	var path []string
	switch root := c.Args[1].(type) {
	case *parse.DotNode:
	case *parse.FieldNode:
		path = append(path, root.Ident...)
	case *parse.VariableNode:
		if root.Ident[0] != "$" {
			return nil, false
		}
		path = append(path, root.Ident[1:]...)
	default:
		return nil, false
	}
	for _, a := range c.Args[2:] {
		s, ok := a.(*parse.StringNode)
		if !ok {
			return nil, false
		}
		path = append(path, s.Text)
	}
	return path, true
}

// list joins names for messages.
func list(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}
