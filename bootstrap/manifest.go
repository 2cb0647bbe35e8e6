package bootstrap

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// Manifest is a list of steps, in the order they were written.
type Manifest struct {
	// Name is the file the manifest came from; messages start with it.
	Name  string
	Steps []Step
}

// Step runs one action.
type Step struct {
	ID     string
	Action string
	// Input maps the action's input names to text/template strings: .vars.NAME
	// is a variable given by the caller, .STEP.OUTPUT an output of another
	// step, or index . "STEP" "OUTPUT" when the step's ID has a '-'.
	Input map[string]string
	// After names steps that must run first although no input uses their
	// outputs.
	After []string
}

// stepKeys are the keys a [[step]] table may have.
var stepKeys = []string{"id", "action", "input", "after"}

// ParseManifest decodes a TOML manifest of [[step]] tables. It is strict: a
// key it does not know is an error, so a typo cannot silently drop a setting.
// name is used in messages. ParseManifest checks only the form of the file;
// Check checks the steps against the actions.
func ParseManifest(name string, data []byte) (*Manifest, error) {
	var top map[string]toml.Primitive
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&top)
	if err != nil {
		if pe, ok := errors.AsType[toml.ParseError](err); ok {
			return nil, fmt.Errorf("%s:%d: invalid TOML: %s", name, pe.Position.Line, pe.Message)
		}
		return nil, fmt.Errorf("%s: invalid TOML: %w", name, err)
	}
	d := &decoder{name: name, data: data, md: &md}

	var unknown []string
	for k := range top {
		if k != "step" {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		first := slices.MinFunc(unknown, func(a, b string) int { return d.line(top[a]) - d.line(top[b]) })
		return nil, fmt.Errorf("%s: unknown key %q: a manifest has only [[step]] tables", d.where(top[first], true), first)
	}

	m := &Manifest{Name: name}
	p, ok := top["step"]
	if !ok {
		return m, nil
	}
	if err := md.PrimitiveDecode(p, &d.steps); err != nil {
		return nil, fmt.Errorf("%s: step must be a list of tables: write each step as [[step]]", d.where(p, true))
	}
	d.inputs = make([]map[string]toml.Primitive, len(d.steps))
	for i, s := range d.steps {
		if in, ok := s["input"]; ok {
			// Decoding a non-table into a map succeeds, with nothing in it.
			var v any
			md.PrimitiveDecode(in, &v)
			if _, ok := v.(map[string]any); !ok || md.PrimitiveDecode(in, &d.inputs[i]) != nil {
				return nil, fmt.Errorf("%s: %s: input must be a table: write [step.input] and one name = \"value\" a line",
					d.where(in, d.lastWith(i, "input")), d.label(i))
			}
		}
	}
	for i := range d.steps {
		s, err := d.step(i)
		if err != nil {
			return nil, err
		}
		m.Steps = append(m.Steps, s)
	}
	return m, nil
}

// decoder turns the raw [[step]] tables of one file into Steps.
type decoder struct {
	name   string
	data   []byte
	md     *toml.MetaData
	steps  []map[string]toml.Primitive
	inputs []map[string]toml.Primitive // each step's [step.input], if any
}

func (d *decoder) step(i int) (Step, error) {
	raw := d.steps[i]
	var unknown []string
	for k := range raw {
		if !slices.Contains(stepKeys, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		k := unknown[0]
		return Step{}, fmt.Errorf("%s: %s: unknown key %q: a step has only the keys %s",
			d.where(raw[k], d.lastWith(i, k)), d.label(i), k, strings.Join(stepKeys, ", "))
	}

	var s Step
	for _, f := range []struct {
		key string
		dst *string
	}{{"id", &s.ID}, {"action", &s.Action}} {
		p, ok := raw[f.key]
		if !ok {
			continue
		}
		if d.md.PrimitiveDecode(p, f.dst) != nil {
			return Step{}, fmt.Errorf("%s: %s: %s must be a string: quote it", d.where(p, d.lastWith(i, f.key)), d.label(i), f.key)
		}
	}
	if p, ok := raw["after"]; ok {
		if d.md.PrimitiveDecode(p, &s.After) != nil {
			return Step{}, fmt.Errorf(`%s: %s: after must be a list of step ids, like after = ["a", "b"]`,
				d.where(p, d.lastWith(i, "after")), d.label(i))
		}
	}
	if len(d.inputs[i]) > 0 {
		s.Input = make(map[string]string, len(d.inputs[i]))
	}
	for _, name := range slices.Sorted(maps.Keys(d.inputs[i])) {
		p := d.inputs[i][name]
		var v string
		if d.md.PrimitiveDecode(p, &v) != nil {
			exact := true
			for j := i + 1; j < len(d.inputs); j++ {
				if _, ok := d.inputs[j][name]; ok {
					exact = false
				}
			}
			return Step{}, fmt.Errorf("%s: %s: input %s must be a string: quote it", d.where(p, exact), d.label(i), name)
		}
		s.Input[name] = v
	}
	return s, nil
}

// label names step i in messages by its ID, or by its place when it has
// none that can be read.
func (d *decoder) label(i int) string {
	var id string
	if p, ok := d.steps[i]["id"]; ok && d.md.PrimitiveDecode(p, &id) == nil && id != "" {
		return "step " + strconv.Quote(id)
	}
	return "step " + strconv.Itoa(i+1)
}

// lastWith reports whether step i is the last step with key.
//
// The toml library keeps one position per key path, and [[step]] tables
// share their paths: it knows the line of step.KEY only in the last step that
// has KEY.
func (d *decoder) lastWith(i int, key string) bool {
	for _, s := range d.steps[i+1:] {
		if _, ok := s[key]; ok {
			return false
		}
	}
	return true
}

// where returns "name:line" for the key p was decoded from, or name alone
// when its line is not exact or not known.
func (d *decoder) where(p toml.Primitive, exact bool) string {
	if l := d.line(p); exact && l > 0 {
		return d.name + ":" + strconv.Itoa(l)
	}
	return d.name
}

// line returns the line of the key p was decoded from, or 0.
//
// toml v1.6.0 keeps key positions unexported; it reveals one only in the
// ParseError it returns when an Unmarshaler fails, so p is decoded into
// locator, which always fails.
func (d *decoder) line(p toml.Primitive) int {
	pe, ok := errors.AsType[toml.ParseError](d.md.PrimitiveDecode(p, locator{}))
	if !ok || pe.Position.Start > len(d.data) {
		return 0
	}
	// Position.Line is where the value ends; Start is where it starts, on
	// the key's line.
	return 1 + bytes.Count(d.data[:pe.Position.Start], []byte("\n"))
}

type locator struct{}

var errLocate = errors.New("locating key")

func (locator) UnmarshalTOML(any) error { return errLocate }
