package disk

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// espFiles is a boot tree plus the names that stress FAT: long and
// non-ASCII names, 8.3 collisions, an empty file, a multi-cluster
// directory and a file read from disk.
func espFiles(t *testing.T) []File {
	kernel := writeTemp(t, "vmlinuz", pattern(3<<20+17, 1))
	files := []File{
		{Path: "EFI/BOOT/BOOTX64.EFI", Data: pattern(300<<10, 2)},
		{Path: "loader/loader.conf", Data: []byte("timeout 3\ndefault plinth-a.conf\n")},
		{Path: "loader/entries/plinth-a.conf", Data: []byte("title plinth A\nlinux /plinth/a/vmlinuz\n")},
		{Path: "loader/entries/plinth-a.config", Data: []byte("same 8.3 stem as plinth-a.conf\n")},
		{Path: "loader/entries/plinth-b.conf", Data: []byte("title plinth B\n")},
		{Path: "plinth/a/vmlinuz", Src: kernel},
		{Path: "plinth/a/initrd.img", Data: pattern(1<<20, 3)},
		{Path: "plinth/b/EMPTY", Data: []byte{}},
		{Path: "Ünïcode name that needs three LFN entries.txt", Data: []byte("ü")},
		{Path: ".hidden", Data: []byte("dot")},
	}
	for i := range 40 {
		files = append(files, File{Path: fmt.Sprintf("many/entry-with-a-long-name-%02d.conf", i), Data: []byte{byte(i)}})
	}
	return files
}

func fileBytes(t *testing.T, f File) []byte {
	if f.Data != nil {
		return f.Data
	}
	b, err := os.ReadFile(f.Src)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestESPWithTools checks the ESP as dosfstools and mtools see it: a clean
// fsck, the label, every path listed with its long name and every file
// holding its bytes. 300 MiB exercises 4 KiB clusters, the default 512 B.
func TestESPWithTools(t *testing.T) {
	need(t, "fsck.fat", "mtype", "mdir", "mlabel")
	files := espFiles(t)
	for _, espSize := range []int64{DefaultESPSize, 300 << 20} {
		t.Run(fmt.Sprintf("%dMiB", espSize/mib), func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "disk.img")
			parts, err := Write(img, Spec{Size: 2 << 30, ESPSize: espSize, ESP: files})
			if err != nil {
				t.Fatal(err)
			}
			esp := extract(t, img, parts[0])
			if out, err := exec.Command("fsck.fat", "-n", esp).CombinedOutput(); err != nil {
				t.Fatalf("fsck.fat -n: %v\n%s", err, out)
			}

			// mtools reads the ESP in place through an offset.
			at := fmt.Sprintf("%s@@%d", img, parts[0].Start)
			if out := run(t, "mlabel", "-i", at, "-s", "::"); !strings.Contains(out, "Volume label is "+ESPName) {
				t.Errorf("mlabel: %q, want label %s", out, ESPName)
			}
			var listed []string
			for _, l := range strings.Split(run(t, "mdir", "-/", "-b", "-i", at, "::"), "\n") {
				if l != "" && !strings.HasSuffix(l, "/") {
					listed = append(listed, strings.TrimPrefix(l, "::/"))
				}
			}
			var want []string
			for _, f := range files {
				want = append(want, f.Path)
			}
			slices.Sort(listed)
			slices.Sort(want)
			if !slices.Equal(listed, want) {
				t.Errorf("mdir lists\n%q\nwant\n%q", listed, want)
			}
			for _, f := range files {
				got, err := exec.Command("mtype", "-i", at, "::/"+f.Path).Output()
				if err != nil {
					t.Fatalf("mtype %s: %v", f.Path, err)
				}
				if !bytes.Equal(got, fileBytes(t, f)) {
					t.Errorf("%s: %d bytes differ from the %d given", f.Path, len(got), len(fileBytes(t, f)))
				}
			}
		})
	}
}

