package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// checkConfig runs `plinth config check args...` and returns its stdout
// and the exit code main would give.
func checkConfig(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := configCheckCommand()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	err := cmd.Execute()
	var code exitCode
	switch {
	case err == nil:
		return out.String(), 0
	case errors.As(err, &code):
		if args[0] != "--json" && !strings.Contains(errOut.String(), "problem") {
			t.Errorf("config check %v: no summary of the problems on stderr: %q", args, errOut.String())
		}
		return out.String(), int(code)
	default:
		t.Fatalf("config check %v: %v", args, err)
		return "", -1
	}
}

// wantLines are a corpus file's "# want: " lines: the problems boot reports.
func wantLines(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for line := range strings.Lines(string(data)) {
		if w, ok := strings.CutPrefix(strings.TrimSpace(line), "# want: "); ok {
			want = append(want, w)
		}
	}
	return want
}

// Every file of the config parser's corpus: the good ones pass with exit
// 0, the bad ones print exactly the problems boot reports, with exit 1,
// in text and in JSON.
func TestConfigCheckCorpus(t *testing.T) {
	t.Chdir("../../init/config/testdata")
	good, _ := filepath.Glob("good/*.toml")
	bad, _ := filepath.Glob("bad/*.toml")
	if len(good) < 10 || len(bad) < 100 {
		t.Fatalf("corpus: %d good and %d bad files, want the parser's whole corpus", len(good), len(bad))
	}
	for _, path := range good {
		if out, code := checkConfig(t, path); code != 0 || out != path+": ok\n" {
			t.Errorf("%s: exit %d, %q; want exit 0 and ok", path, code, out)
		}
	}
	t.Chdir("bad")
	for _, path := range bad {
		name := filepath.Base(path)
		want := wantLines(t, name)
		out, code := checkConfig(t, name)
		if code != 1 || out != strings.Join(want, "\n")+"\n" {
			t.Errorf("%s: exit %d, output:\n%s\nwant exit 1 and:\n%s", name, code, out, strings.Join(want, "\n"))
		}
		out, code = checkConfig(t, "--json", name)
		var r checkReport
		if err := json.Unmarshal([]byte(out), &r); err != nil || code != 1 {
			t.Fatalf("%s --json: exit %d, %v:\n%s", name, code, err, out)
		}
		var texts []string
		for _, p := range r.Problems {
			texts = append(texts, p.Text)
			if p.Line < 1 && p.Key != "" || p.Message == "" || !strings.HasSuffix(p.Text, p.Message) {
				t.Errorf("%s --json: problem %+v", name, p)
			}
		}
		if r.Valid || r.File != name || strings.Join(texts, "\n") != strings.Join(want, "\n") {
			t.Errorf("%s --json: %+v; want invalid with the problems %q", name, r, want)
		}
	}
}

// Files that are not configs at all: each is a problem with the whole
// file, exit 1, and the JSON report says so too.
func TestConfigCheckMalformed(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	for _, c := range []struct {
		path, want string
	}{
		{write("binary.toml", []byte{0x7f, 'E', 'L', 'F', 0, 0xff, '\n', 0x01}), ":1"},
		{write("huge.toml", bytes.Repeat([]byte("# a comment line\n"), 70000)), "is larger than 1048576 bytes"},
		{write("unclosed.toml", []byte("hostname = \"web1\n[boot\n")), ":1"},
		{write("dup.toml", []byte("hostname = \"a\"\nhostname = \"b\"\n")), ":2"},
		{dir, "is a directory"},
		{filepath.Join(dir, "missing.toml"), "no such file or directory"},
	} {
		out, code := checkConfig(t, c.path)
		if code != 1 || !strings.Contains(out, c.want) || !strings.Contains(out, c.path) {
			t.Errorf("%s: exit %d, %q; want exit 1 naming the file and %q", c.path, code, out, c.want)
		}
		out, code = checkConfig(t, "--json", c.path)
		var r checkReport
		if err := json.Unmarshal([]byte(out), &r); err != nil || code != 1 || r.Valid || len(r.Problems) == 0 {
			t.Errorf("%s --json: exit %d, %v: %s", c.path, code, err, out)
		}
	}
	// An empty file is a machine on the defaults.
	if out, code := checkConfig(t, "--json", write("empty.toml", nil)); code != 0 || !strings.Contains(out, `"valid": true`) || !strings.Contains(out, `"problems": []`) {
		t.Errorf("empty file: exit %d, %s", code, out)
	}
}
