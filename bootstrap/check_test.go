package bootstrap

import (
	"context"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		want      []string
	}{
		{"unknown action", `
[[step]]
id = "a"
action = "mkae"
`, []string{`test.toml: step a: unknown action "mkae"; the actions are extra, fail, join, lacking, make`}},
		{"no action", `
[[step]]
id = "a"
`, []string{`test.toml: step a has no action: add action = "NAME"`}},
		{"unknown step reference", `
[[step]]
id = "a"
action = "make"
input = { name = "{{ .b.id }}" }
`, []string{"test.toml: step a: input name uses output id of step b, and there is no such step; the steps are a"}},
		{"unknown step in after", `
[[step]]
id = "a"
action = "make"
input = { name = "x" }
after = ["c"]
`, []string{"test.toml: step a: after names step c, and there is no such step; the steps are a"}},
		{"missing output", `
[[step]]
id = "a"
action = "join"
input = { a = "x", b = "y" }

[[step]]
id = "b"
action = "make"
input = { name = "{{ .a.id }}" }
`, []string{"test.toml: step b uses output id of step a, which action join does not give: it gives joined"}},
		{"unknown variable", `
[[step]]
id = "a"
action = "make"
input = { name = "{{ .vars.nmae }}" }
`, []string{"test.toml: step a: input name uses variable nmae, which is not given; the variables are name, size"}},
		{"cycle", `
[[step]]
id = "first"
action = "make"
input = { name = "x" }

[[step]]
id = "a"
action = "join"
input = { a = "{{ .b.joined }}", b = "{{ .first.id }}" }

[[step]]
id = "b"
action = "join"
input = { a = "{{ .c.id }}", b = "{{ .first.id }}" }

[[step]]
id = "c"
action = "make"
input = { name = "x" }
after = ["a"]
`, []string{"test.toml: steps a → b → c → a form a cycle (each needs the next): remove one of these references or after entries"}},
		{"self reference", `
[[step]]
id = "a"
action = "make"
input = { name = "x" }
after = ["a"]
`, []string{"steps a → a form a cycle"}},
		{"missing input", `
[[step]]
id = "a"
action = "join"
input = { a = "x" }
`, []string{"test.toml: step a: action join needs input b: add it under [step.input]"}},
		{"unknown input", `
[[step]]
id = "a"
action = "make"
input = { name = "x", nmae = "y" }
`, []string{"test.toml: step a: action make has no input nmae: it takes name"}},
		{"duplicate id", `
[[step]]
id = "a"
action = "make"
input = { name = "x" }

[[step]]
id = "a"
action = "make"
input = { name = "y" }
`, []string{"test.toml: steps 1 and 2 both have id a: step ids must be unique"}},
		{"invalid id", `
[[step]]
id = "Big_Step"
action = "make"
input = { name = "x" }
`, []string{`test.toml: step 1: id "Big_Step" is invalid: use lowercase letters, digits and '-'`}},
		{"no id", `
[[step]]
action = "make"
input = { name = "x" }
`, []string{`test.toml: step 1 has no id: add id = "NAME"`}},
		{"vars is reserved", `
[[step]]
id = "vars"
action = "make"
input = { name = "x" }
`, []string{`step 1: id "vars" is reserved`}},
		{"template syntax", `
[[step]]
id = "a"
action = "make"
input = { name = "{{ .vars.name " }
`, []string{"test.toml: step a: input name: template: name:1: unclosed action"}},
		{"range hides references", `
[[step]]
id = "a"
action = "make"
input = { name = "{{ range .vars }}{{ . }}{{ end }}" }
`, []string{"test.toml: step a: input name: {{range .vars}}{{.}}{{end}} hides what it uses"}},
		{"dot hides references", `
[[step]]
id = "a"
action = "make"
input = { name = "{{ index . .vars.name }}" }
`, []string{"test.toml: step a: input name: {{ . }} hides what it uses: write .vars.NAME or .STEP.OUTPUT"}},
		{"whole step", `
[[step]]
id = "a"
action = "make"
input = { name = "{{ .vars }}" }
`, []string{"test.toml: step a: input name: .vars is a whole step or the whole variables: name one, as in .vars.NAME"}},
		{"field of a string", `
[[step]]
id = "a"
action = "make"
input = { name = "{{ .vars.name.first }}" }
`, []string{"test.toml: step a: input name: .vars.name.first: outputs and variables are strings, so .vars.name has no field first"}},
		{"every problem", `
[[step]]
id = "a"
action = "mkae"

[[step]]
id = "b"
action = "make"
input = { name = "{{ .vars.nmae }}" }
`, []string{`step a: unknown action "mkae"`, "step b: input name uses variable nmae"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := mustParse(t, tc.src).Check(newWorld().actions(), []string{"size", "name"})
			wantErr(t, err, tc.want...)
			if tc.name != "every problem" && strings.Count(err.Error(), "\n") > 0 {
				t.Errorf("more than one problem reported:\n%v", err)
			}
		})
	}
}

func TestCheckAcceptsReferences(t *testing.T) {
	// index reaches a step whose ID has a '-', which a field cannot.
	m := mustParse(t, `
[[step]]
id = "make-x"
action = "make"
input = { name = "x" }

[[step]]
id = "b"
action = "join"
[step.input]
a = '{{ index . "make-x" "id" }}'
b = '{{ if eq .vars.size "big" }}{{ $.vars.name | printf "%s!" }}{{ else }}{{ index .vars "name" }}{{ end }}'
`)
	p, err := m.plan(newWorld().actions(), []string{"size", "name"})
	if err != nil {
		t.Fatal(err)
	}
	if got := p.steps[1].uses; len(got) != 1 || len(got["make-x"]) != 1 || got["make-x"][0] != "id" {
		t.Errorf("step b uses %v, want make-x: [id]", got)
	}
	if got := p.steps[1].deps; len(got) != 1 || got[0] != 0 {
		t.Errorf("step b depends on %v, want [0]", got)
	}
	rep, err := (&Runner{Actions: newWorld().actions(), Vars: map[string]string{"size": "big", "name": "n"}}).Run(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	if got := rep.Steps[1].Outputs["joined"]; got != "id-x+n!" {
		t.Errorf("b joined %q, want id-x+n!", got)
	}
}
