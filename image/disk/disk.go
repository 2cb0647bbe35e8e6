// Package disk writes plinth's installable disk layout onto an image file
// or a block device and reads it back.
//
// The layout is a GPT with 512-byte sectors and every partition aligned to
// 1 MiB: the EFI system partition (FAT32, filled with the caller's boot
// files), system slots A and B (raw; the caller supplies the image and the
// slot header), and the data partition (ext4) on the rest of the disk.
// GUIDs, FAT fields and ext4 identity derive from Spec.Seed and Spec.Time,
// so equal specs give byte-identical images.
//
// The package decides where things go and writes them; it does not decide
// what the boot files or slot images contain (image and install do), and
// it mounts nothing.
package disk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/plinth-os/plinth/image"
)

// GPT partition names; the FAT and ext4 labels match them.
const (
	ESPName   = "PLINTH-ESP"
	SlotAName = "PLINTH-A"
	SlotBName = "PLINTH-B"
	DataName  = "PLINTH-DATA"
)

const (
	DefaultESPSize  = 256 << 20
	DefaultSlotSize = 256 << 20
	// MinESPSize is the smallest ESP that holds the 65525 clusters FAT32
	// needs.
	MinESPSize = 33 << 20
	// MinDataSize is the smallest data partition Write accepts.
	MinDataSize = 64 << 20
	// SlotHeaderSize is the tail of each slot reserved for its header.
	SlotHeaderSize = image.SlotHeaderSize
)

// File is one file to put in the ESP.
type File struct {
	Path string // relative, slash-separated: "EFI/BOOT/BOOTX64.EFI"
	Data []byte
	Src  string // read from this file when Data is nil
}

// Slot is what to write into a system slot. The zero Slot leaves the
// slot empty (zeroed).
type Slot struct {
	// Src is copied to the start of the partition.
	Src string
	// Data is written there instead when Src is empty.
	Data []byte
	// Header is written at the start of the partition's last
	// SlotHeaderSize bytes; the rest of that area is zeroed.
	Header []byte
}

// Spec says what to write. The zero value of every field but Size has a
// working default.
type Spec struct {
	// Size is the disk size in bytes. An image file is created or
	// truncated to it; for a block device it must be 0 (use the device)
	// or the device's size.
	Size int64
	// ESPSize and SlotSize are whole MiB; 0 means the default.
	ESPSize, SlotSize int64

	ESP          []File
	SlotA, SlotB Slot
	// FormatData makes an ext4 filesystem on the data partition with
	// mkfs.ext4, which must be in PATH.
	FormatData bool
	// DataTemplate, instead, is an ext4 image (image.DataTemplatePath)
	// to copy to the start of the data partition, with the UUID and hash
	// seed made from Seed and the creation time set to Time. It needs no
	// tools; the filesystem keeps the template's size until it is grown
	// (PID 1 grows it to the partition when it mounts it).
	DataTemplate string

	// Seed determines the disk and partition GUIDs, the FAT volume id and
	// the ext4 UUID. Give installs a unique seed so two plinth disks in
	// one machine differ.
	Seed string
	// Time stamps FAT entries and the ext4 superblock; before 1980 (and
	// the zero Time) means 1980-01-01 UTC.
	Time time.Time
}

// Partition is one partition of the layout.
type Partition struct {
	Name  string // GPT partition name, such as SlotAName
	Index int    // GPT entry number: /dev/vda<Index>, /dev/nvme0n1p<Index>
	Start int64  // bytes from the start of the disk
	Size  int64  // bytes
	GUID  string // unique partition GUID (PARTUUID)
}

// Layout returns where Write would put the partitions on a disk of size
// bytes with s's ESP and slot sizes, or why such a disk is too small.
func Layout(size int64, s Spec) ([]Partition, error) {
	if s.ESPSize == 0 {
		s.ESPSize = DefaultESPSize
	}
	if s.SlotSize == 0 {
		s.SlotSize = DefaultSlotSize
	}
	return layout(size, s.ESPSize, s.SlotSize)
}