// TestESPSizeLimits pins MinESPSize: it formats cleanly and 1 MiB less is
// refused with advice, since FAT32 needs 65525 clusters.
func TestESPSizeLimits(t *testing.T) {
	if _, err := planFAT(MinESPSize, ESPName, 1, time.Time{}, nil); err != nil {
		t.Fatalf("MinESPSize: %v", err)
	}
	_, err := planFAT(MinESPSize-mib, ESPName, 1, time.Time{}, nil)
	if err == nil || !strings.Contains(err.Error(), "too small for FAT32") || !strings.Contains(err.Error(), "33 MiB") {
		t.Fatalf("MinESPSize-1MiB: %v, want a too-small error naming 33 MiB", err)
	}

	need(t, "fsck.fat")
	img := filepath.Join(t.TempDir(), "disk.img")
	parts, err := Write(img, Spec{Size: 1 << 30, ESPSize: MinESPSize, SlotSize: mib,
		ESP: []File{{Path: "EFI/BOOT/BOOTX64.EFI", Data: pattern(1000, 1)}}})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("fsck.fat", "-n", extract(t, img, parts[0])).CombinedOutput(); err != nil {
		t.Fatalf("fsck.fat -n on a MinESPSize ESP: %v\n%s", err, out)
	}
}

func TestESPRejects(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files []File
		want  string
	}{
		{"absolute", []File{{Path: "/EFI/x"}}, "relative"},
		{"dotdot", []File{{Path: "EFI/../x"}}, "relative"},
		{"empty element", []File{{Path: "EFI//x"}}, "relative"},
		{"case-insensitive duplicate", []File{{Path: "loader/a.conf"}, {Path: "LOADER/A.CONF"}}, "given twice"},
		{"file and directory", []File{{Path: "plinth"}, {Path: "plinth/a"}}, "both a file and a directory"},
		{"bad character", []File{{Path: "a:b"}}, "does not allow"},
		{"trailing dot", []File{{Path: "name."}}, "ends in a dot"},
		{"too big for the ESP", []File{{Path: "big", Data: make([]byte, 40<<20)}}, "too small"},
		{"missing source", []File{{Path: "x", Src: "/nonexistent/plinth-src"}}, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := planFAT(MinESPSize, ESPName, 1, time.Time{}, tc.files)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestShortName(t *testing.T) {
	used := map[[11]byte]bool{}
	for _, tc := range []struct {
		name, short string
		lfn         bool
	}{
		{"BOOTX64.EFI", "BOOTX64 EFI", false},
		{"loader", "LOADER     ", true},
		{"initrd.img", "INITRD  IMG", true},
		{"plinth-a.conf", "PLINTH~1CON", true},
		{"plinth-a.config", "PLINTH~2CON", true},
		{".hidden", "HIDDEN~1   ", true},
		{"a b", "AB~1       ", true},
		{"ünï", "_N_~1      ", true},
		{"verylongname1234567", "VERYLO~1   ", true},
	} {
		short, lfn := shortName(tc.name, used)
		used[short] = true
		if string(short[:]) != tc.short || lfn != tc.lfn {
			t.Errorf("shortName(%q) = %q, lfn %v; want %q, lfn %v", tc.name, short, lfn, tc.short, tc.lfn)
		}
	}
}

func TestFATTimestamp(t *testing.T) {
	for _, tc := range []struct {
		in         time.Time
		date, time uint16
	}{
		{time.Time{}, 0x0021, 0},
		{time.Date(2025, 6, 30, 13, 45, 31, 0, time.UTC), 45<<9 | 6<<5 | 30, 13<<11 | 45<<5 | 15},
		{time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC), 127<<9 | 12<<5 | 31, 23<<11 | 59<<5 | 29},
	} {
		d, tm := fatTimestamp(tc.in)
		if d != tc.date || tm != tc.time {
			t.Errorf("fatTimestamp(%v) = %#x %#x, want %#x %#x", tc.in, d, tm, tc.date, tc.time)
		}
	}
}
