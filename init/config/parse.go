package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Load reads the machine config at path. A missing file is an error
// wrapping fs.ErrNotExist; whether that means Default is for the caller to
// decide.
func Load(path string) (Machine, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Machine{}, fmt.Errorf("load machine config: %w", err)
	}
	return Parse(path, data)
}

// Parse parses a machine config. Keys the file leaves out keep their Default
// values. name identifies the config in error messages: a path, or e.g.
// "fw_cfg:opt/plinth/config".
//
// On failure the error is an *Error listing every problem found.
func Parse(name string, data []byte) (Machine, error) {
	// Decoding into Primitives only checks syntax; the schema walk below then
	// inspects each value itself so it can report every problem, where the
	// toml library's struct decoding stops at the first.
	var root map[string]toml.Primitive
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&root)
	if err != nil {
		return Machine{}, &Error{Problems: []Problem{syntaxProblem(name, err)}}
	}
	m := Default()
	d := &decoder{file: name, md: md}
	d.fields(nil, root, machineFields(&m))
	if len(d.problems) > 0 {
		slices.SortStableFunc(d.problems, compareProblems)
		return Machine{}, &Error{Problems: d.problems}
	}
	return m, nil
}

func syntaxProblem(file string, err error) Problem {
	var pe toml.ParseError
	if !errors.As(err, &pe) {
		return Problem{File: file, Msg: err.Error()}
	}
	return Problem{
		File:   file,
		Line:   pe.Position.Line,
		Column: pe.Position.Col,
		Msg:    "invalid TOML: " + pe.Message,
	}
}

// A field is one key of a TOML table and how to decode its value.
type field struct {
	key string
	// decode stores the value p found at key, or records why it cannot.
	decode func(d *decoder, key toml.Key, p toml.Primitive)
}

func stringField(name string, dst *string, check func(string) error) field {
	return field{name, func(d *decoder, key toml.Key, p toml.Primitive) {
		s, ok := d.string(key, p, "a string")
		if !ok {
			return
		}
		if err := check(s); err != nil {
			d.problem(key, p, "%v", err)
			return
		}
		*dst = s
	}}
}

// durationField accepts durations from lo to hi, inclusive.
func durationField(name string, dst *Duration, lo, hi time.Duration) field {
	return field{name, func(d *decoder, key toml.Key, p toml.Primitive) {
		s, ok := d.string(key, p, `a duration string such as "5s"`)
		if !ok {
			return
		}
		var v Duration
		if err := v.UnmarshalText([]byte(s)); err != nil {
			d.problem(key, p, `%q is not a duration; write it like "5s" or "1m30s"`, s)
			return
		}
		if v.Duration < lo || v.Duration > hi {
			d.problem(key, p, "%v is out of range; use %v to %v", v, lo, hi)
			return
		}
		*dst = v
	}}
}

func tableField(name string, fields []field) field {
	return field{name, func(d *decoder, key toml.Key, p toml.Primitive) {
		v := d.value(p)
		if _, ok := v.(map[string]any); !ok {
			d.problem(key, p, "expected a table, got %s", typeName(v))
			return
		}
		var keys map[string]toml.Primitive
		if err := d.md.PrimitiveDecode(p, &keys); err != nil {
			d.problem(key, p, "%v", err)
			return
		}
		d.fields(key, keys, fields)
	}}
}

// decoder walks one parsed file against the schema, collecting problems.
type decoder struct {
	file     string
	md       toml.MetaData
	problems []Problem
}

// fields decodes keys, the contents of table (nil for the top level).
func (d *decoder) fields(table toml.Key, keys map[string]toml.Primitive, fields []field) {
	known := make([]string, len(fields))
	for i, f := range fields {
		known[i] = f.key
		if p, ok := keys[f.key]; ok {
			f.decode(d, append(slices.Clip(table), f.key), p)
		}
	}
	where := "known top-level keys"
	if table != nil {
		where = fmt.Sprintf("known keys in [%s]", table)
	}
	for name, p := range keys {
		if slices.Contains(known, name) {
			continue
		}
		what := "key"
		switch d.value(p).(type) {
		case map[string]any, []map[string]any:
			what = "table"
		}
		d.problem(append(slices.Clip(table), name), p, "unknown %s (%s: %s)", what, where, strings.Join(known, ", "))
	}
}

// string returns the value p if it is a string, and otherwise records that
// want was expected.
func (d *decoder) string(key toml.Key, p toml.Primitive, want string) (string, bool) {
	v := d.value(p)
	s, ok := v.(string)
	if !ok {
		d.problem(key, p, "expected %s, got %s", want, typeName(v))
	}
	return s, ok
}

// value returns p as the toml library represents it when decoding into any.
func (d *decoder) value(p toml.Primitive) any {
	var v any
	// Decoding into an empty interface cannot fail: it stores the value as is.
	d.md.PrimitiveDecode(p, &v)
	return v
}

func (d *decoder) problem(key toml.Key, p toml.Primitive, format string, args ...any) {
	d.problems = append(d.problems, Problem{
		File: d.file,
		Line: d.line(key, p),
		Key:  key.String(),
		Msg:  fmt.Sprintf(format, args...),
	})
}

// line returns the line on which key, whose value is p, is defined, or 0 if
// unknown.
func (d *decoder) line(key toml.Key, p toml.Primitive) int {
	if l := d.locate(p); l > 0 {
		return l
	}
	// A table that exists only through dotted keys ("boot.panic = ...") has
	// no position of its own: use that of the first key under it. Keys lists
	// keys in file order, and never implicit tables.
	for _, k := range d.md.Keys() {
		if len(k) > len(key) && slices.Equal(k[:len(key)], key) {
			return d.locate(d.descend(p, k[len(key):]))
		}
	}
	return 0
}

// locate returns the line of the key p was decoded from, or 0 if the toml
// library has none (implicit tables).
//
// toml v1.6.0 records every key's position but keeps it unexported in
// MetaData; it reveals it only in the ParseError it returns when an
// Unmarshaler fails. So we decode p into locator, which always fails.
func (d *decoder) locate(p toml.Primitive) int {
	var pe toml.ParseError
	if err := d.md.PrimitiveDecode(p, &locator{}); errors.As(err, &pe) {
		return pe.Position.Line
	}
	return 0
}

type locator struct{}

var errLocate = errors.New("locating key")

func (*locator) UnmarshalTOML(any) error { return errLocate }

// descend returns the value at path under the table p.
func (d *decoder) descend(p toml.Primitive, path toml.Key) toml.Primitive {
	for _, name := range path {
		var keys map[string]toml.Primitive
		if d.md.PrimitiveDecode(p, &keys) != nil {
			return toml.Primitive{}
		}
		p = keys[name]
	}
	return p
}

// typeName names the TOML type of a value decoded into any.
func typeName(v any) string {
	switch v.(type) {
	case string:
		return "string"
	case int64:
		return "integer"
	case float64:
		return "float"
	case bool:
		return "boolean"
	case time.Time:
		return "datetime"
	case map[string]any:
		return "table"
	case []map[string]any:
		return "array of tables"
	case []any:
		return "array"
	}
	return fmt.Sprintf("%T", v)
}
