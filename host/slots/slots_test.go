package slots

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/plinth-os/plinth/image"
)

// testDisk is a disk made of files: the ESP a directory, the slot
// partitions 4 MiB files. Install and the entry renames work on any
// filesystem, so the whole cycle runs here as it does on a machine.
type testDisk struct {
	*Disk
	key ed25519.PrivateKey
}

func newTestDisk(t *testing.T, booted string) *testDisk {
	t.Helper()
	dir := t.TempDir()
	esp := filepath.Join(dir, "esp")
	os.MkdirAll(filepath.Join(esp, EntriesDir), 0o755)
	d := &Disk{ESP: esp, Parts: map[string]string{}, Booted: booted}
	for _, s := range Names {
		p := filepath.Join(dir, "part-"+s)
		if err := os.WriteFile(p, make([]byte, 4<<20), 0o600); err != nil {
			t.Fatal(err)
		}
		d.Parts[s] = p
	}
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	return &testDisk{Disk: d, key: key}
}

func (td *testDisk) trusted() []ed25519.PublicKey {
	return []ed25519.PublicKey{td.key.Public().(ed25519.PublicKey)}
}

// bundle makes a signed bundle of version v.
func (td *testDisk) bundle(t *testing.T, v string, serial uint64) (*image.Bundle, *image.Manifest) {
	t.Helper()
	m := &image.Manifest{Version: v, Serial: serial, Arch: image.Arch}
	files := map[string][]byte{}
	for i, name := range image.SlotFiles {
		data := bytes.Repeat([]byte(v+name), 1000+i)
		files[name] = data
		s := sha256.Sum256(data)
		m.Files = append(m.Files, image.File{Name: name, Size: int64(len(data)), SHA256: hex.EncodeToString(s[:])})
	}
	man, _ := json.Marshal(m)
	sig, err := image.SignManifest(man, nil, td.key)
	if err != nil {
		t.Fatal(err)
	}
	return &image.Bundle{Manifest: man, Signature: sig, Files: files}, m
}

