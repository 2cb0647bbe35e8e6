package imagestore

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sys/unix"
)

// The tests build real images with go-containerregistry, write them as
// `docker save` archives and OCI layouts, and mount them with overlayfs:
// they need root.

var mtime = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

// entry is one member of a layer tar.
type entry struct {
	hdr  tar.Header
	body string
}

func file(name, body string, mode int64) entry {
	return entry{tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(body)), ModTime: mtime}, body}
}

func dir(name string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: mtime}}
}

func symlink(name, target string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777, ModTime: mtime}}
}

func hardlink(name, target string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, ModTime: mtime}}
}

func layerTar(t *testing.T, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		if err := tw.WriteHeader(&e.hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// layer is a layer of the given entries (gzip-compressed when written).
func layer(t *testing.T, entries ...entry) v1.Layer {
	t.Helper()
	b := layerTar(t, entries...)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func diffID(t *testing.T, l v1.Layer) string {
	t.Helper()
	d, err := l.DiffID()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// baseLayer has one of each kind of entry; topLayer deletes and hides
// some of them.
func baseLayer(t *testing.T) v1.Layer {
	return layer(t,
		dir("etc/"),
		entry{tar.Header{Typeflag: tar.TypeReg, Name: "etc/hello", Mode: 0o640, Uid: 1000, Gid: 1001, Size: 6, ModTime: mtime}, "hello\n"},
		file("etc/gone", "deleted above\n", 0o644),
		hardlink("etc/hard", "etc/hello"),
		symlink("etc/link", "hello"),
		symlink("etc/abs", "/etc/hello"),
		dir("data/"),
		file("data/old", "hidden above\n", 0o644),
		dir("bin/"),
		file("bin/tool", "#!/bin/sh\n", 0o4755),
		entry{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "run/fifo", Mode: 0o600, ModTime: mtime}},
		entry{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3, ModTime: mtime}},
	)
}

func topLayer(t *testing.T) v1.Layer {
	return layer(t,
		file("etc/.wh.gone", "", 0),
		dir("data/"),
		file("data/.wh..wh..opq", "", 0),
		file("data/new", "new\n", 0o644),
		file("etc/motd", "welcome\n", 0o644),
	)
}

var testConfig = v1.Config{
	Env:        []string{"PATH=/bin", "PORT=5000"},
	Entrypoint: []string{"/bin/tool"},
	Cmd:        []string{"serve"},
	WorkingDir: "/data",
	User:       "1000:1001",
}

func image(t *testing.T, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.Config(img, testConfig)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func imageID(t *testing.T, img v1.Image) string {
	t.Helper()
	h, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	return h.String()
}

func writeDockerSave(t *testing.T, img v1.Image, tag string) string {
	t.Helper()
	ref, err := name.NewTag(tag)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "image.tar")
	if err := tarball.WriteToFile(p, ref, img); err != nil {
		t.Fatal(err)
	}
	return p
}

func writeLayout(t *testing.T, img v1.Image, ref string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "layout")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{annotationRefName: ref})); err != nil {
		t.Fatal(err)
	}
	return dir
}

