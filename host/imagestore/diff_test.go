package imagestore

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// A job's writes through the overlay, packed by WriteLayer and stacked on
// the image as a new layer, show the same tree: new and changed files,
// a deletion, a directory replaced wholesale, a hardlink, a symlink.
func TestWriteLayerRoundTrip(t *testing.T) {
	s := openStore(t)
	base, top := baseLayer(t), topLayer(t)
	img := image(t, base, top)
	importOne(t, s, writeDockerSave(t, img, "example.com/app:v1"))
	jobDir, rootfs := mount(t, s, "example.com/app:v1")

	write := func(p, body string) {
		t.Helper()
		os.MkdirAll(filepath.Dir(filepath.Join(rootfs, p)), 0o755)
		if err := os.WriteFile(filepath.Join(rootfs, p), []byte(body), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	write("app/built/out.txt", "built\n")
	write("etc/motd", "changed\n")
	if err := os.Remove(filepath.Join(rootfs, "etc/hello")); err != nil {
		t.Fatal(err)
	}
	// Removing a lower directory and making it again makes it opaque.
	if err := os.RemoveAll(filepath.Join(rootfs, "bin")); err != nil {
		t.Fatal(err)
	}
	write("bin/new", "replaced\n")
	if err := os.Link(filepath.Join(rootfs, "app/built/out.txt"), filepath.Join(rootfs, "app/built/again.txt")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("built/out.txt", filepath.Join(rootfs, "app/link")); err != nil {
		t.Fatal(err)
	}

	var buf bytes.Buffer
	if err := WriteLayer(&buf, filepath.Join(jobDir, "upper")); err != nil {
		t.Fatal(err)
	}
	var again bytes.Buffer
	if err := WriteLayer(&again, filepath.Join(jobDir, "upper")); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Error("two layers of the same upper directory differ")
	}
	b := buf.Bytes()
	diff, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	importOne(t, s, writeDockerSave(t, image(t, base, top, diff), "example.com/app:built"))
	_, built := mount(t, s, "example.com/app:built")

	for p, want := range map[string]string{
		"app/built/out.txt":   "built\n",
		"app/built/again.txt": "built\n",
		"app/link":            "built\n",
		"etc/motd":            "changed\n",
		"bin/new":             "replaced\n",
		"data/new":            "new\n",
	} {
		if got := readFile(t, filepath.Join(built, p)); got != want {
			t.Errorf("%s = %q, want %q", p, got, want)
		}
	}
	assertAbsent(t, filepath.Join(built, "etc/hello"))
	if got := dirNames(t, filepath.Join(built, "bin")); !slices.Equal(got, []string{"new"}) {
		t.Errorf("bin/ holds %v, want [new] (the old directory hidden)", got)
	}
	a, _ := os.Stat(filepath.Join(built, "app/built/out.txt"))
	c, _ := os.Stat(filepath.Join(built, "app/built/again.txt"))
	if !os.SameFile(a, c) {
		t.Error("the hardlink came back as a copy")
	}
	if a.Mode().Perm() != 0o640 {
		t.Errorf("out.txt mode %v, want 0640", a.Mode().Perm())
	}
}
