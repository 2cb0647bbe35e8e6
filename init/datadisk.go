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

// dataWait bounds the wait for the disk driver to show its disks, which it
// probes asynchronously after loading.
const dataWait = 5 * time.Second

// virtioBlockPresent reports whether the PCI bus has a virtio block device
// (legacy 0x1001 or modern 0x1042 of vendor 0x1af4). Only then does init
// load the disk driver before ready; a diskless machine pays nothing.
func virtioBlockPresent() bool {
	devs, _ := filepath.Glob("/sys/bus/pci/devices/*")
	for _, d := range devs {
		vendor, _ := os.ReadFile(filepath.Join(d, "vendor"))
		device, _ := os.ReadFile(filepath.Join(d, "device"))
		v, dev := strings.TrimSpace(string(vendor)), strings.TrimSpace(string(device))
		if v == "0x1af4" && (dev == "0x1001" || dev == "0x1042") {
			return true
		}
	}
	return false
}

// mountData mounts the filesystem labelled DataLabel at /var, over the
// tmpfs stage 1 put there. It returns the device, or "" when there is
// none.
func mountData() (string, error) {
	deadline := time.Now().Add(dataWait)
	for {
		if dev := findLabel(DataLabel); dev != "" {
			if err := unix.Mount(dev, "/var", "ext4", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOATIME, ""); err != nil {
				return dev, fmt.Errorf("mount %s (%s) at /var: %w", dev, DataLabel, err)
			}
			return dev, nil
		}
		if time.Now().After(deadline) {
			return "", nil
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