// factory writes slot a as the disk builder does: v1, committed.
func (td *testDisk) factory(t *testing.T) {
	t.Helper()
	b, _ := td.bundle(t, "v1", 1)
	h, _ := image.EncodeSlotHeader(b.Manifest, b.Signature)
	f, _ := os.OpenFile(td.Parts["a"], os.O_RDWR, 0)
	f.WriteAt(b.Files[image.SystemName], 0)
	f.WriteAt(h, 4<<20-image.SlotHeaderSize)
	f.Close()
	e := Entry{Slot: "a", Generation: 1, Title: "plinth v1 (slot A)", Options: "console=ttyS0 quiet plinth.slot=a"}
	if err := os.WriteFile(filepath.Join(td.ESP, EntriesDir, e.fileName()), e.format(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// bootLoader does what systemd-boot does at a boot: the newest entry
// that has tries left (or counts none) boots, one try moving from left
// to done. It returns the slot booted.
func (td *testDisk) bootLoader(t *testing.T) string {
	t.Helper()
	entries, err := readEntries(td.ESP)
	if err != nil {
		t.Fatal(err)
	}
	var best *Entry
	for _, es := range entries {
		for i := range es {
			e := es[i]
			if e.Failed() {
				continue
			}
			if best == nil || e.Generation > best.Generation {
				best = &e
			}
		}
	}
	if best == nil {
		t.Fatal("no bootable entry")
	}
	if best.Counting {
		old := best.File
		best.TriesLeft--
		best.TriesDone++
		os.Rename(filepath.Join(td.ESP, EntriesDir, old), filepath.Join(td.ESP, EntriesDir, best.fileName()))
	}
	td.Booted = best.Slot
	return best.Slot
}

func (td *testDisk) slot(t *testing.T, name string) Slot {
	t.Helper()
	ss, err := td.Slots(td.trusted())
	if err != nil {
		t.Fatal(err)
	}
	return ss[index(name)]
}

// TestUpgradeCycle: install into the other slot, boot it on trial and
// commit it; install again, fail the trial and fall back; the running
// slot's bytes are never changed.
func TestUpgradeCycle(t *testing.T) {
	td := newTestDisk(t, "a")
	td.factory(t)
	aBytes, _ := os.ReadFile(td.Parts["a"])

	b2, m2 := td.bundle(t, "v2", 2)
	if err := td.Check(m2, td.trusted(), InstallOptions{}); err != nil {
		t.Fatal(err)
	}
	slot, err := td.Install(b2, m2, InstallOptions{})
	if err != nil || slot != "b" {
		t.Fatalf("install: %q %v", slot, err)
	}
	if s := td.slot(t, "b"); s.Version != "v2" || s.Entry != EntryTrial || s.TriesLeft != DefaultTries {
		t.Errorf("slot b after install: %+v", s)
	}
	if got, _ := os.ReadFile(td.Parts["a"]); !bytes.Equal(got, aBytes) {
		t.Error("install changed the running slot's partition")
	}
	for _, f := range []string{"vmlinuz", "initrd.img"} {
		got, err := os.ReadFile(filepath.Join(td.ESP, slotFile("b", f)))
		name := map[string]string{"vmlinuz": image.VmlinuzName, "initrd.img": image.SlotInitrdName}[f]
		if err != nil || !bytes.Equal(got, b2.Files[name]) {
			t.Errorf("ESP %s: %v", f, err)
		}
	}
	entry, _ := os.ReadFile(filepath.Join(td.ESP, EntriesDir, "plinth-b+3.conf"))
	for _, want := range []string{"version 2\n", "sort-key plinth\n", "linux /plinth/b/vmlinuz\n", "options console=ttyS0 quiet plinth.slot=b\n", "title plinth v2 (slot B)"} {
		if !strings.Contains(string(entry), want) {
			t.Errorf("entry lacks %q:\n%s", want, entry)
		}
	}

	if td.bootLoader(t) != "b" {
		t.Fatal("the boot loader did not pick the new slot")
	}
	if trial, _ := td.OnTrial(); !trial {
		t.Fatal("new slot not on trial")
	}
	if err := td.Check(m2, td.trusted(), InstallOptions{}); err == nil || !strings.Contains(err.Error(), "on trial") {
		t.Errorf("upgrade during a trial: %v", err)
	}
	if err := td.Commit(); err != nil {
		t.Fatal(err)
	}
	if s := td.slot(t, "b"); s.Entry != EntryCommitted || !s.Booted {
		t.Errorf("slot b after commit: %+v", s)
	}
	if td.bootLoader(t) != "b" {
		t.Error("a committed slot did not stay the boot")
	}

	// v3 goes into a; its trial fails.
	b3, m3 := td.bundle(t, "v3", 3)
	if _, err := td.Install(b3, m3, InstallOptions{Tries: 2}); err != nil {
		t.Fatal(err)
	}
	if td.bootLoader(t) != "a" {
		t.Fatal("v3 not booted")
	}
	if err := td.MarkFailed(); err != nil {
		t.Fatal(err)
	}
	if td.bootLoader(t) != "b" {
		t.Fatal("no fall back to v2 after a failed trial")
	}
	s := td.slot(t, "a")
	if s.Entry != EntryFailed || s.TriesDone != 1 || s.Version != "v3" {
		t.Errorf("slot a after its failed trial: %+v", s)
	}
	if err := td.MarkFailed(); err == nil {
		t.Error("a committed slot was marked failed")
	}

	// A trial that uses up its tries without PID 1 (hangs) falls back too.
	b4, m4 := td.bundle(t, "v4", 4)
	if _, err := td.Install(b4, m4, InstallOptions{Tries: 2}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if td.bootLoader(t) != "a" {
			t.Fatal("v4 not booted while it had tries")
		}
	}
	if td.bootLoader(t) != "b" {
		t.Fatal("no fall back after the tries were used up")
	}
}

// TestRollback: a committed boot goes back to the other committed slot.
func TestRollback(t *testing.T) {
	td := newTestDisk(t, "a")
	td.factory(t)
	if _, err := td.Rollback(); err == nil {
		t.Error("rolled back to an empty slot")
	}
	b2, m2 := td.bundle(t, "v2", 2)
	if _, err := td.Install(b2, m2, InstallOptions{}); err != nil {
		t.Fatal(err)
	}
	td.bootLoader(t)
	if err := td.Commit(); err != nil {
		t.Fatal(err)
	}
	next, err := td.Rollback()
	if err != nil || next != "a" {
		t.Fatalf("rollback: %q %v", next, err)
	}
	if td.bootLoader(t) != "a" {
		t.Fatal("rollback did not make slot a the boot")
	}
	if s := td.slot(t, "a"); s.Entry != EntryCommitted || s.Version != "v1" {
		t.Errorf("slot a after the rollback: %+v", s)
	}
	if s := td.slot(t, "b"); s.Entry != EntryCommitted {
		t.Errorf("slot b after the rollback: %+v (kept, committed)", s)
	}
}

func TestCheckRefuses(t *testing.T) {
	td := newTestDisk(t, "a")
	td.factory(t)
	_, same := td.bundle(t, "v1", 1)
	_, older := td.bundle(t, "v0", 0)
	if err := td.Check(same, td.trusted(), InstallOptions{}); err == nil || !strings.Contains(err.Error(), "runs already") {
		t.Errorf("same version: %v", err)
	}
	if err := td.Check(older, td.trusted(), InstallOptions{}); err == nil || !strings.Contains(err.Error(), "--allow-downgrade") {
		t.Errorf("older: %v", err)
	}
	if err := td.Check(older, td.trusted(), InstallOptions{AllowDowngrade: true}); err != nil {
		t.Errorf("allowed downgrade: %v", err)
	}
	nb := &Disk{ESP: td.ESP, Parts: td.Parts}
	if err := nb.Check(older, td.trusted(), InstallOptions{}); err == nil {
		t.Error("a host not booted from a slot took an upgrade")
	}
}

// TestInstallTooBig: a system image larger than the slot is refused
// before anything is written.
func TestInstallTooBig(t *testing.T) {
	td := newTestDisk(t, "a")
	td.factory(t)
	b, m := td.bundle(t, "v2", 2)
	b.Files[image.SystemName] = make([]byte, 4<<20)
	before, _ := readEntries(td.ESP)
	if _, err := td.Install(b, m, InstallOptions{}); err == nil || !strings.Contains(err.Error(), "partition has") {
		t.Fatalf("got %v", err)
	}
	after, _ := readEntries(td.ESP)
	if len(after) != len(before) {
		t.Errorf("entries changed: %v → %v", before, after)
	}
}

func TestEntryNames(t *testing.T) {
	for name, want := range map[string]Entry{
		"plinth-a.conf":      {Slot: "a"},
		"plinth-b+3.conf":    {Slot: "b", Counting: true, TriesLeft: 3},
		"plinth-b+1-2.conf":  {Slot: "b", Counting: true, TriesLeft: 1, TriesDone: 2},
		"plinth-a+0-3.conf":  {Slot: "a", Counting: true, TriesDone: 3},
		"plinth-a+10-0.conf": {Slot: "a", Counting: true, TriesLeft: 10},
	} {
		e, err := parseEntry(name, []byte("version 4\n"))
		if err != nil {
			t.Fatal(err)
		}
		want.File, want.Generation = name, 4
		if e != want {
			t.Errorf("%s: %+v, want %+v", name, e, want)
		}
		// Written back in the short form for no tries done.
		short := strings.Replace(name, "+10-0", "+10", 1)
		if back := e.fileName(); back != short {
			t.Errorf("%s: named back %s", name, back)
		}
	}
	for _, bad := range []string{"plinth-c.conf", "plinth-a+x.conf", "other.conf", "plinth-a.conf.new"} {
		if _, err := parseEntry(bad, nil); err == nil {
			t.Errorf("%s parsed", bad)
		}
	}
	if got := withSlot("console=ttyS0 plinth.slot=a quiet", "b"); got != "console=ttyS0 quiet plinth.slot=b" {
		t.Errorf("withSlot: %q", got)
	}
}