// Write lays out and fills the disk at path: an image file (created, or
// truncated and rewritten; sparse) or a whole-disk block device (opened
// exclusively). Everything the spec gets wrong is reported before the disk
// is touched. It returns the partitions in layout order.
func Write(path string, s Spec) ([]Partition, error) {
	if s.ESPSize == 0 {
		s.ESPSize = DefaultESPSize
	}
	if s.SlotSize == 0 {
		s.SlotSize = DefaultSlotSize
	}
	t, err := openTarget(path, s.Size)
	if err != nil {
		return nil, err
	}
	defer t.close()
	w, err := plan(t.size, s)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := t.create(); err != nil {
		return nil, err
	}
	if err := w.write(t); err != nil {
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	if err := t.close(); err != nil {
		return nil, err
	}
	// mkfs.ext4 opens the disk itself, exclusively, so ours must be closed.
	if s.FormatData {
		if err := formatExt4(w.mkfs, path, w.parts[3], s); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	if t.block {
		if err := rereadPartitions(path); err != nil {
			return nil, err
		}
	}
	return w.parts, nil
}

// writePlan is a validated spec placed on a disk.
type writePlan struct {
	spec   Spec
	diskID guid
	parts  []Partition
	gpt    []gptEntry
	esp    *fatVolume
	mkfs   string
	tmpl   *dataTemplate
}

func plan(size int64, s Spec) (*writePlan, error) {
	parts, err := layout(size, s.ESPSize, s.SlotSize)
	if err != nil {
		return nil, err
	}
	w := &writePlan{spec: s, diskID: deriveGUID(s.Seed, "disk"), parts: parts}
	for i, p := range parts {
		typ := typeLinux
		if p.Name == ESPName {
			typ = typeESP
		}
		id := deriveGUID(s.Seed, "partition "+p.Name)
		parts[i].GUID = id.String()
		w.gpt = append(w.gpt, gptEntry{
			index: p.Index, typ: typ, id: id, name: p.Name,
			first: uint64(p.Start / sectorSize),
			last:  uint64((p.Start+p.Size)/sectorSize - 1),
		})
	}

	fatID := deriveGUID(s.Seed, "ESP volume id")
	w.esp, err = planFAT(s.ESPSize, ESPName, binary.LittleEndian.Uint32(fatID[:]), s.Time, s.ESP)
	if err != nil {
		return nil, err
	}
	w.esp.hiddenSecs = uint32(parts[0].Start / sectorSize)

	for _, x := range []struct {
		name string
		slot Slot
	}{{SlotAName, s.SlotA}, {SlotBName, s.SlotB}} {
		if err := checkSlot(x.name, x.slot, s.SlotSize); err != nil {
			return nil, err
		}
	}
	if s.FormatData && s.DataTemplate != "" {
		return nil, fmt.Errorf("FormatData and DataTemplate both set: the data partition is made one way")
	}
	if s.FormatData {
		if w.mkfs, err = lookMkfs(); err != nil {
			return nil, err
		}
	}
	if s.DataTemplate != "" {
		if w.tmpl, err = planTemplate(s.DataTemplate, parts[3], s); err != nil {
			return nil, err
		}
	}
	return w, nil
}

func checkSlot(name string, s Slot, size int64) error {
	if len(s.Header) > SlotHeaderSize {
		return fmt.Errorf("slot %s: header of %d bytes exceeds %d", name, len(s.Header), SlotHeaderSize)
	}
	if s.Src == "" {
		if room := size - SlotHeaderSize; int64(len(s.Data)) > room {
			return fmt.Errorf("slot %s: image of %d bytes, the slot holds %d before its header: raise SlotSize", name, len(s.Data), room)
		}
		return nil
	}
	st, err := os.Stat(s.Src)
	if err != nil {
		return fmt.Errorf("slot %s: %w", name, err)
	}
	if room := size - SlotHeaderSize; st.Size() > room {
		return fmt.Errorf("slot %s: image %s is %d bytes, the slot holds %d before its header: raise SlotSize",
			name, s.Src, st.Size(), room)
	}
	return nil
}

func (w *writePlan) write(t *target) error {
	if t.block {
		if err := w.wipe(t.f); err != nil {
			return err
		}
	}
	if err := writeGPT(t.f, t.size, w.diskID, w.gpt); err != nil {
		return err
	}
	esp := w.parts[0]
	if err := w.esp.write(io.NewOffsetWriter(t.f, esp.Start)); err != nil {
		return err
	}
	for i, slot := range []Slot{w.spec.SlotA, w.spec.SlotB} {
		if err := writeSlot(t.f, w.parts[1+i], slot); err != nil {
			return err
		}
	}
	if w.tmpl != nil {
		return w.tmpl.write(t, w.parts[3])
	}
	return nil
}

// wipe clears what a previous install left where a reader would look: the
// start of every partition (filesystem and squashfs superblocks) and the
// slot headers. A fresh image file is all zeros already.
func (w *writePlan) wipe(f *os.File) error {
	zero := make([]byte, mib)
	for _, p := range w.parts {
		if _, err := f.WriteAt(zero, p.Start); err != nil {
			return fmt.Errorf("clear start of %s: %w", p.Name, err)
		}
		if p.Name == SlotAName || p.Name == SlotBName {
			if _, err := f.WriteAt(zero[:SlotHeaderSize], p.Start+p.Size-SlotHeaderSize); err != nil {
				return fmt.Errorf("clear header of %s: %w", p.Name, err)
			}
		}
	}
	return nil
}

func writeSlot(f *os.File, p Partition, s Slot) error {
	if s.Src == "" && len(s.Data) > 0 {
		if _, err := f.WriteAt(s.Data, p.Start); err != nil {
			return fmt.Errorf("write slot %s: %w", p.Name, err)
		}
	}
	if s.Src != "" {
		src, err := os.Open(s.Src)
		if err != nil {
			return fmt.Errorf("slot %s: %w", p.Name, err)
		}
		defer src.Close()
		room := p.Size - SlotHeaderSize
		n, err := io.Copy(io.NewOffsetWriter(f, p.Start), io.LimitReader(src, room+1))
		if err != nil {
			return fmt.Errorf("copy %s to slot %s: %w", s.Src, p.Name, err)
		}
		if n > room {
			return fmt.Errorf("copy %s to slot %s: image grew past %d bytes while writing", s.Src, p.Name, room)
		}
	}
	if len(s.Header) > 0 {
		// The header marks the slot valid, so the image must be durable
		// before it.
		if err := f.Sync(); err != nil {
			return fmt.Errorf("sync slot %s: %w", p.Name, err)
		}
		h := make([]byte, SlotHeaderSize)
		copy(h, s.Header)
		if _, err := f.WriteAt(h, p.Start+p.Size-SlotHeaderSize); err != nil {
			return fmt.Errorf("write slot %s header: %w", p.Name, err)
		}
	}
	return nil
}

// Read returns the plinth partitions of the disk at path in layout order,
// or an error if its GPT does not hold all four with the right types.
func Read(path string) ([]Partition, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	_, entries, err := readGPT(f)
	if errors.Is(err, errNoGPT) {
		return nil, fmt.Errorf("%s is not a plinth disk: it has no GPT", path)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}

	var parts []Partition
	for _, name := range []string{ESPName, SlotAName, SlotBName, DataName} {
		want := typeLinux
		if name == ESPName {
			want = typeESP
		}
		i := slices.IndexFunc(entries, func(e gptEntry) bool { return e.name == name })
		if i < 0 {
			return nil, fmt.Errorf("%s is not a plinth disk: no partition named %s", path, name)
		}
		e := entries[i]
		if e.typ != want {
			return nil, fmt.Errorf("%s is not a plinth disk: partition %s has type %s, want %s", path, name, e.typ, want)
		}
		parts = append(parts, Partition{
			Name: name, Index: e.index, GUID: e.id.String(),
			Start: int64(e.first) * sectorSize,
			Size:  int64(e.last-e.first+1) * sectorSize,
		})
	}
	return parts, nil
}
