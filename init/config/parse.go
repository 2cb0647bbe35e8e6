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
	d.fields(path{in: &scope{data: data, md: md}}, root, machineFields(&m), "known top-level keys")
	if len(d.problems) > 0 {
		slices.SortStableFunc(d.problems, compareProblems)
		return Machine{}, &Error{Problems: d.problems}
	}
	m.Network.Hostname = m.Hostname
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

// decoder walks one parsed file against the schema, collecting problems.
type decoder struct {
	file     string
	md       toml.MetaData // decodes values; lines come from each path's scope
	problems []Problem
}

// fields decodes keys, the contents of the table at `at`. where lists the
// known keys in messages about unknown ones, e.g. "known keys in [boot]".
func (d *decoder) fields(at path, keys map[string]toml.Primitive, fields []field, where string) {
	known := make([]string, len(fields))
	for i, f := range fields {
		known[i] = f.key
		if p, ok := keys[f.key]; ok {
			f.decode(d, at.child(f.key), p)
		}
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
		d.problem(at.child(name), p, "unknown %s (%s: %s)", what, where, strings.Join(known, ", "))
	}
}

// table returns the keys of the table p, or records that p is no table.
func (d *decoder) table(at path, p toml.Primitive) (map[string]toml.Primitive, bool) {
	if v := d.value(p); !isTable(v) {
		d.problem(at, p, "expected a table, got %s", typeName(v))
		return nil, false
	}
	var keys map[string]toml.Primitive
	if err := d.md.PrimitiveDecode(p, &keys); err != nil {
		d.problem(at, p, "%v", err)
		return nil, false
	}
	return keys, true
}

// maxEntries bounds arrays of tables. Locating a problem in one costs a
// parse of the file per entry (see entryScopes); real configs have a few.
const maxEntries = 256

// An entry is one table of an array of tables.
type entry struct {
	at   path
	p    toml.Primitive
	keys map[string]toml.Primitive
}

// tables returns the entries of the array of tables p, or records why it is
// none. It accepts [[name]] sections and name = [{...}, ...] alike unless
// inlineOnly, in which case want describes the value for messages.
func (d *decoder) tables(at path, p toml.Primitive, inlineOnly bool, want string) ([]entry, bool) {
	switch v := d.value(p).(type) {
	case []map[string]any:
		if inlineOnly {
			d.problem(at, p, "expected %s, got array of tables", want)
			return nil, false
		}
	case []any:
		ok := true
		for i, e := range v {
			if !isTable(e) {
				d.problem(at.index(i, at.in), p, "expected a table, got %s", typeName(e))
				ok = false
			}
		}
		if !ok {
			return nil, false
		}
	default:
		d.problem(at, p, "expected %s, got %s", want, typeName(v))
		return nil, false
	}
	var ps []toml.Primitive
	if err := d.md.PrimitiveDecode(p, &ps); err != nil {
		d.problem(at, p, "%v", err)
		return nil, false
	}
	if len(ps) > maxEntries {
		d.problem(at, p, "%d entries; at most %d are supported", len(ps), maxEntries)
		return nil, false
	}
	scopes := entryScopes(at, p, ps)
	entries := make([]entry, len(ps))
	for i, ep := range ps {
		entries[i] = entry{at: at.index(i, scopes[i]), p: ep}
		// Every element is a table (checked above), so this cannot fail.
		d.md.PrimitiveDecode(ep, &entries[i].keys)
	}
	return entries, true
}

