package image

import (
	"bytes"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/cavaliergopher/cpio"
	"github.com/pierrec/lz4/v4"
)

func sampleEntries(t *testing.T) []entry {
	src := filepath.Join(t.TempDir(), "bin")
	if err := os.WriteFile(src, []byte("binary contents"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Deliberately unsorted, with a parent after its child.
	return []entry{
		{Name: "usr/bin/plinth", Mode: 0o755, Src: src},
		{Name: "sbin/init", Link: "/usr/bin/plinth"},
		{Name: "etc/os-release", Mode: 0o644, Data: []byte("ID=plinth\n")},
		{Name: "usr", Mode: cpio.TypeDir | 0o755},
		{Name: "usr/bin", Mode: cpio.TypeDir | 0o755},
		{Name: "etc", Mode: cpio.TypeDir | 0o755},
		{Name: "sbin", Mode: cpio.TypeDir | 0o755},
	}
}

func TestWriteCPIO(t *testing.T) {
	var a, b bytes.Buffer
	if err := writeCPIO(&a, sampleEntries(t)); err != nil {
		t.Fatal(err)
	}
	if err := writeCPIO(&b, sampleEntries(t)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("two archives of the same entries differ")
	}

	type file struct {
		mode cpio.FileMode
		body string
	}
	want := map[string]file{
		"etc":            {cpio.TypeDir | 0o755, ""},
		"etc/os-release": {cpio.TypeReg | 0o644, "ID=plinth\n"},
		"sbin":           {cpio.TypeDir | 0o755, ""},
		"sbin/init":      {cpio.TypeSymlink, "/usr/bin/plinth"},
		"usr":            {cpio.TypeDir | 0o755, ""},
		"usr/bin":        {cpio.TypeDir | 0o755, ""},
		"usr/bin/plinth": {cpio.TypeReg | 0o755, "binary contents"},
	}
	r := cpio.NewReader(&a)
	var order []string
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		order = append(order, h.Name)
		body, _ := io.ReadAll(r)
		if h.Linkname != "" {
			body = []byte(h.Linkname)
		}
		w, ok := want[h.Name]
		if !ok {
			t.Errorf("unexpected entry %s", h.Name)
			continue
		}
		if h.Mode&^0o777 != w.mode&^0o777 || (h.Mode&cpio.TypeSymlink != cpio.TypeSymlink && h.Mode.Perm() != w.mode.Perm()) {
			t.Errorf("%s: mode %o, want %o", h.Name, h.Mode, w.mode)
		}
		if string(body) != w.body {
			t.Errorf("%s: body %q, want %q", h.Name, body, w.body)
		}
		if !h.ModTime.IsZero() && h.ModTime.Unix() != 0 {
			t.Errorf("%s: mtime %v, want 0 for reproducible archives", h.Name, h.ModTime)
		}
		if h.Uid != 0 || h.Guid != 0 {
			t.Errorf("%s: owner %d:%d, want root", h.Name, h.Uid, h.Guid)
		}
	}
	// Sorted by name puts every parent before its children, which the
	// kernel needs to create them.
	for i := 1; i < len(order); i++ {
		if order[i-1] >= order[i] {
			t.Errorf("entries not sorted: %v", order)
			break
		}
	}
	if len(order) != len(want) {
		t.Errorf("got %d entries %v, want %d", len(order), order, len(want))
	}
}

// The kernel's initramfs unpacker reads LZ4 only in the legacy frame format
// (magic 0x184C2102); the standard frame format would fail to unpack at boot.
func TestCompressWriterLZ4Legacy(t *testing.T) {
	payload := bytes.Repeat([]byte("plinth initramfs "), 100000)
	var buf bytes.Buffer
	w, err := compressWriter(&buf, CompressLZ4)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(payload); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if magic := binary.LittleEndian.Uint32(buf.Bytes()); magic != 0x184C2102 {
		t.Fatalf("magic %#x, want the legacy LZ4 magic 0x184c2102", magic)
	}
	if buf.Len() >= len(payload)/10 {
		t.Errorf("compressed %d bytes to %d; expected far smaller", len(payload), buf.Len())
	}
	got, err := io.ReadAll(lz4.NewReader(&buf))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Error("decompressed payload differs")
	}

	if _, err := compressWriter(&buf, "gzip"); err == nil {
		t.Error("compressWriter accepted gzip, which the builder does not support")
	}
}
