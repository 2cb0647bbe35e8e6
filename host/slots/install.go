package slots

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/plinth-os/plinth/image"
)

// InstallOptions tune Install.
type InstallOptions struct {
	// Tries is how many boots the new slot gets (DefaultTries when 0).
	Tries int
	// AllowDowngrade lets an image older than the booted one in.
	AllowDowngrade bool
}

// Check says whether m may be installed next to what this boot runs:
// not while this boot is on trial, not the version already running, not
// an older one unless allowed.
func (d *Disk) Check(m *image.Manifest, trusted []ed25519.PublicKey, opts InstallOptions) error {
	if d.Booted == "" {
		return fmt.Errorf("this host did not boot from a disk slot; install it to a disk first (`plinth host install --disk`)")
	}
	slots, err := d.Slots(trusted)
	if err != nil {
		return err
	}
	cur := slots[index(d.Booted)]
	if cur.Entry == EntryTrial {
		return fmt.Errorf("this boot (slot %s, %s) is on trial and not committed yet; upgrade again once it is", d.Booted, cur.Version)
	}
	if cur.manifest == nil {
		return nil // an unreadable running slot must not block its replacement
	}
	switch {
	case m.Version == cur.Version && m.Serial == cur.Serial:
		return fmt.Errorf("version %s is what this host runs already", m.Version)
	case m.Serial < cur.Serial && !opts.AllowDowngrade:
		return fmt.Errorf("version %s (serial %d) is older than the running %s (serial %d): a downgrade needs --allow-downgrade", m.Version, m.Serial, cur.Version, cur.Serial)
	}
	return nil
}

func index(slot string) int {
	if slot == "b" {
		return 1
	}
	return 0
}

// Install writes a verified bundle into the slot this boot does not run
// and makes it the next boot, on trial. It returns that slot. The
// caller has checked the bundle (image.Bundle.Verify) and the upgrade
// (Check). The order makes every crash safe: the target's entry goes
// first, so a half-written slot is never booted; its header comes last,
// so a half-written slot never reads as complete; the new entry is
// renamed into place only when everything it points to is written and
// read back.
func (d *Disk) Install(b *image.Bundle, m *image.Manifest, opts InstallOptions) (string, error) {
	if opts.Tries <= 0 {
		opts.Tries = DefaultTries
	}
	if d.Booted == "" {
		return "", fmt.Errorf("not booted from a disk slot")
	}
	target := Other(d.Booted)
	entries, err := readEntries(d.ESP)
	if err != nil {
		return "", err
	}
	booted := entries[d.Booted]
	if len(booted) == 0 {
		return "", fmt.Errorf("no boot entry for the running slot %s; refusing to change the disk", d.Booted)
	}
	header, err := image.EncodeSlotHeader(b.Manifest, b.Signature)
	if err != nil {
		return "", err
	}
	if err := d.checkSpace(target, b); err != nil {
		return "", err
	}

	dir := filepath.Join(d.ESP, EntriesDir)
	for _, e := range entries[target] {
		if err := os.Remove(filepath.Join(dir, e.File)); err != nil {
			return "", fmt.Errorf("remove slot %s's old entry: %w", target, err)
		}
	}
	if err := syncFS(dir); err != nil {
		return "", err
	}
	if err := d.writePartition(target, b.Files[image.SystemName], header); err != nil {
		return "", err
	}
	for name, dst := range map[string]string{image.VmlinuzName: "vmlinuz", image.SlotInitrdName: "initrd.img"} {
		if err := writeFileSynced(filepath.Join(d.ESP, slotFile(target, dst)), b.Files[name]); err != nil {
			return "", err
		}
	}

	var gen uint64
	for _, es := range entries {
		for _, e := range es {
			gen = max(gen, e.Generation)
		}
	}
	e := Entry{
		Slot:       target,
		Counting:   true,
		TriesLeft:  opts.Tries,
		Generation: gen + 1,
		Title:      fmt.Sprintf("plinth %s (slot %s)", m.Version, PartName(target)[len("PLINTH-"):]),
		Options:    withSlot(newest(booted).Options, target),
	}
	if err := writeFileSynced(filepath.Join(dir, e.fileName()), e.format()); err != nil {
		return "", err
	}
	return target, nil
}

// checkSpace refuses a bundle whose files do not fit the target slot.
func (d *Disk) checkSpace(target string, b *image.Bundle) error {
	size, err := deviceSize(d.Parts[target])
	if err != nil {
		return err
	}
	if need := int64(len(b.Files[image.SystemName])) + image.SlotHeaderSize; need > size {
		return fmt.Errorf("the system image needs %d bytes, slot %s's partition has %d", need, target, size)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(d.ESP, &st); err != nil {
		return fmt.Errorf("ESP free space: %w", err)
	}
	free := int64(st.Bavail) * st.Bsize
	for _, n := range []string{"vmlinuz", "initrd.img"} {
		if fi, err := os.Stat(filepath.Join(d.ESP, slotFile(target, n))); err == nil {
			free += fi.Size() // replaced
		}
	}
	need := int64(len(b.Files[image.VmlinuzName]) + len(b.Files[image.SlotInitrdName]))
	if need+1<<20 > free {
		return fmt.Errorf("the kernel and initramfs need %d bytes on the ESP, %d are free", need, free)
	}
	return nil
}

// writePartition writes the system image at the start of a slot's
// partition and the header at its end, each read back from the device.
func (d *Disk) writePartition(slot string, system, header []byte) error {
	f, err := os.OpenFile(d.Parts[slot], os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open slot %s: %w", slot, err)
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return err
	}
	at := size - image.SlotHeaderSize
	// The old header goes first: until the new one is written, the slot
	// reads as empty, never as the old version over half the new bytes.
	if err := writeAtSynced(f, make([]byte, image.SlotHeaderSize), at); err != nil {
		return fmt.Errorf("clear slot %s's header: %w", slot, err)
	}
	if err := writeAtSynced(f, system, 0); err != nil {
		return fmt.Errorf("write slot %s: %w", slot, err)
	}
	if err := readBack(f, system, 0); err != nil {
		return fmt.Errorf("slot %s: %w", slot, err)
	}
	if err := writeAtSynced(f, header, at); err != nil {
		return fmt.Errorf("write slot %s's header: %w", slot, err)
	}
	return readBack(f, header, at)
}

func writeAtSynced(f *os.File, data []byte, at int64) error {
	if _, err := f.WriteAt(data, at); err != nil {
		return err
	}
	return f.Sync()
}

// readBack reads what was written from the device, past the page cache,
// and compares it.
func readBack(f *os.File, want []byte, at int64) error {
	unix.Fadvise(int(f.Fd()), at, int64(len(want)), unix.FADV_DONTNEED)
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, at, int64(len(want)))); err != nil {
		return fmt.Errorf("read back: %w", err)
	}
	if hex.EncodeToString(h.Sum(nil)) != sha256Hex(want) {
		return fmt.Errorf("read back %d bytes at %d: not what was written (failing disk?)", len(want), at)
	}
	return nil
}

// writeFileSynced writes path through a temporary name and renames it
// into place once it is on disk and reads back right.
func writeFileSynced(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".new"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := writeAtSynced(f, data, 0); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	err = readBack(f, data, 0)
	f.Close()
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncFS(filepath.Dir(path))
}

func deviceSize(dev string) (int64, error) {
	f, err := os.Open(dev)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return f.Seek(0, io.SeekEnd)
}
