package boot

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// DataLabel is the filesystem label of the data partition: an ext4
// filesystem that init mounts at /var instead of a tmpfs, so that node
// identity, job records, logs and images survive reboots. Make one with
// `mkfs.ext4 -L PLINTH-DATA /dev/...`.
const DataLabel = "PLINTH-DATA"

// diskWait bounds the wait for the disk driver to show the disks the PCI
// bus has: it probes them asynchronously after it loads, which took over
// 5 s in a loaded TCG guest. A disk that is on the bus is waited for
// rather than given up on, since booting without the data partition gives
// the host a new identity.
const diskWait = 2 * time.Minute

// partitionGrace is how long, at least, init keeps looking for the label
// after every disk has shown up (as long again as the disks took, when
// that is longer): the kernel adds a disk's partitions just after the
// disk itself.
const partitionGrace = time.Second

// virtioBlockDevices returns the sysfs directories of the PCI bus's virtio
// block devices (legacy 0x1001 or modern 0x1042 of vendor 0x1af4) under
// sys. Only when there is one does init load the disk driver before
// ready; a diskless machine pays nothing.
func virtioBlockDevices(sys string) []string {
	devs, _ := filepath.Glob(filepath.Join(sys, "bus/pci/devices/*"))
	var blk []string
	for _, d := range devs {
		vendor, _ := os.ReadFile(filepath.Join(d, "vendor"))
		device, _ := os.ReadFile(filepath.Join(d, "device"))
		v, dev := strings.TrimSpace(string(vendor)), strings.TrimSpace(string(device))
		if v == "0x1af4" && (dev == "0x1001" || dev == "0x1042") {
			blk = append(blk, d)
		}
	}
	return blk
}

// disksShown reports whether the driver has made a block device for each
// of the PCI devices pcis (sysfs: <pci>/virtioN/block/vdX).
func disksShown(pcis []string) bool {
	for _, d := range pcis {
		if b, _ := filepath.Glob(filepath.Join(d, "virtio*", "block", "*")); len(b) == 0 {
			return false
		}
	}
	return true
}

// mountData mounts the filesystem labelled DataLabel at /var, over the
// tmpfs stage 1 put there, once the disks of pcis have shown up. It
// returns the device, or "" when no disk carries the label.
func mountData(pcis []string) (string, error) {
	start := time.Now()
	var shown time.Time
	nextSay := start.Add(10 * time.Second)
	for {
		if dev := findLabel(DataLabel); dev != "" {
			if err := unix.Mount(dev, "/var", "ext4", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOATIME, ""); err != nil {
				return dev, fmt.Errorf("mount %s (%s) at /var: %w", dev, DataLabel, err)
			}
			return dev, nil
		}
		now := time.Now()
		if shown.IsZero() && disksShown(pcis) {
			shown = now
		}
		switch {
		// A guest slow to show its disks is slow to scan their
		// partitions too: the grace grows with the wait.
		case !shown.IsZero() && now.Sub(shown) > max(partitionGrace, shown.Sub(start)):
			return "", nil
		case shown.IsZero() && now.Sub(start) > diskWait:
			return "", fmt.Errorf("%d virtio disk(s) on the PCI bus, but the driver showed no block device for some within %s", len(pcis), diskWait)
		case shown.IsZero() && now.After(nextSay):
			say("waiting for the disk driver to show %d disk(s) (%s so far)", len(pcis), now.Sub(start).Round(time.Second))
			nextSay = now.Add(10 * time.Second)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// findLabel returns the block device whose ext2/3/4 superblock carries
// label, or "".
func findLabel(label string) string {
	names, _ := os.ReadDir("/sys/class/block")
	for _, n := range names {
		dev := "/dev/" + n.Name()
		if l, ok := extLabel(dev); ok && l == label {
			return dev
		}
	}
	return ""
}

// extLabel reads the volume label of an ext2/3/4 filesystem: the
// superblock starts at byte 1024, its magic 0xEF53 at offset 56 and the
// 16-byte label at offset 120.
func extLabel(dev string) (string, bool) {
	f, err := os.Open(dev)
	if err != nil {
		return "", false
	}
	defer f.Close()
	sb := make([]byte, 136)
	if _, err := f.ReadAt(sb, 1024); err != nil {
		return "", false
	}
	if binary.LittleEndian.Uint16(sb[56:]) != 0xEF53 {
		return "", false
	}
	return string(bytes.TrimRight(sb[120:136], "\x00")), true
}
