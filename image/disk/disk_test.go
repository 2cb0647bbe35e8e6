package disk

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestLayout(t *testing.T) {
	parts, err := layout(2<<30, DefaultESPSize, DefaultSlotSize)
	if err != nil {
		t.Fatal(err)
	}
	want := []Partition{
		{Name: ESPName, Index: 1, Start: 1 * mib, Size: 256 * mib},
		{Name: SlotAName, Index: 2, Start: 257 * mib, Size: 256 * mib},
		{Name: SlotBName, Index: 3, Start: 513 * mib, Size: 256 * mib},
		// The backup GPT takes the last 33 sectors, so the last MiB goes.
		{Name: DataName, Index: 4, Start: 769 * mib, Size: 1278 * mib},
	}
	for i := range want {
		if parts[i] != want[i] {
			t.Errorf("partition %d = %+v, want %+v", i, parts[i], want[i])
		}
	}

	// The smallest disk the error names must be accepted.
	_, err = layout(800*mib, DefaultESPSize, DefaultSlotSize)
	if err == nil || !strings.Contains(err.Error(), "at least 834 MiB") {
		t.Fatalf("800 MiB disk: %v, want an error asking for 834 MiB", err)
	}
	if _, err := layout(834*mib, DefaultESPSize, DefaultSlotSize); err != nil {
		t.Fatalf("834 MiB disk: %v", err)
	}
	if _, err := layout(2<<30, DefaultESPSize+512, DefaultSlotSize); err == nil {
		t.Fatal("ESP size off the MiB grid was accepted")
	}
}

