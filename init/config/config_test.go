package config_test

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/plinth-os/plinth/init/config"
)

// TestGood loads every file in testdata/good and compares it with what it
// should decode to.
func TestGood(t *testing.T) {
	withDefaults := func(edit func(m *config.Machine)) config.Machine {
		m := config.Default()
		edit(&m)
		return m
	}
	want := map[string]config.Machine{
		"empty.toml":          config.Default(),
		"comments-only.toml":  config.Default(),
		"empty-hostname.toml": config.Default(),
		"full.toml": {
			Hostname: "web1.example.com",
			Boot: config.Boot{
				Panic:           config.PanicHold,
				PanicCountdown:  config.Duration{90 * time.Second},
				ShutdownTimeout: config.Duration{30 * time.Second},
			},
		},
		"partial.toml": withDefaults(func(m *config.Machine) {
			m.Boot.Panic = config.PanicHold
		}),
		"dotted-keys.toml": withDefaults(func(m *config.Machine) {
			m.Boot.Panic = config.PanicHold
			m.Boot.ShutdownTimeout.Duration = 2 * time.Minute
		}),
		"inline-table.toml": withDefaults(func(m *config.Machine) {
			m.Hostname = "db-2"
			m.Boot.PanicCountdown.Duration = 0
			m.Boot.ShutdownTimeout.Duration = 5 * time.Minute
		}),
		"lowest.toml": withDefaults(func(m *config.Machine) {
			m.Hostname = "rack42-row7-datacenter-east-example-company-with-long-name.io123"
			m.Boot.PanicCountdown.Duration = 0
			m.Boot.ShutdownTimeout.Duration = time.Second
		}),
		"highest.toml": withDefaults(func(m *config.Machine) {
			m.Hostname = "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijk"
			m.Boot.PanicCountdown.Duration = 10 * time.Minute
			m.Boot.ShutdownTimeout.Duration = 5 * time.Minute
		}),
	}
	paths, err := filepath.Glob("testdata/good/*.toml")
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) != len(want) {
		t.Errorf("testdata/good has %d files, the test expects %d: keep them in sync", len(paths), len(want))
	}
	for _, path := range paths {
		t.Run(filepath.Base(path), func(t *testing.T) {
			w, ok := want[filepath.Base(path)]
			if !ok {
				t.Fatalf("no expected config for %s", path)
			}
			got, err := config.Load(path)
			if err != nil {
				t.Fatal(err)
			}
			if got != w {
				t.Errorf("got  %+v\nwant %+v", got, w)
			}
		})
	}
}

// TestBad parses every file in testdata/bad. Each starts with one
// "# want: <line of the error>" comment per expected problem, in order; the
// error must consist of exactly those lines.
func TestBad(t *testing.T) {
	paths, err := filepath.Glob("testdata/bad/*.toml")
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) == 0 {
		t.Fatal("no files in testdata/bad")
	}
	for _, path := range paths {
		name := filepath.Base(path)
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			want := wantLines(data)
			if len(want) == 0 {
				t.Fatalf("%s has no # want: lines", path)
			}
			m, err := config.Parse(name, data)
			if err == nil {
				t.Fatalf("parsed without error into %+v", m)
			}
			if m != (config.Machine{}) {
				t.Errorf("returned %+v along with the error, want the zero Machine", m)
			}
			var cerr *config.Error
			if !errors.As(err, &cerr) {
				t.Fatalf("error %T is not a *config.Error: %v", err, err)
			}
			got := strings.Split(err.Error(), "\n")
			if len(cerr.Problems) != len(got) {
				t.Errorf("%d problems but %d error lines", len(cerr.Problems), len(got))
			}
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}

func wantLines(data []byte) []string {
	var want []string
	for line := range strings.Lines(string(data)) {
		if w, ok := strings.CutPrefix(strings.TrimSpace(line), "# want: "); ok {
			want = append(want, w)
		}
	}
	return want
}

func TestProblemFields(t *testing.T) {
	_, err := config.Parse("machine.toml", []byte("[boot]\npanic = 3\n"))
	var cerr *config.Error
	if !errors.As(err, &cerr) {
		t.Fatalf("got %v, want a *config.Error", err)
	}
	want := []config.Problem{{File: "machine.toml", Line: 2, Key: "boot.panic", Msg: "expected a string, got integer"}}
	if len(cerr.Problems) != 1 || cerr.Problems[0] != want[0] {
		t.Errorf("got %+v, want %+v", cerr.Problems, want)
	}
}

func TestLoadMissing(t *testing.T) {
	_, err := config.Load(filepath.Join(t.TempDir(), "plinth.toml"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("got %v, want an error wrapping fs.ErrNotExist", err)
	}
}

// TestEncodeRoundTrip checks that the struct tags, which the toml encoder
// uses, name the same keys as the schema Parse enforces.
func TestEncodeRoundTrip(t *testing.T) {
	m := config.Machine{
		Hostname: "web1",
		Boot: config.Boot{
			Panic:           config.PanicHold,
			PanicCountdown:  config.Duration{time.Minute},
			ShutdownTimeout: config.Duration{20 * time.Second},
		},
	}
	got, err := config.Parse("encoded", encode(t, m))
	if err != nil {
		t.Fatal(err)
	}
	if got != m {
		t.Errorf("got  %+v\nwant %+v", got, m)
	}
}

func encode(t testing.TB, m config.Machine) []byte {
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(m); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestDurationText(t *testing.T) {
	var d config.Duration
	if err := d.UnmarshalText([]byte("1m30s")); err != nil {
		t.Fatal(err)
	}
	if d.Duration != 90*time.Second {
		t.Errorf("UnmarshalText(1m30s) = %v", d.Duration)
	}
	text, err := d.MarshalText()
	if err != nil || string(text) != "1m30s" {
		t.Errorf("MarshalText = %q, %v; want 1m30s", text, err)
	}
	if err := d.UnmarshalText([]byte("soon")); err == nil {
		t.Error("UnmarshalText(soon) succeeded")
	}
}

// FuzzParse checks that Parse never panics, that every problem it reports
// points into the file, and that whatever it accepts survives encoding.
func FuzzParse(f *testing.F) {
	seeds, err := filepath.Glob("testdata/*/*.toml")
	if err != nil {
		f.Fatal(err)
	}
	for _, path := range seeds {
		data, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := config.Parse("fuzz.toml", data)
		if err == nil {
			again, err := config.Parse("encoded", encode(t, m))
			if err != nil || again != m {
				t.Fatalf("accepted %+v, but its encoding parses to %+v, %v", m, again, err)
			}
			return
		}
		var cerr *config.Error
		if !errors.As(err, &cerr) {
			t.Fatalf("error %T is not a *config.Error: %v", err, err)
		}
		if len(cerr.Problems) == 0 {
			t.Fatal("*config.Error with no problems")
		}
		lines := bytes.Count(data, []byte("\n")) + 1
		for _, p := range cerr.Problems {
			wholeFile := p.Line == 0 && p.Key == ""
			if !wholeFile && (p.Line < 1 || p.Line > lines) {
				t.Errorf("problem %q: line %d is outside the file's %d lines", p, p.Line, lines)
			}
			if p.File != "fuzz.toml" {
				t.Errorf("problem %q names file %q", p, p.File)
			}
		}
	})
}
