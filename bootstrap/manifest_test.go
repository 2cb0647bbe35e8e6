package bootstrap

import (
	"reflect"
	"testing"
)

func TestParseManifest(t *testing.T) {
	m := mustParse(t, `
[[step]]
id = "hosts"
action = "wait-hosts"
[step.input]
count = "{{ .vars.expect }}"
role = "controller"

[[step]]
id = "controller"
action = "start-controller"
after = ["hosts"]
input = { hosts = "{{ .hosts.controller_hosts }}" }
`)
	want := &Manifest{Name: "test.toml", Steps: []Step{
		{ID: "hosts", Action: "wait-hosts", Input: map[string]string{"count": "{{ .vars.expect }}", "role": "controller"}},
		{ID: "controller", Action: "start-controller", After: []string{"hosts"}, Input: map[string]string{"hosts": "{{ .hosts.controller_hosts }}"}},
	}}
	if !reflect.DeepEqual(m, want) {
		t.Errorf("got %+v\nwant %+v", m, want)
	}
}

func TestParseManifestStrict(t *testing.T) {
	for _, tc := range []struct {
		name, src, want string
	}{
		{"syntax", "[[step]]\nid = \"a\nx", "test.toml:2: invalid TOML"},
		{"unknown top-level key", "[[steps]]\nid = \"a\"\n",
			`test.toml:1: unknown key "steps": a manifest has only [[step]] tables`},
		{"step not a table", "step = 1\n", "test.toml:1: step must be a list of tables: write each step as [[step]]"},
		{"unknown step key", "[[step]]\nid = \"a\"\nactoin = \"make\"\n",
			`test.toml:3: step "a": unknown key "actoin": a step has only the keys id, action, input, after`},
		// The toml library knows the line of a key only in the last step
		// that has it; in an earlier one the message names the step alone.
		{"unknown key in earlier step", "[[step]]\nid = \"a\"\nactoin = \"x\"\n[[step]]\nid = \"b\"\nactoin = \"y\"\n",
			`test.toml: step "a": unknown key "actoin"`},
		{"unknown key, no id", "[[step]]\naction = \"make\"\n[[step]]\nwhy = 1\n",
			`test.toml:4: step 2: unknown key "why"`},
		{"id not a string", "[[step]]\nid = 7\n", "test.toml:2: step 1: id must be a string: quote it"},
		{"input not a string", "[[step]]\nid = \"a\"\n[step.input]\nname = \"x\"\ncount = 3\n",
			`test.toml:5: step "a": input count must be a string: quote it`},
		{"input not a table", "[[step]]\nid = \"a\"\ninput = \"x\"\n",
			`test.toml:3: step "a": input must be a table`},
		{"after not a list", "[[step]]\nid = \"a\"\nafter = \"b\"\n",
			`test.toml:3: step "a": after must be a list of step ids, like after = ["a", "b"]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseManifest("test.toml", []byte(tc.src))
			wantErr(t, err, tc.want)
		})
	}
}