// TestWriteRead writes a full 2 GiB image and checks the GPT with sfdisk
// and sgdisk, the slot bytes, sparseness, and that Read agrees.
func TestWriteRead(t *testing.T) {
	slotImage := pattern(5<<20+123, 7)
	header := []byte("PLINTH-SLOT v1 generation=1")
	img := filepath.Join(t.TempDir(), "disk.img")
	start := time.Now()
	parts, err := Write(img, Spec{
		Size:  2 << 30,
		ESP:   []File{{Path: "EFI/BOOT/BOOTX64.EFI", Data: pattern(200<<10, 1)}},
		SlotA: Slot{Src: writeTemp(t, "system.img", slotImage), Header: header},
		Seed:  "test",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote a 2 GiB image without ext4 in %v", time.Since(start))

	got, err := Read(img)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 {
		t.Fatalf("Read returned %d partitions", len(got))
	}
	for i := range parts {
		if got[i] != parts[i] {
			t.Errorf("Read partition %d = %+v, Write returned %+v", i, got[i], parts[i])
		}
	}

	a, b := parts[1], parts[2]
	if !bytes.Equal(readAt(t, img, a.Start, int64(len(slotImage))), slotImage) {
		t.Error("slot A does not start with the image")
	}
	hdr := readAt(t, img, a.Start+a.Size-SlotHeaderSize, SlotHeaderSize)
	if !bytes.Equal(hdr[:len(header)], header) || !allZero(hdr[len(header):]) {
		t.Error("slot A header is not at the last 64 KiB, zero-padded")
	}
	if !allZero(readAt(t, img, b.Start, b.Size)) {
		t.Error("slot B is not empty")
	}

	var st syscall.Stat_t
	if err := syscall.Stat(img, &st); err != nil {
		t.Fatal(err)
	}
	if used := st.Blocks * 512; used > 32<<20 {
		t.Errorf("image uses %d MiB on disk, want it sparse", used>>20)
	}

	need(t, "sfdisk", "sgdisk")
	if out := run(t, "sgdisk", "-v", img); !strings.Contains(out, "No problems found") {
		t.Errorf("sgdisk -v:\n%s", out)
	}
	var table struct {
		PartitionTable struct {
			ID         string
			Partitions []struct {
				Start, Size      int64
				Type, UUID, Name string
			}
		}
	}
	if err := json.Unmarshal([]byte(run(t, "sfdisk", "--json", img)), &table); err != nil {
		t.Fatal(err)
	}
	sf := table.PartitionTable.Partitions
	if len(sf) != 4 {
		t.Fatalf("sfdisk sees %d partitions", len(sf))
	}
	types := []string{"C12A7328-F81F-11D2-BA4B-00A0C93EC93B", typeLinux.String(), typeLinux.String(), typeLinux.String()}
	for i, p := range parts {
		s := sf[i]
		if s.Name != p.Name || s.Type != types[i] || s.UUID != p.GUID ||
			s.Start*512 != p.Start || s.Size*512 != p.Size || s.Start%2048 != 0 || s.Size%2048 != 0 {
			t.Errorf("sfdisk partition %d = %+v, want %+v of type %s, 1 MiB aligned", i, s, p, types[i])
		}
	}
	if table.PartitionTable.ID != deriveGUID("test", "disk").String() {
		t.Errorf("disk GUID %s is not derived from the seed", table.PartitionTable.ID)
	}
}

func readAt(t *testing.T, path string, off, n int64) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// TestReproducible writes the same spec twice (with ext4 when mkfs.ext4 is
// there) and wants identical bytes; another seed must change the GUIDs.
func TestReproducible(t *testing.T) {
	_, err := exec.LookPath(mkfsExt4)
	format := err == nil
	if !format {
		t.Logf("%s missing (apt-get install -y e2fsprogs): comparing without ext4", mkfsExt4)
	}
	spec := func(seed string) Spec {
		return Spec{Size: 512 * mib, ESPSize: 64 * mib, SlotSize: 64 * mib, ESP: espFiles(t),
			SlotA: Slot{Header: []byte("h")}, FormatData: format, Seed: seed,
			Time: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)}
	}
	dir := t.TempDir()
	sums := map[string][32]byte{}
	var guids []string
	for _, run := range []struct{ name, seed string }{{"a", "s1"}, {"b", "s1"}, {"c", "s2"}} {
		img := filepath.Join(dir, run.name)
		parts, err := Write(img, spec(run.seed))
		if err != nil {
			t.Fatal(err)
		}
		sums[run.name] = fileSum(t, img)
		guids = append(guids, parts[3].GUID)
	}
	if sums["a"] != sums["b"] {
		t.Error("two writes of the same spec differ")
	}
	if sums["a"] == sums["c"] || guids[0] == guids[2] {
		t.Error("a different seed gave the same disk")
	}
}

func fileSum(t *testing.T, path string) [32]byte {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

// TestWriteRejects wants bad specs refused before the target is touched.
func TestWriteRejects(t *testing.T) {
	big := writeTemp(t, "big.img", make([]byte, 2*mib))
	for _, tc := range []struct {
		name string
		spec Spec
		path string // "PATH" is set to this when non-empty
		want string
	}{
		{"no size", Spec{}, "", "needs Spec.Size"},
		{"disk too small", Spec{Size: 512 * mib}, "", "too small"},
		{"slot image too big", Spec{Size: 1 << 30, SlotSize: 2 * mib, SlotA: Slot{Src: big}}, "", "raise SlotSize"},
		{"header too big", Spec{Size: 1 << 30, SlotB: Slot{Header: make([]byte, SlotHeaderSize+1)}}, "", "header of"},
		{"ESP too small", Spec{Size: 1 << 30, ESPSize: 16 * mib}, "", "too small for FAT32"},
		{"no mkfs.ext4", Spec{Size: 1 << 30, FormatData: true}, t.TempDir(), "install e2fsprogs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.path != "" {
				t.Setenv("PATH", tc.path)
			}
			img := filepath.Join(t.TempDir(), "disk.img")
			if err := os.WriteFile(img, []byte("keep"), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := Write(img, tc.spec)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			if b, _ := os.ReadFile(img); string(b) != "keep" {
				t.Error("the target was changed")
			}
		})
	}
}

func TestReadRejects(t *testing.T) {
	dir := t.TempDir()
	noGPT := writeTemp(t, "zero.img", make([]byte, 1*mib))

	partial := filepath.Join(dir, "partial.img")
	f, err := os.Create(partial)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(64 * mib); err != nil {
		t.Fatal(err)
	}
	err = writeGPT(f, 64*mib, guid{1}, []gptEntry{
		{index: 1, typ: typeESP, id: guid{2}, first: 2048, last: 4095, name: ESPName},
		{index: 2, typ: typeLinux, id: guid{3}, first: 4096, last: 6143, name: SlotAName},
		{index: 3, typ: typeLinux, id: guid{4}, first: 6144, last: 8191, name: SlotBName},
		{index: 4, typ: typeESP, id: guid{5}, first: 8192, last: 10239, name: DataName},
	})
	f.Close()
	if err != nil {
		t.Fatal(err)
	}

	corrupt := filepath.Join(dir, "corrupt.img")
	if _, err := Write(corrupt, Spec{Size: 128 * mib, ESPSize: MinESPSize, SlotSize: mib}); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(corrupt); err != nil {
		t.Fatalf("Read before corrupting: %v", err)
	}
	f, err = os.OpenFile(corrupt, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteAt([]byte{'X'}, 2*512+56) // a byte of the first entry's name
	f.Close()
	if err != nil {
		t.Fatal(err)
	}

	for path, want := range map[string]string{
		noGPT:   "no GPT",
		partial: "partition PLINTH-DATA has type C12A7328",
		corrupt: "checksum mismatch",
	} {
		if _, err := Read(path); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Read(%s) = %v, want an error containing %q", filepath.Base(path), err, want)
		}
	}
}

// TestFormatData checks the data filesystem with e2fsck, then has the
// kernel mount it read-write, write to it and unmount, and checks again.
func TestFormatData(t *testing.T) {
	need(t, mkfsExt4, "e2fsck", "dumpe2fs")
	img := filepath.Join(t.TempDir(), "disk.img")
	start := time.Now()
	parts, err := Write(img, Spec{Size: 2 << 30, ESP: espFiles(t), FormatData: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote a 2 GiB image with ext4 in %v", time.Since(start))
	data := parts[3]
	fsPath := img + "?offset=" + strconv.FormatInt(data.Start, 10)
	run(t, "e2fsck", "-fn", fsPath)
	sb := run(t, "dumpe2fs", "-h", fsPath)
	if !strings.Contains(sb, "Filesystem volume name:   "+DataName) ||
		!strings.Contains(sb, "Filesystem UUID:          "+strings.ToLower(deriveGUID("", "data filesystem").String())) {
		t.Errorf("superblock lacks label %s or the derived UUID:\n%s", DataName, sb)
	}
	if want := "Block count:              " + strconv.FormatInt(data.Size/4096, 10); !strings.Contains(sb, want) {
		t.Errorf("filesystem does not fill the partition: want %q in\n%s", want, sb)
	}

	needRoot(t)
	need(t, "mount")
	dev := losetup(t, "-o", strconv.FormatInt(data.Start, 10), "--sizelimit", strconv.FormatInt(data.Size, 10), img)
	mnt := t.TempDir()
	run(t, "mount", "-t", "ext4", dev, mnt)
	payload := pattern(3*mib, 9)
	werr := os.WriteFile(filepath.Join(mnt, "probe"), payload, 0o600)
	run(t, "umount", mnt)
	if werr != nil {
		t.Fatal(werr)
	}
	run(t, "e2fsck", "-fn", dev)
	run(t, "mount", "-t", "ext4", "-o", "ro", dev, mnt)
	back, rerr := os.ReadFile(filepath.Join(mnt, "probe"))
	run(t, "umount", mnt)
	if rerr != nil || !bytes.Equal(back, payload) {
		t.Fatalf("file written through the kernel reads back wrong: %v", rerr)
	}
}

// TestBlockDevice writes to a loop device as install does to a disk that
// held an earlier install: size from the device, stale slot contents
// cleared, partitions visible to the kernel afterwards.
func TestBlockDevice(t *testing.T) {
	needRoot(t)
	backing := filepath.Join(t.TempDir(), "backing.img")
	f, err := os.Create(backing)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 30); err != nil {
		t.Fatal(err)
	}
	stale := pattern(mib, 5)
	for _, off := range []int64{257 * mib, 513*mib - SlotHeaderSize, 769 * mib} {
		if _, err := f.WriteAt(stale, off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	dev := losetup(t, "-P", backing)

	_, haveMkfs := exec.LookPath(mkfsExt4)
	parts, err := Write(dev, Spec{ESP: espFiles(t), SlotB: Slot{Header: []byte("B")}, FormatData: haveMkfs == nil})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Write(dev, Spec{Size: 2 << 30}); err == nil || !strings.Contains(err.Error(), "leave Spec.Size 0") {
		t.Errorf("a Size other than the device's: %v", err)
	}
	got, err := Read(dev)
	if err != nil {
		t.Fatal(err)
	}
	if got[3] != parts[3] || got[3].Start+got[3].Size != 1023*mib {
		t.Errorf("Read data partition %+v, want %+v ending at 1023 MiB", got[3], parts[3])
	}

	a := parts[1]
	if !allZero(readAt(t, backing, a.Start, mib)) || !allZero(readAt(t, backing, a.Start+a.Size-SlotHeaderSize, SlotHeaderSize)) {
		t.Error("the earlier install's slot A start or header survived")
	}
	if haveMkfs == nil {
		need(t, "e2fsck")
		run(t, "e2fsck", "-fn", dev+"?offset="+strconv.FormatInt(parts[3].Start, 10))
	}

	t.Run("kernel sees partitions", func(t *testing.T) {
		if !kernelParsesGPT(t) {
			t.Skip("kernel built without CONFIG_EFI_PARTITION")
		}
		name := filepath.Base(dev)
		for _, p := range parts {
			sys := filepath.Join("/sys/block", name, name+"p"+strconv.Itoa(p.Index), "start")
			b, err := os.ReadFile(sys)
			if err != nil {
				t.Fatalf("kernel has no partition %d: %v", p.Index, err)
			}
			if s, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); s*512 != p.Start {
				t.Errorf("kernel partition %d starts at sector %d, want %d", p.Index, s, p.Start/512)
			}
		}
		if _, err := Write(dev+"p1", Spec{}); err == nil || !strings.Contains(err.Error(), "is a partition") {
			t.Errorf("writing to a partition: %v", err)
		}
	})
}

// kernelParsesGPT reports whether the running kernel reads GPTs, assuming
// it does when its config is not exposed.
func kernelParsesGPT(t *testing.T) bool {
	f, err := os.Open("/proc/config.gz")
	if err != nil {
		return true
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	config, err := io.ReadAll(z)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Contains(config, []byte("\nCONFIG_EFI_PARTITION=y\n"))
}
