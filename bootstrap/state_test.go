package bootstrap

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestFileStateRoundTrip(t *testing.T) {
	ctx := context.Background()
	s := FileState{Path: filepath.Join(t.TempDir(), "new", "state.json")}
	got, err := s.Load(ctx)
	if err != nil || len(got) != 0 {
		t.Fatalf("Load of a missing file = %v, %v; want no state", got, err)
	}
	if err := s.Save(ctx, "a", map[string]string{"id": "1"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Save(ctx, "b", map[string]string{"x": "2", "y": "3"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Save(ctx, "a", map[string]string{"id": "4"}); err != nil {
		t.Fatal(err)
	}
	got, err = s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]map[string]string{"a": {"id": "4"}, "b": {"x": "2", "y": "3"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Load = %v, want %v", got, want)
	}
	fi, err := os.Stat(s.Path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %v, want 0600: outputs may hold secrets", fi.Mode())
	}
}

func TestFileStateWritesAtomically(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := FileState{Path: filepath.Join(dir, "state.json")}
	if err := s.Save(ctx, "a", map[string]string{"id": "old"}); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(s.Path)
	if err != nil {
		t.Fatal(err)
	}
	// A reader that opened the file before a save keeps reading the whole
	// old content: the new one is a new file renamed over it, not a
	// rewrite in place that a crash could leave half done.
	f, err := os.Open(s.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := s.Save(ctx, "a", map[string]string{"id": "new"}); err != nil {
		t.Fatal(err)
	}
	old, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	if string(old) != string(before) {
		t.Errorf("the file was rewritten in place: an open reader saw %q, want %q", old, before)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("directory holds %q, want only state.json", names)
	}
}

func TestFileStateCorrupt(t *testing.T) {
	s := FileState{Path: filepath.Join(t.TempDir(), "state.json")}
	if err := os.WriteFile(s.Path, []byte(`{"a": {"id": `), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := s.Load(context.Background())
	wantErr(t, err, "read bootstrap state "+s.Path+": unexpected end of JSON input; it is safe to delete it and run every step again")
}