// writeRawDockerSave writes a `docker save` archive by hand, with
// uncompressed layers as docker writes them, and the diffIDs given (nil:
// the layers' real ones).
func writeRawDockerSave(t *testing.T, tag string, layers [][]byte, diffIDs []string) string {
	t.Helper()
	cfg := v1.ConfigFile{OS: "linux", Architecture: runtime.GOARCH, Config: testConfig, RootFS: v1.RootFS{Type: "layers"}}
	var files []string
	for i, l := range layers {
		sum := sha256.Sum256(l)
		d := "sha256:" + hex.EncodeToString(sum[:])
		if diffIDs != nil {
			d = diffIDs[i]
		}
		h, err := v1.NewHash(d)
		if err != nil {
			t.Fatal(err)
		}
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, h)
		files = append(files, hex.EncodeToString(sum[:])+"/layer.tar")
	}
	config, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	manifest, err := json.Marshal([]tarball.Descriptor{{Config: "config.json", RepoTags: []string{tag}, Layers: files}})
	if err != nil {
		t.Fatal(err)
	}
	entries := []entry{file("config.json", string(config), 0o644)}
	for i, l := range layers {
		entries = append(entries, file(files[i], string(l), 0o644))
	}
	entries = append(entries, file("manifest.json", string(manifest), 0o644))
	p := filepath.Join(t.TempDir(), "raw.tar")
	if err := os.WriteFile(p, layerTar(t, entries...), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func openStore(t *testing.T) *Store {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (lchown, mknod, trusted xattrs, overlayfs)")
	}
	s, err := Open(filepath.Join(t.TempDir(), "images"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func importOne(t *testing.T, s *Store, p string) Image {
	t.Helper()
	imgs, err := s.Import(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 1 {
		t.Fatalf("imported %d images, want 1: %+v", len(imgs), imgs)
	}
	return imgs[0]
}

// mount mounts ref in a fresh job directory, unmounted at cleanup
// whatever the test does.
func mount(t *testing.T, s *Store, ref string) (jobDir, rootfs string) {
	t.Helper()
	jobDir = filepath.Join(t.TempDir(), "job")
	t.Cleanup(func() { unix.Unmount(filepath.Join(jobDir, "rootfs"), unix.MNT_DETACH) })
	rootfs, err := s.Mount(context.Background(), ref, jobDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	return jobDir, rootfs
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func assertAbsent(t *testing.T, p string) {
	t.Helper()
	if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s: want it absent, lstat says %v", p, err)
	}
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func mountCount(t *testing.T, dir string) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			n++
		}
	}
	return n
}

func TestImportDockerSaveUnpacksLayers(t *testing.T) {
	s := openStore(t)
	base, top := baseLayer(t), topLayer(t)
	img := importOne(t, s, writeDockerSave(t, image(t, base, top), "example.com/app:v1"))

	if want := []string{diffID(t, base), diffID(t, top)}; !slices.Equal(img.Layers, want) {
		t.Errorf("layers %v, want %v", img.Layers, want)
	}
	if !slices.Equal(img.Names, []string{"example.com/app:v1"}) {
		t.Errorf("names %v", img.Names)
	}
	want := ImageConfig{Env: testConfig.Env, Entrypoint: testConfig.Entrypoint, Cmd: testConfig.Cmd, WorkingDir: "/data", User: "1000:1001"}
	if got, _ := json.Marshal(img.Config); string(got) != string(mustJSON(t, want)) {
		t.Errorf("config %s, want %s", got, mustJSON(t, want))
	}
	if img.Size != int64(len("hello\n"+"deleted above\n"+"hidden above\n"+"#!/bin/sh\n"+"new\n"+"welcome\n")) {
		t.Errorf("size %d", img.Size)
	}

	l := s.layerDir(diffID(t, base))
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(l, "etc/hello"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != 1000 || st.Gid != 1001 || st.Mode&0o7777 != 0o640 || st.Mtim.Sec != mtime.Unix() || st.Nlink != 2 {
		t.Errorf("etc/hello: uid %d gid %d mode %o mtime %d nlink %d", st.Uid, st.Gid, st.Mode&0o7777, st.Mtim.Sec, st.Nlink)
	}
	if err := unix.Lstat(filepath.Join(l, "bin/tool"), &st); err != nil || st.Mode&0o7777 != 0o4755 {
		t.Errorf("bin/tool: mode %o (%v), want setuid 4755", st.Mode&0o7777, err)
	}
	if err := unix.Lstat(filepath.Join(l, "etc"), &st); err != nil || st.Mtim.Sec != mtime.Unix() {
		t.Errorf("etc/: mtime %d (%v), want the entry's", st.Mtim.Sec, err)
	}
	if err := unix.Lstat(filepath.Join(l, "run/fifo"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
		t.Errorf("run/fifo: mode %o (%v)", st.Mode, err)
	}
	if err := unix.Lstat(filepath.Join(l, "dev/null"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != unix.Mkdev(1, 3) {
		t.Errorf("dev/null: mode %o rdev %x (%v)", st.Mode, st.Rdev, err)
	}
	if target, err := os.Readlink(filepath.Join(l, "etc/abs")); target != "/etc/hello" {
		t.Errorf("etc/abs -> %q (%v)", target, err)
	}

	u := s.layerDir(diffID(t, top))
	if err := unix.Lstat(filepath.Join(u, "etc/gone"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("etc/gone: want an overlayfs whiteout (char 0:0), got mode %o rdev %x (%v)", st.Mode, st.Rdev, err)
	}
	buf := make([]byte, 8)
	if n, err := unix.Lgetxattr(filepath.Join(u, "data"), "trusted.overlay.opaque", buf); err != nil || string(buf[:n]) != "y" {
		t.Errorf("data/: trusted.overlay.opaque = %q (%v), want y", buf[:n], err)
	}
	assertAbsent(t, filepath.Join(u, "data/.wh..wh..opq"))
	if got := dirNames(t, s.path("tmp")); len(got) != 0 {
		t.Errorf("tmp/ holds %v after the import", got)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestGetByNameAndIDPrefix(t *testing.T) {
	s := openStore(t)
	built := image(t, baseLayer(t))
	img := importOne(t, s, writeDockerSave(t, built, "busybox:latest"))
	if img.ID != imageID(t, built) {
		t.Fatalf("ID %s, want the config's digest %s", img.ID, imageID(t, built))
	}
	hexID := strings.TrimPrefix(img.ID, "sha256:")
	for _, ref := range []string{"busybox", "busybox:latest", "docker.io/library/busybox:latest", img.ID, hexID, hexID[:12], "sha256:" + hexID[:12]} {
		got, err := s.Get(ref)
		if err != nil || got.ID != img.ID {
			t.Errorf("Get(%q) = %s, %v; want %s", ref, got.ID, err, img.ID)
		}
	}
	for _, ref := range []string{"busybox:other", hexID[:11], "sha256:" + strings.Repeat("0", 64), "0000000000000"} {
		if _, err := s.Get(ref); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get(%q): %v, want ErrNotFound", ref, err)
		}
	}
}

func TestMountShowsLayersAndKeepsWritesInJobDir(t *testing.T) {
	s := openStore(t)
	base, top := baseLayer(t), topLayer(t)
	importOne(t, s, writeDockerSave(t, image(t, base, top), "example.com/app:v1"))
	jobDir, rootfs := mount(t, s, "example.com/app:v1")
	if rootfs != filepath.Join(jobDir, "rootfs") {
		t.Errorf("rootfs %s", rootfs)
	}

	if got := readFile(t, filepath.Join(rootfs, "etc/hello")); got != "hello\n" {
		t.Errorf("etc/hello = %q", got)
	}
	if got := readFile(t, filepath.Join(rootfs, "etc/link")); got != "hello\n" {
		t.Errorf("etc/link reads %q", got)
	}
	if got := readFile(t, filepath.Join(rootfs, "etc/motd")); got != "welcome\n" {
		t.Errorf("etc/motd = %q", got)
	}
	assertAbsent(t, filepath.Join(rootfs, "etc/gone")) // whiteout
	assertAbsent(t, filepath.Join(rootfs, "data/old")) // opaque directory
	if got := dirNames(t, filepath.Join(rootfs, "data")); !slices.Equal(got, []string{"new"}) {
		t.Errorf("data/ holds %v, want [new]", got)
	}
	if _, err := os.ReadFile(filepath.Join(rootfs, "dev/null")); !errors.Is(err, unix.EACCES) {
		t.Errorf("opening the image's device node: %v, want EACCES (nodev)", err)
	}

	// The job's writes land in its upper directory, never in a layer.
	if err := os.WriteFile(filepath.Join(rootfs, "etc/written"), []byte("job\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(rootfs, "etc/hello")); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(jobDir, "upper/etc/written")); got != "job\n" {
		t.Errorf("upper/etc/written = %q", got)
	}
	for _, d := range []string{diffID(t, base), diffID(t, top)} {
		assertAbsent(t, filepath.Join(s.layerDir(d), "etc/written"))
	}
	if got := readFile(t, filepath.Join(s.layerDir(diffID(t, base)), "etc/hello")); got != "hello\n" {
		t.Errorf("deleting through the mount changed the layer: %q", got)
	}

	again, err := s.Mount(context.Background(), "example.com/app:v1", jobDir, nil)
	if err != nil || again != rootfs {
		t.Fatalf("second Mount = %s, %v", again, err)
	}
	if n := mountCount(t, rootfs); n != 1 {
		t.Errorf("%d mounts on %s after mounting twice, want 1", n, rootfs)
	}

	if err := s.Unmount(jobDir); err != nil {
		t.Fatal(err)
	}
	if n := mountCount(t, rootfs); n != 0 {
		t.Errorf("%d mounts on %s after Unmount", n, rootfs)
	}
	if got := dirNames(t, jobDir); len(got) != 0 {
		t.Errorf("job directory holds %v after Unmount", got)
	}
	if err := s.Unmount(jobDir); err != nil {
		t.Errorf("Unmount of an unmounted job: %v", err)
	}
}

func TestMountManyLayers(t *testing.T) {
	s := openStore(t)
	// 60 layer paths do not fit in one page of mount options.
	built, err := random.Image(16, 60)
	if err != nil {
		t.Fatal(err)
	}
	img := importOne(t, s, writeDockerSave(t, built, "many:layers"))
	_, rootfs := mount(t, s, img.ID)
	if got := len(dirNames(t, rootfs)); got != 60 {
		t.Errorf("rootfs holds %d entries, want one file of each of 60 layers", got)
	}
}

func TestImportOCILayoutDirectoryAndTar(t *testing.T) {
	s := openStore(t)
	built := image(t, baseLayer(t), topLayer(t))
	dir := writeLayout(t, built, "example.com/app:oci")
	img := importOne(t, s, dir)
	if img.ID != imageID(t, built) || !slices.Equal(img.Names, []string{"example.com/app:oci"}) {
		t.Fatalf("imported %s %v", img.ID, img.Names)
	}

	// The same image from a docker save archive: one image, two names.
	img = importOne(t, s, writeDockerSave(t, built, "example.com/app:v1"))
	if !slices.Equal(img.Names, []string{"example.com/app:v1", "example.com/app:oci"}) {
		t.Errorf("names %v, want both", img.Names)
	}
	if imgs, err := s.List(); err != nil || len(imgs) != 1 {
		t.Errorf("List = %v, %v; want one image", imgs, err)
	}

	// A tar of the layout; a bare-tag ref name names no image.
	other := image(t, layer(t, file("other", "x", 0o644)))
	tarPath := filepath.Join(t.TempDir(), "layout.tar")
	tarDir(t, writeLayout(t, other, "v2"), tarPath)
	img = importOne(t, s, tarPath)
	if img.ID != imageID(t, other) || len(img.Names) != 0 {
		t.Errorf("imported %s %v from the layout tar, want %s unnamed", img.ID, img.Names, imageID(t, other))
	}
	_, rootfs := mount(t, s, img.ID)
	if got := readFile(t, filepath.Join(rootfs, "other")); got != "x" {
		t.Errorf("other = %q", got)
	}
}

// tarDir writes the regular files under dir into a tar at dst.
func tarDir(t *testing.T, dir, dst string) {
	t.Helper()
	var entries []entry
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || !info.Mode().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		b, err := os.ReadFile(p)
		entries = append(entries, file(rel, string(b), 0o644))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, layerTar(t, entries...), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestImportPicksThisPlatformFromIndex(t *testing.T) {
	s := openStore(t)
	variant := func(arch, content string) v1.Image {
		img := image(t, layer(t, file("arch", content, 0o644)))
		cfg, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		cfg = cfg.DeepCopy()
		cfg.OS, cfg.Architecture = "linux", arch
		if img, err = mutate.ConfigFile(img, cfg); err != nil {
			t.Fatal(err)
		}
		return img
	}
	foreign := "arm64"
	if runtime.GOARCH == foreign {
		foreign = "amd64"
	}
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: variant(foreign, "foreign"), Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: foreign}}},
		mutate.IndexAddendum{Add: variant(runtime.GOARCH, "native"), Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: runtime.GOARCH}}},
	)
	dir := filepath.Join(t.TempDir(), "layout")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendIndex(idx, layout.WithAnnotations(map[string]string{annotationContainerdName: "example.com/multi:v1"})); err != nil {
		t.Fatal(err)
	}
	img := importOne(t, s, dir)
	_, rootfs := mount(t, s, "example.com/multi:v1")
	if got := readFile(t, filepath.Join(rootfs, "arch")); got != "native" {
		t.Errorf("imported the %q variant of %v", got, img.Names)
	}

	// A single-platform image for another architecture is refused.
	_, err = s.Import(context.Background(), writeDockerSave(t, variant(foreign, "foreign"), "foreign:v1"))
	if err == nil || !strings.Contains(err.Error(), "import the linux/"+runtime.GOARCH+" variant") {
		t.Errorf("importing a linux/%s image: %v", foreign, err)
	}
}

func TestImportUncompressedDockerSave(t *testing.T) {
	s := openStore(t)
	l := layerTar(t, file("hello", "hi", 0o644))
	// GNU tar pads archives to 10 KiB records; the diffID covers the padding.
	l = append(l, make([]byte, 10240-len(l)%10240)...)
	img := importOne(t, s, writeRawDockerSave(t, "raw:v1", [][]byte{l}, nil))
	_, rootfs := mount(t, s, "raw:v1")
	if got := readFile(t, filepath.Join(rootfs, "hello")); got != "hi" || img.Size != 2 {
		t.Errorf("hello = %q, size %d", got, img.Size)
	}
}

func TestImportSkipsLayersItHas(t *testing.T) {
	s := openStore(t)
	base, top := baseLayer(t), topLayer(t)
	importOne(t, s, writeLayout(t, image(t, base, top), "example.com/app:v1"))
	var before unix.Stat_t
	if err := unix.Stat(s.layerDir(diffID(t, base)), &before); err != nil {
		t.Fatal(err)
	}

	// The second image shares both layers; its layout lacks their blobs,
	// so the import succeeds only if it does not read them.
	extra := layer(t, file("extra", "more", 0o644))
	dir := writeLayout(t, image(t, base, top, extra), "example.com/app:v2")
	for _, l := range []v1.Layer{base, top} {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(filepath.Join(dir, "blobs", d.Algorithm, d.Hex)); err != nil {
			t.Fatal(err)
		}
	}
	img := importOne(t, s, dir)
	if len(img.Layers) != 3 {
		t.Fatalf("layers %v", img.Layers)
	}
	var after unix.Stat_t
	if err := unix.Stat(s.layerDir(diffID(t, base)), &after); err != nil {
		t.Fatal(err)
	}
	if after.Ino != before.Ino || after.Ctim != before.Ctim {
		t.Error("the shared layer's directory was replaced")
	}
	if got := len(dirNames(t, s.path("layers"))); got != 3 {
		t.Errorf("%d layers in the store, want 3", got)
	}
	if img.Size != int64(len("hello\n"+"deleted above\n"+"hidden above\n"+"#!/bin/sh\n"+"new\n"+"welcome\n"+"more")) {
		t.Errorf("size %d counts the shared layers wrong", img.Size)
	}
}

func assertStoreEmpty(t *testing.T, s *Store) {
	t.Helper()
	for _, d := range []string{"layers", "images", "tmp"} {
		if got := dirNames(t, s.path(d)); len(got) != 0 {
			t.Errorf("%s/ holds %v after a refused import", d, got)
		}
	}
}

func TestImportRefusesDiffIDMismatch(t *testing.T) {
	s := openStore(t)
	good := layerTar(t, file("good", "fine", 0o644))
	bad := layerTar(t, file("bad", "tampered", 0o644))
	sum := sha256.Sum256(good)
	goodID := "sha256:" + hex.EncodeToString(sum[:])
	claimed := "sha256:" + strings.Repeat("ab", 32)
	_, err := s.Import(context.Background(), writeRawDockerSave(t, "bad:v1", [][]byte{good, bad}, []string{goodID, claimed}))
	if err == nil || !strings.Contains(err.Error(), "not the "+claimed) || !strings.Contains(err.Error(), "export the image again") {
		t.Fatalf("Import: %v, want a diffID mismatch", err)
	}
	// Not even the good first layer stays.
	assertStoreEmpty(t, s)
}

func TestImportRefusesEscapingLayers(t *testing.T) {
	outside := t.TempDir() // where an escape would write
	victim := filepath.Join(outside, "victim")
	if err := os.WriteFile(victim, []byte("intact"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		what    string
		entries []entry
	}{
		{"dot-dot", []entry{file("../escape", "x", 0o644)}},
		{"dot-dot inside", []entry{file("a/../../escape", "x", 0o644)}},
		{"write through absolute symlink", []entry{symlink("link", outside), file("link/escape", "x", 0o644)}},
		{"write through a symlink inside the layer", []entry{dir("real/"), symlink("link", "real"), file("link/escape", "x", 0o644)}},
		{"write through relative symlink", []entry{symlink("link", "../../../../../../../.."+outside), file("link/escape", "x", 0o644)}},
		{"replace through symlink", []entry{symlink("link", outside), file("link/victim", "x", 0o644)}},
		{"directory through symlink", []entry{symlink("link", outside), dir("link/escape/")}},
		{"hardlink outside", []entry{hardlink("h", "../../victim")}},
		{"hardlink through symlink", []entry{symlink("link", outside), hardlink("h", "link/victim")}},
		{"whiteout through symlink", []entry{symlink("link", outside), file("link/.wh.victim", "", 0)}},
		{"opaque through symlink", []entry{symlink("link", outside), file("link/.wh..wh..opq", "", 0)}},
		{"whiteout of dot-dot", []entry{dir("d/"), file("d/.wh...", "", 0)}},
	} {
		t.Run(tc.what, func(t *testing.T) {
			s := openStore(t)
			_, err := s.Import(context.Background(), writeRawDockerSave(t, "evil:v1", [][]byte{layerTar(t, tc.entries...)}, nil))
			if err == nil {
				t.Fatal("import succeeded")
			}
			t.Log(err)
			assertStoreEmpty(t, s)
			if got := dirNames(t, outside); !slices.Equal(got, []string{"victim"}) {
				t.Errorf("outside directory holds %v", got)
			}
			if got := readFile(t, victim); got != "intact" {
				t.Errorf("victim = %q", got)
			}
			var st unix.Stat_t
			if err := unix.Stat(victim, &st); err != nil || st.Nlink != 1 {
				t.Errorf("victim has %d links (%v)", st.Nlink, err)
			}
		})
	}
}

func TestImportAbsolutePathsStayInLayer(t *testing.T) {
	s := openStore(t)
	abs := fmt.Sprintf("/plinth-imagestore-test-%d", time.Now().UnixNano())
	img := importOne(t, s, writeRawDockerSave(t, "abs:v1", [][]byte{layerTar(t, file(abs, "x", 0o644))}, nil))
	assertAbsent(t, abs)
	if got := readFile(t, filepath.Join(s.layerDir(img.Layers[0]), abs)); got != "x" {
		t.Errorf("%s in the layer = %q", abs, got)
	}
}

func TestImportRefusesWhatIsNoImage(t *testing.T) {
	s := openStore(t)
	dir := t.TempDir()
	notTar := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(notTar, bytes.Repeat([]byte("not an image\n"), 100), 0o644); err != nil {
		t.Fatal(err)
	}
	plainTar := filepath.Join(dir, "plain.tar")
	if err := os.WriteFile(plainTar, layerTar(t, file("readme", "hi", 0o644)), 0o644); err != nil {
		t.Fatal(err)
	}
	gz := filepath.Join(dir, "image.tar.gz")
	if err := os.WriteFile(gz, []byte{0x1f, 0x8b, 8, 0}, 0o644); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]string{
		notTar:   "is not a docker save archive or an OCI image layout",
		plainTar: "is not a docker save archive or an OCI image layout",
		dir:      "is not a docker save archive or an OCI image layout",
		gz:       "decompress it",
	} {
		if _, err := s.Import(context.Background(), p); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Import(%s): %v, want %q", filepath.Base(p), err, want)
		}
	}
	assertStoreEmpty(t, s)
}

func TestNamesMoveAndRemove(t *testing.T) {
	s := openStore(t)
	first := importOne(t, s, writeDockerSave(t, image(t, baseLayer(t)), "app:v1"))
	second := importOne(t, s, writeDockerSave(t, image(t, topLayer(t)), "app:v1"))
	if got, err := s.Get("app:v1"); err != nil || got.ID != second.ID {
		t.Fatalf("app:v1 is %s (%v), want the image imported last, %s", got.ID, err, second.ID)
	}
	if got, err := s.Get(first.ID); err != nil || len(got.Names) != 0 {
		t.Errorf("the first image: %v %v, want it kept without names", got.Names, err)
	}
	if err := s.Remove("app:v1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get("app:v1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after Remove: %v", err)
	}
	if _, err := s.Get(second.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get by ID after Remove: %v", err)
	}
	if err := s.Remove("app:v1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Remove: %v", err)
	}
	if imgs, err := s.List(); err != nil || len(imgs) != 1 || imgs[0].ID != first.ID {
		t.Errorf("List = %+v, %v", imgs, err)
	}
}

func TestGCRemovesOnlyUnusedLayers(t *testing.T) {
	s := openStore(t)
	shared, onlyA, onlyB := baseLayer(t), topLayer(t), layer(t, file("b", "b", 0o644))
	importOne(t, s, writeDockerSave(t, image(t, shared, onlyA), "a:v1"))
	importOne(t, s, writeDockerSave(t, image(t, shared, onlyB), "b:v1"))

	gc := func(inUse func(string) bool, want ...string) {
		t.Helper()
		removed, err := s.GC(inUse)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(want)
		if !slices.Equal(removed, want) {
			t.Errorf("GC removed %v, want %v", removed, want)
		}
		for _, d := range want {
			assertAbsent(t, s.layerDir(d))
			assertAbsent(t, s.shiftedDir(d, 1048576))
		}
	}
	gc(nil)
	// a's own layer has a copy for a user namespace; it goes with it.
	if _, err := s.shiftedLayer(diffID(t, onlyA), &IDMapping{Root: 1048576}); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove("a:v1"); err != nil {
		t.Fatal(err)
	}
	gc(nil, diffID(t, onlyA))

	// b's layers are still mounted by a job after b is removed.
	jobDir, rootfs := mount(t, s, "b:v1")
	if err := s.Remove("b:v1"); err != nil {
		t.Fatal(err)
	}
	mounted := func(d string) bool { return d == diffID(t, shared) || d == diffID(t, onlyB) }
	gc(mounted)
	if got := readFile(t, filepath.Join(rootfs, "b")); got != "b" {
		t.Errorf("b = %q", got)
	}
	if err := s.Unmount(jobDir); err != nil {
		t.Fatal(err)
	}
	gc(nil, diffID(t, shared), diffID(t, onlyB))
}

func TestConcurrentImportsShareLayers(t *testing.T) {
	s := openStore(t)
	base := baseLayer(t)
	paths := []string{
		writeDockerSave(t, image(t, base, layer(t, file("a", "a", 0o644))), "a:v1"),
		writeLayout(t, image(t, base, layer(t, file("b", "b", 0o644))), "b:v1"),
	}
	errs := make(chan error, len(paths))
	for _, p := range paths {
		go func() {
			_, err := s.Import(context.Background(), p)
			errs <- err
		}()
	}
	for range paths {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got := len(dirNames(t, s.path("layers"))); got != 3 {
		t.Errorf("%d layers in the store, want 3", got)
	}
	if got := dirNames(t, s.path("tmp")); len(got) != 0 {
		t.Errorf("tmp/ holds %v", got)
	}
	for _, ref := range []string{"a:v1", "b:v1"} {
		_, rootfs := mount(t, s, ref)
		if got := readFile(t, filepath.Join(rootfs, "etc/hello")); got != "hello\n" {
			t.Errorf("%s: etc/hello = %q", ref, got)
		}
	}
}

// A kernel without overlayfs (its module not loaded yet) is told apart
// from other mount failures, so that hostd can say "try again shortly".
func TestOverlayMountErrors(t *testing.T) {
	if err := overlayMountError("app:1", "/x/rootfs", unix.ENODEV); !errors.Is(err, ErrNoOverlay) {
		t.Errorf("ENODEV: %v, want ErrNoOverlay", err)
	}
	err := overlayMountError("app:1", "/x/rootfs", unix.EINVAL)
	if errors.Is(err, ErrNoOverlay) || !errors.Is(err, unix.EINVAL) || !strings.Contains(err.Error(), "/x/rootfs") {
		t.Errorf("EINVAL: %v, want the errno and the mount point, not ErrNoOverlay", err)
	}
}
