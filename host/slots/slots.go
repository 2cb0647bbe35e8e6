// Package slots manages a disk-installed host's two system slots, A and
// B, and their boot entries on the EFI system partition: what each slot
// holds, which one this boot runs, writing an upgrade into the slot that
// is not running, and committing or failing a boot on trial.
//
// A slot is a partition (PLINTH-A or PLINTH-B) holding the system image
// and its verity tree, with the signed manifest in its last 64 KiB (see
// image.EncodeSlotHeader), plus the kernel and initramfs under
// plinth/<slot>/ on the ESP and a boot entry (see entries.go). The slot
// that runs is never written, nor is /var: an upgrade that goes wrong
// leaves the machine as it was.
package slots

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/plinth-os/plinth/image"
)

// SlotParam is the kernel command line parameter naming the booted slot.
const SlotParam = "plinth.slot"

// HealthyMarker is the file hostd writes once the host is healthy after
// a boot: back in the cluster, its jobs running. PID 1 commits a boot on
// trial when it appears.
const HealthyMarker = "/run/plinth/host-healthy"

// Partition names (GPT) of a plinth disk.
const (
	ESPName = "PLINTH-ESP"
	AName   = "PLINTH-A"
	BName   = "PLINTH-B"
)

// ESPMount is where PID 1 mounts the ESP on a disk boot.
const ESPMount = "/run/plinth/esp"

// DefaultTries is how many boots a new slot gets to become healthy.
const DefaultTries = 3

// Names are the slots.
var Names = []string{"a", "b"}

// PartName is a slot's GPT partition name.
func PartName(slot string) string { return "PLINTH-" + strings.ToUpper(slot) }

// Other is the slot that is not slot.
func Other(slot string) string {
	if slot == "a" {
		return "b"
	}
	return "a"
}

// FindPartition returns the block device (/dev/…) of the partition whose
// GPT name is name, from sysfs, or "" when there is none.
func FindPartition(sys, name string) string {
	devs, _ := filepath.Glob(filepath.Join(sys, "class/block/*/uevent"))
	for _, u := range devs {
		data, err := os.ReadFile(u)
		if err != nil {
			continue
		}
		var dev, part string
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "DEVNAME="); ok {
				dev = v
			}
			if v, ok := strings.CutPrefix(line, "PARTNAME="); ok {
				part = v
			}
		}
		if part == name && dev != "" {
			return "/dev/" + dev
		}
	}
	return ""
}

// MountESP mounts the ESP at dir, read-write: the boot entries are
// renamed there.
func MountESP(dev, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	opts := "codepage=437,iocharset=ascii,shortname=mixed,utf8=0,errors=remount-ro,umask=0077"
	if err := unix.Mount(dev, dir, "vfat", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC|unix.MS_NOATIME, opts); err != nil {
		return fmt.Errorf("mount ESP %s at %s: %w", dev, dir, err)
	}
	return nil
}

// Disk is a host's slots as found on its disk.
type Disk struct {
	ESP    string            // where the ESP is mounted
	Parts  map[string]string // slot → its partition's block device
	Booted string            // the slot this boot runs, "" when not a disk boot
}

// Open finds the slot partitions (sysfs under sys) of a machine that
// booted slot booted, with the ESP mounted at esp.
func Open(sys, esp, booted string) (*Disk, error) {
	d := &Disk{ESP: esp, Parts: map[string]string{}, Booted: booted}
	for _, s := range Names {
		dev := FindPartition(sys, PartName(s))
		if dev == "" {
			return nil, fmt.Errorf("no partition named %s: not a plinth disk (install one with `plinth host install --disk`)", PartName(s))
		}
		d.Parts[s] = dev
	}
	if _, err := os.Stat(filepath.Join(esp, EntriesDir)); err != nil {
		return nil, fmt.Errorf("ESP at %s: %w", esp, err)
	}
	return d, nil
}

// Slot is what one slot holds and how it boots.
type Slot struct {
	Name    string `json:"name"`
	Version string `json:"version,omitempty"`
	Serial  uint64 `json:"serial,omitempty"`
	Booted  bool   `json:"booted"`
	// Entry is its boot entry's state: committed, trial, failed or none.
	Entry     string `json:"entry"`
	TriesLeft int    `json:"tries_left,omitempty"`
	TriesDone int    `json:"tries_done,omitempty"`
	// Error says why the slot's content is unreadable, if it is.
	Error string `json:"error,omitempty"`

	manifest *image.Manifest
	entries  []Entry
}

// Entry states.
const (
	EntryCommitted = "committed"
	EntryTrial     = "trial"
	EntryFailed    = "failed"
	EntryNone      = "none"
)