// string returns the value p if it is a string, and otherwise records that
// want was expected.
func (d *decoder) string(at path, p toml.Primitive, want string) (string, bool) {
	v := d.value(p)
	s, ok := v.(string)
	if !ok {
		d.problem(at, p, "expected %s, got %s", want, typeName(v))
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

// problem records a problem with the value p at `at`.
func (d *decoder) problem(at path, p toml.Primitive, format string, args ...any) {
	d.problems = append(d.problems, Problem{
		File: d.file,
		Line: at.in.line(at.key, p),
		Key:  at.name,
		Msg:  fmt.Sprintf(format, args...),
	})
}

// keyProblem records a problem with key in the table p at `at`, whose keys
// are keys: on the key's line, or, when the file leaves key out, on the
// table's first line.
func (d *decoder) keyProblem(at path, p toml.Primitive, keys map[string]toml.Primitive, key, format string, args ...any) {
	k := at.child(key)
	line := at.in.line(at.key, p)
	if v, ok := keys[key]; ok {
		line = k.in.line(k.key, v)
	}
	d.problems = append(d.problems, Problem{File: d.file, Line: line, Key: k.name, Msg: fmt.Sprintf(format, args...)})
}

// A path is where a value is in the file.
type path struct {
	key  toml.Key // as the toml library knows it, without array indexes
	name string   // as problems show it, e.g. "network.vlan[1].link"
	in   *scope   // where to look up its line
}

func (at path) child(key string) path {
	name := toml.Key{key}.String()
	if at.name != "" {
		name = at.name + "." + name
	}
	return path{key: append(slices.Clip(at.key), key), name: name, in: at.in}
}

func (at path) index(i int, in *scope) path {
	return path{key: at.key, name: fmt.Sprintf("%s[%d]", at.name, i), in: in}
}

// A scope is the stretch of the file in which a value's line is looked up.
//
// The toml library keeps one position per dotted key, that of its last
// definition. In an array of tables every entry defines the same keys, so
// only the last entry can be looked up in the whole file; entry i is looked
// up in the file cut just before entry i+1, where it is the last.
type scope struct {
	data []byte
	md   toml.MetaData // of data
	// fixed, when not 0, is the line of everything in the scope: elements of
	// inline arrays but the last, whose keys have no position of their own.
	fixed int
	// find, when set, fills in the scope on first use: most configs have no
	// problems, and then no lines are needed.
	find func(*scope)
}

// entryScopes returns the scope of each entry ps of the array of tables p
// at `at`.
func entryScopes(at path, p toml.Primitive, ps []toml.Primitive) []*scope {
	scopes := make([]*scope, len(ps))
	for i := range ps {
		if i == len(ps)-1 {
			scopes[i] = at.in
			break
		}
		scopes[i] = &scope{find: func(s *scope) {
			parent := at.in.load()
			if parent.fixed != 0 || parent.md.Type(at.key...) != "ArrayHash" {
				// An inline array: the toml library keeps positions for its
				// last element only, so point at the array.
				s.fixed = parent.line(at.key, p)
				return
			}
			next := scopes[i+1].load()
			header := next.position(ps[i+1]) // entry i+1's [[name]]
			data := next.data[:header.Start]
			var root map[string]toml.Primitive
			md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&root)
			if err != nil {
				// Cannot happen: cutting before a [[header]] leaves whole
				// statements. Were it to, lines would point into the next
				// entry rather than nowhere.
				data, md = next.data, next.md
			}
			s.data, s.md = data, md
		}}
	}
	return scopes
}

func (s *scope) load() *scope {
	if find := s.find; find != nil {
		s.find = nil
		find(s)
	}
	return s
}

// line returns the line on which key, whose value is p, is defined, or 0 if
// unknown.
func (s *scope) line(key toml.Key, p toml.Primitive) int {
	s.load()
	if s.fixed != 0 {
		return s.fixed
	}
	if l := s.position(p).Line; l > 0 {
		return l
	}
	// A table that exists only through dotted keys ("boot.panic = ...") has
	// no position of its own: use the first line of the keys under it. Keys
	// lists every key, and never implicit tables; in an entry's scope it
	// also lists earlier entries' keys, hence the look into p.
	line := 0
	for _, k := range s.md.Keys() {
		if len(k) <= len(key) || !slices.Equal(k[:len(key)], key) {
			continue
		}
		if v, ok := s.descend(p, k[len(key):]); ok {
			if l := s.position(v).Line; l > 0 && (line == 0 || l < line) {
				line = l
			}
		}
	}
	return line
}

// position returns the position of the key p was decoded from; it is zero
// if the toml library has none (implicit tables).
//
// toml v1.6.0 records every key's position but keeps it unexported in
// MetaData; it reveals it only in the ParseError it returns when an
// Unmarshaler fails. So we decode p into locator, which always fails.
func (s *scope) position(p toml.Primitive) toml.Position {
	var pe toml.ParseError
	if err := s.md.PrimitiveDecode(p, &locator{}); errors.As(err, &pe) {
		return pe.Position
	}
	return toml.Position{}
}

type locator struct{}

var errLocate = errors.New("locating key")

func (*locator) UnmarshalTOML(any) error { return errLocate }

// descend returns the value at path under the table p, if there is one.
func (s *scope) descend(p toml.Primitive, path toml.Key) (toml.Primitive, bool) {
	for _, name := range path {
		var keys map[string]toml.Primitive
		if s.md.PrimitiveDecode(p, &keys) != nil {
			return toml.Primitive{}, false
		}
		var ok bool
		if p, ok = keys[name]; !ok {
			return toml.Primitive{}, false
		}
	}
	return p, true
}

func isTable(v any) bool {
	_, ok := v.(map[string]any)
	return ok
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
