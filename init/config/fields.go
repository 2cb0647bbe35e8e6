package config

import (
	"fmt"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// A field is one key of a TOML table: how to decode its value, and how to
// encode it back.
type field struct {
	key string
	// decode stores the value p found at `at`, or records why it cannot.
	decode func(d *decoder, at path, p toml.Primitive)
	// encode returns the value to write, or nil to leave the key out.
	encode func() any
}

// encodeFields returns the table fields describe, for the toml encoder.
func encodeFields(fields []field) map[string]any {
	t := map[string]any{}
	for _, f := range fields {
		if v := f.encode(); v != nil {
			t[f.key] = v
		}
	}
	return t
}

// encodeTable is encodeFields, or nil for an empty table.
func encodeTable(fields []field) any {
	if t := encodeFields(fields); len(t) > 0 {
		return t
	}
	return nil
}

func tableField(name string, fields []field) field {
	return field{
		key: name,
		decode: func(d *decoder, at path, p toml.Primitive) {
			if keys, ok := d.table(at, p); ok {
				d.fields(at, keys, fields, fmt.Sprintf("known keys in [%s]", at.key))
			}
		},
		encode: func() any { return encodeTable(fields) },
	}
}

// tablesField is an array of tables, written as [[name]] sections or as an
// array of inline tables. Each entry is decoded into a T by the fields that
// entryFields returns for it; seen, if not nil, records the entries under
// name, for checks that run once the whole config is decoded.
func tablesField[T any](name string, dst *[]T, entryFields func(*T) []field, seen map[string][]entry) field {
	return field{
		key: name,
		decode: func(d *decoder, at path, p toml.Primitive) {
			entries, ok := d.tables(at, p, false, fmt.Sprintf("an array of tables ([[%s]])", at.key))
			if !ok {
				return
			}
			where := fmt.Sprintf("known keys in [[%s]]", at.key)
			for _, e := range entries {
				var v T
				d.fields(e.at, e.keys, entryFields(&v), where)
				*dst = append(*dst, v)
			}
			if seen != nil {
				seen[name] = entries
			}
		},
		encode: func() any {
			if len(*dst) == 0 {
				return nil
			}
			var out []map[string]any
			for i := range *dst {
				out = append(out, encodeFields(entryFields(&(*dst)[i])))
			}
			return out
		},
	}
}

// inlineTablesField is an array of inline tables, each one a what (e.g. a
// route); example shows one.
func inlineTablesField[T any](name string, dst *[]T, what, example string, entryFields func(*T) []field) field {
	return field{
		key: name,
		decode: func(d *decoder, at path, p toml.Primitive) {
			entries, ok := d.tables(at, p, true, "an array of inline tables such as "+example)
			if !ok {
				return
			}
			for _, e := range entries {
				var v T
				d.fields(e.at, e.keys, entryFields(&v), "known keys in a "+what)
				*dst = append(*dst, v)
			}
		},
		encode: func() any {
			if len(*dst) == 0 {
				return nil
			}
			var out []inlineTable
			for i := range *dst {
				out = append(out, encodeFields(entryFields(&(*dst)[i])))
			}
			return out
		},
	}
}

// inlineTable is a table the toml encoder writes inline, as
// { key = value, ... }. Its values must be single-line.
type inlineTable map[string]any

func (t inlineTable) MarshalTOML() ([]byte, error) {
	b, err := toml.Marshal(map[string]any(t))
	if err != nil {
		return nil, err
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return []byte("{ " + strings.Join(lines, ", ") + " }"), nil
}

func boolField(name string, dst *bool) field {
	return field{
		key: name,
		decode: func(d *decoder, at path, p toml.Primitive) {
			v := d.value(p)
			b, ok := v.(bool)
			if !ok {
				d.problem(at, p, "expected true or false, got %s", typeName(v))
				return
			}
			*dst = b
		},
		encode: func() any { return *dst },
	}
}

// intField accepts integers from lo to hi, inclusive.
func intField(name string, dst *int, lo, hi int) field {
	return field{
		key: name,
		decode: func(d *decoder, at path, p toml.Primitive) {
			v := d.value(p)
			n, ok := v.(int64)
			if !ok {
				d.problem(at, p, "expected an integer, got %s", typeName(v))
				return
			}
			if n < int64(lo) || n > int64(hi) {
				d.problem(at, p, "%d is out of range; use %d to %d", n, lo, hi)
				return
			}
			*dst = int(n)
		},
		encode: func() any { return int64(*dst) },
	}
}

// A text is a kind of value written as a TOML string.
type text[T any] struct {
	want string // what the string holds, e.g. `an IP address string such as "192.0.2.1"`
	// parse returns the value s holds, or an error that says what is wrong
	// with s and how to write it.
	parse func(s string) (T, error)
	// format writes a value back; "" leaves it out.
	format func(T) string
}

// textField is a value of kind k.
func textField[T any](name string, dst *T, k text[T]) field {
	return field{
		key: name,
		decode: func(d *decoder, at path, p toml.Primitive) {
			s, ok := d.string(at, p, k.want)
			if !ok {
				return
			}
			v, err := k.parse(s)
			if err != nil {
				d.problem(at, p, "%v", err)
				return
			}
			*dst = v
		},
		encode: func() any {
			if s := k.format(*dst); s != "" {
				return s
			}
			return nil
		},
	}
}

// textsField is an array of values of kind k.
func textsField[T any](name string, dst *[]T, k text[T]) field {
	return field{
		key: name,
		decode: func(d *decoder, at path, p toml.Primitive) {
			switch v := d.value(p).(type) {
			case []any:
				var list []T
				for i, e := range v {
					s, ok := e.(string)
					if !ok {
						d.problem(at.index(i, at.in), p, "expected %s, got %s", k.want, typeName(e))
						continue
					}
					x, err := k.parse(s)
					if err != nil {
						d.problem(at.index(i, at.in), p, "%v", err)
						continue
					}
					list = append(list, x)
				}
				*dst = list
			case string:
				d.problem(at, p, "expected an array of strings, got string; write it in brackets: [%q]", v)
			default:
				d.problem(at, p, "expected an array of strings, got %s", typeName(v))
			}
		},
		encode: func() any {
			if len(*dst) == 0 {
				return nil
			}
			var out []string
			for _, x := range *dst {
				out = append(out, k.format(x))
			}
			return out
		},
	}
}

// plainString is any string that check accepts.
func plainString(check func(string) error) text[string] {
	return text[string]{
		want:   "a string",
		parse:  func(s string) (string, error) { return s, check(s) },
		format: func(s string) string { return s },
	}
}

var anyString = plainString(func(string) error { return nil })

// duration accepts durations from lo to hi, inclusive.
// offOr accepts "0s" (off) besides what d accepts.
func offOr(d text[time.Duration]) text[time.Duration] {
	parse := d.parse
	d.parse = func(s string) (time.Duration, error) {
		if v, err := time.ParseDuration(s); err == nil && v == 0 {
			return 0, nil
		}
		v, err := parse(s)
		if err != nil {
			return 0, fmt.Errorf("%w, or 0s for off", err)
		}
		return v, nil
	}
	return d
}

func duration(lo, hi time.Duration) text[time.Duration] {
	return text[time.Duration]{
		want: `a duration string such as "5s"`,
		parse: func(s string) (time.Duration, error) {
			var v Duration
			if err := v.UnmarshalText([]byte(s)); err != nil {
				return 0, fmt.Errorf(`%q is not a duration; write it like "5s" or "1m30s"`, s)
			}
			if v.Duration < lo || v.Duration > hi {
				return 0, fmt.Errorf("%v is out of range; use %v to %v", v, lo, hi)
			}
			return v.Duration, nil
		},
		format: time.Duration.String,
	}
}
