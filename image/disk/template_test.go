package disk

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/plinth-os/plinth/image"
)

// buildTemplate makes the image's ext4 template.
func buildTemplate(t *testing.T) string {
	t.Helper()
	need(t, "mkfs.ext4")
	p := filepath.Join(t.TempDir(), "data.ext4")
	if err := image.BuildDataTemplate(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	return p
}

// dumpe2fs returns the superblock fields of the ext4 filesystem at off in
// path, as dumpe2fs -h prints them.
func dumpe2fs(t *testing.T, path string, off int64) map[string]string {
	t.Helper()
	out := run(t, "dumpe2fs", "-h", fmt.Sprintf("%s?offset=%d", path, off))
	fields := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			fields[k] = strings.TrimSpace(v)
		}
	}
	return fields
}

// TestDataTemplate writes the template into an image file's data
// partition: e2fsck finds it clean (so the superblock checksum after the
// new UUID holds), and its UUID and creation time come from the spec.
func TestDataTemplate(t *testing.T) {
	tmpl := buildTemplate(t)
	need(t, "e2fsck", "dumpe2fs")
	content, err := os.ReadFile(tmpl)
	if err != nil {
		t.Fatal(err)
	}
	nonzero := 0
	for off := 0; off < len(content); off += templateBlock {
		if !allZero(content[off : off+templateBlock]) {
			nonzero++
		}
	}
	t.Logf("template: %d MiB, %d blocks of 4 KiB not zero", len(content)>>20, nonzero)

	created := time.Date(2025, 7, 1, 12, 0, 0, 0, time.UTC)
	img := filepath.Join(t.TempDir(), "disk.img")
	parts, err := Write(img, Spec{Size: 2 << 30, DataTemplate: tmpl, Seed: "disk one", Time: created})
	if err != nil {
		t.Fatal(err)
	}
	data := parts[3]
	at := fmt.Sprintf("%s?offset=%d", img, data.Start)
	if out := run(t, "e2fsck", "-fn", at); !strings.Contains(out, "PLINTH-DATA: 11/8192 files") {
		t.Errorf("e2fsck -fn:\n%s", out)
	}
	sb := dumpe2fs(t, img, data.Start)
	if want := strings.ToLower(deriveGUID("disk one", "data filesystem").String()); sb["Filesystem UUID"] != want {
		t.Errorf("UUID %s, want %s from the seed", sb["Filesystem UUID"], want)
	}
	if sb["Filesystem volume name"] != DataName || sb["Block count"] != "32768" || sb["Block size"] != "4096" {
		t.Errorf("label %q, %s blocks of %s bytes", sb["Filesystem volume name"], sb["Block count"], sb["Block size"])
	}
	if want := created.Format("Mon Jan _2 15:04:05 2006"); sb["Filesystem created"] != want {
		t.Errorf("created %q, want %q", sb["Filesystem created"], want)
	}
	for _, f := range []string{"metadata_csum_seed", "resize_inode", "has_journal", "64bit"} {
		if !regexp.MustCompile(`\b` + f + `\b`).MatchString(sb["Filesystem features"]) {
			t.Errorf("features %q lack %s", sb["Filesystem features"], f)
		}
	}
	// The squashfs stores only these.
	if nonzero > 64 {
		t.Errorf("%d blocks of the template are not zero, want a few", nonzero)
	}

	_, err = Write(filepath.Join(t.TempDir(), "both.img"), Spec{Size: 2 << 30, DataTemplate: tmpl, FormatData: true})
	if err == nil || !strings.Contains(err.Error(), "one way") {
		t.Errorf("FormatData with DataTemplate: %v", err)
	}
	_, err = Write(filepath.Join(t.TempDir(), "small.img"), Spec{Size: 896 * mib, DataTemplate: tmpl})
	if err == nil || !strings.Contains(err.Error(), "larger disk") {
		t.Errorf("a data partition smaller than the template: %v", err)
	}
}

// TestDataTemplateOverData writes the template onto a block device whose
// data partition held other bytes: the template's whole range must read
// back as the template, its zero blocks included, because ext4 trusts
// them to be zero (e2fsck alone would not notice stale bytes in the
// unused inode table or the reserved GDT blocks).
func TestDataTemplateOverData(t *testing.T) {
	tmpl := buildTemplate(t)
	need(t, "e2fsck")
	backing := filepath.Join(t.TempDir(), "disk.raw")
	parts, err := Layout(1<<30, Spec{})
	if err != nil {
		t.Fatal(err)
	}
	data := parts[3]
	f, err := os.Create(backing)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(1 << 30)
	junk := bytes.Repeat([]byte{0xa5}, mib)
	for off := int64(0); off < image.DataTemplateSize; off += mib {
		if _, err := f.WriteAt(junk, data.Start+off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	dev := losetup(t, backing)

	if _, err := Write(dev, Spec{DataTemplate: tmpl, Seed: "over data"}); err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(tmpl)
	if err != nil {
		t.Fatal(err)
	}
	got := readAt(t, backing, data.Start, int64(len(want)))
	for off := 0; off < len(want); off += templateBlock {
		g, w := got[off:off+templateBlock], want[off:off+templateBlock]
		if off == 0 {
			// The superblock differs: UUID, hash seed, time, checksum.
			g, w = append(g[:sbOffset:sbOffset], g[sbOffset+sbSize:]...), append(w[:sbOffset:sbOffset], w[sbOffset+sbSize:]...)
		}
		if !bytes.Equal(g, w) {
			t.Fatalf("block %d of the data partition differs from the template (first bytes %x)", off/templateBlock, g[:8])
		}
	}
	if out := run(t, "e2fsck", "-fn", fmt.Sprintf("%s?offset=%d", backing, data.Start)); !strings.Contains(out, "11/8192 files") {
		t.Errorf("e2fsck -fn:\n%s", out)
	}
}
