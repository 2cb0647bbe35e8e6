package vmtest

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cavaliergopher/cpio"
)

// fakeBusybox stands in for /bin/busybox so the test does not depend on it.
func fakeBusybox(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "busybox")
	if err := os.WriteFile(path, []byte("\x7fELF fake busybox"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func readCpio(t *testing.T, path string) (names []string, headers map[string]*cpio.Header, data map[string]string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	headers, data = map[string]*cpio.Header{}, map[string]string{}
	r := cpio.NewReader(f)
	for {
		hdr, err := r.Next()
		if errors.Is(err, io.EOF) {
			return names, headers, data
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, hdr.Name)
		headers[hdr.Name] = hdr
		data[hdr.Name] = string(b)
	}
}

func TestBusyboxInitrdContents(t *testing.T) {
	dir := t.TempDir()
	mod := filepath.Join(dir, "virtio_net.ko")
	if err := os.WriteFile(mod, []byte("module"), 0o644); err != nil {
		t.Fatal(err)
	}
	bb := fakeBusybox(t)
	path := filepath.Join(dir, "initrd")
	if err := (BusyboxInit{Busybox: bb, Modules: []string{mod}, Script: "echo hi\n"}).WriteInitrd(path); err != nil {
		t.Fatal(err)
	}
	names, headers, data := readCpio(t, path)
	want := []string{"bin", "bin/busybox", "init", "lib", "lib/modules", "lib/modules/virtio_net.ko", "proc", "sys", "tmp"}
	if !slices.Equal(names, want) {
		t.Fatalf("entries %q, want %q", names, want)
	}
	for name, hdr := range headers {
		if hdr.ModTime.Unix() != 0 || hdr.Uid != 0 || hdr.Guid != 0 {
			t.Errorf("%s: mtime %v uid %d gid %d, want all 0", name, hdr.ModTime, hdr.Uid, hdr.Guid)
		}
	}
	if m := headers["init"].Mode; !m.IsRegular() || m.Perm() != 0o755 {
		t.Errorf("init mode %v, want an executable file", m)
	}
	if !headers["proc"].Mode.IsDir() {
		t.Errorf("proc mode %v, want a directory", headers["proc"].Mode)
	}
	if data["bin/busybox"] != "\x7fELF fake busybox" {
		t.Error("busybox not copied")
	}
	init := data["init"]
	for _, want := range []string{
		"#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc\n",
		"insmod /lib/modules/virtio_net.ko\necho hi\n",
	} {
		if !strings.Contains(init, want) {
			t.Errorf("/init lacks %q:\n%s", want, init)
		}
	}
	if !strings.HasSuffix(init, "poweroff -f\n") {
		t.Errorf("/init does not end in poweroff:\n%s", init)
	}
}

func TestBusyboxInitrdDefaultScriptAndDeterminism(t *testing.T) {
	bb := fakeBusybox(t)
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	for _, p := range []string{a, b} {
		if err := (BusyboxInit{Busybox: bb}).WriteInitrd(p); err != nil {
			t.Fatal(err)
		}
	}
	ab, _ := os.ReadFile(a)
	bb2, _ := os.ReadFile(b)
	if !bytes.Equal(ab, bb2) {
		t.Error("two writes of the same initrd differ")
	}
	_, _, data := readCpio(t, a)
	if !strings.Contains(data["init"], `echo "`+BusyboxUptimeMarker+`$up"`) {
		t.Errorf("default /init does not print the uptime marker:\n%s", data["init"])
	}
}

func TestBusyboxInitrdErrors(t *testing.T) {
	dir := t.TempDir()
	if err := (BusyboxInit{Busybox: filepath.Join(dir, "missing")}).WriteInitrd(filepath.Join(dir, "i")); err == nil {
		t.Error("missing busybox: no error")
	}
	mod := filepath.Join(dir, "m.ko")
	os.WriteFile(mod, nil, 0o644)
	err := (BusyboxInit{Busybox: fakeBusybox(t), Modules: []string{mod, mod}}).WriteInitrd(filepath.Join(dir, "i"))
	if err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("module listed twice: %v", err)
	}
}