// Slots reads both slots. Signatures are checked with trusted.
func (d *Disk) Slots(trusted []ed25519.PublicKey) ([]Slot, error) {
	entries, err := readEntries(d.ESP)
	if err != nil {
		return nil, err
	}
	var out []Slot
	for _, s := range Names {
		sl := Slot{Name: s, Booted: s == d.Booted, Entry: EntryNone, entries: entries[s]}
		if es := entries[s]; len(es) > 0 {
			e := newest(es)
			sl.TriesLeft, sl.TriesDone = e.TriesLeft, e.TriesDone
			switch {
			case e.Failed():
				sl.Entry = EntryFailed
			case e.Counting:
				sl.Entry = EntryTrial
			default:
				sl.Entry = EntryCommitted
			}
		}
		m, err := d.readManifest(s, trusted)
		switch {
		case err == nil:
			sl.manifest, sl.Version, sl.Serial = m, m.Version, m.Serial
		case errors.Is(err, image.ErrNoSlotHeader):
			if sl.Entry != EntryNone {
				sl.Error = err.Error()
			}
		default:
			sl.Error = err.Error()
		}
		out = append(out, sl)
	}
	return out, nil
}

func newest(es []Entry) Entry {
	best := es[0]
	for _, e := range es[1:] {
		if e.Generation > best.Generation {
			best = e
		}
	}
	return best
}

// readManifest reads and checks a slot's signed manifest.
func (d *Disk) readManifest(slot string, trusted []ed25519.PublicKey) (*image.Manifest, error) {
	f, err := os.Open(d.Parts[slot])
	if err != nil {
		return nil, err
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, err
	}
	man, sig, err := image.ReadSlotHeader(f, size)
	if err != nil {
		return nil, err
	}
	return image.VerifyManifest(man, sig, trusted)
}

// Commit makes the booted slot's entry a committed one: the boot loader
// stops counting and keeps booting it.
func (d *Disk) Commit() error {
	e, err := d.bootedEntry()
	if err != nil || !e.Counting {
		return err
	}
	e.Counting = false
	return d.rename(e)
}

// MarkFailed uses up the booted slot's tries, so that the next boot goes
// to the other slot. Only an entry on trial can fail: a committed slot
// has nothing to fall back to.
func (d *Disk) MarkFailed() error {
	e, err := d.bootedEntry()
	if err != nil {
		return err
	}
	if !e.Counting {
		return fmt.Errorf("slot %s is committed; it has no other slot to fall back to", e.Slot)
	}
	// Done stays the boots that were tried, for the record.
	e.TriesLeft = 0
	return d.rename(e)
}

// OnTrial reports whether this boot runs an entry that boot counting is
// still deciding about.
func (d *Disk) OnTrial() (bool, error) {
	e, err := d.bootedEntry()
	if err != nil {
		return false, err
	}
	return e.Counting, nil
}

func (d *Disk) bootedEntry() (Entry, error) {
	if d.Booted == "" {
		return Entry{}, fmt.Errorf("not booted from a disk slot")
	}
	entries, err := readEntries(d.ESP)
	if err != nil {
		return Entry{}, err
	}
	es := entries[d.Booted]
	if len(es) == 0 {
		return Entry{}, fmt.Errorf("no boot entry for the booted slot %s on the ESP", d.Booted)
	}
	return newest(es), nil
}

// rename gives e's file the name of its state.
func (d *Disk) rename(e Entry) error {
	dir := filepath.Join(d.ESP, EntriesDir)
	if err := os.Rename(filepath.Join(dir, e.File), filepath.Join(dir, e.fileName())); err != nil {
		return fmt.Errorf("boot entry: %w", err)
	}
	return syncFS(dir)
}

// syncFS flushes the filesystem holding path: FAT has no journal, and a
// rename must be on disk before the machine may reset.
func syncFS(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return nil
}

// sha256Hex is the hex SHA-256 of data.
func sha256Hex(data []byte) string {
	s := sha256.Sum256(data)
	return hex.EncodeToString(s[:])
}

// Rollback makes the other slot the next boot, as it is: its committed
// entry becomes the newest. A boot on trial fails instead (the same
// effect: its tries are used up). It returns the slot that boots next.
func (d *Disk) Rollback() (string, error) {
	cur, err := d.bootedEntry()
	if err != nil {
		return "", err
	}
	if cur.Counting {
		return Other(d.Booted), d.MarkFailed()
	}
	entries, err := readEntries(d.ESP)
	if err != nil {
		return "", err
	}
	target := Other(d.Booted)
	es := entries[target]
	if len(es) == 0 {
		return "", fmt.Errorf("slot %s has no boot entry: nothing to go back to", target)
	}
	e := newest(es)
	if e.Counting {
		return "", fmt.Errorf("slot %s was never committed (%s): it is no version to go back to", target, e.File)
	}
	var gen uint64
	for _, es := range entries {
		for _, x := range es {
			gen = max(gen, x.Generation)
		}
	}
	e.Generation = gen + 1
	dir := filepath.Join(d.ESP, EntriesDir)
	return target, writeFileSynced(filepath.Join(dir, e.fileName()), e.format())
}

// Line sums up slots as `*a:v1:committed b:v2:trial`, the booted one
// starred: for member tags and status tables.
func Line(ss []Slot) string {
	var out []string
	for _, s := range ss {
		star := ""
		if s.Booted {
			star = "*"
		}
		v := s.Version
		if v == "" {
			v = "-"
		}
		out = append(out, fmt.Sprintf("%s%s:%s:%s", star, s.Name, v, s.Entry))
	}
	return strings.Join(out, " ")
}
