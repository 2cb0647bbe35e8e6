package boot

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DataLabel is the filesystem label of the data partition: an ext4
// filesystem that init mounts at /var instead of a tmpfs, so that node
// identity, job records, logs and images survive reboots. Make one with
// `mkfs.ext4 -L PLINTH-DATA /dev/...`. A filesystem smaller than its
// partition (the template `plinth host install` writes, a disk image
// written to a larger partition) is grown to fill it once mounted.
const DataLabel = "PLINTH-DATA"

// diskWait bounds the wait for the disk drivers: for their modules to
// load, and for the virtio disks on the PCI bus to show up (which took
// over 5 s in a loaded TCG guest). A disk that is on the bus is waited
// for rather than given up on, since booting without the data partition
// gives the host a new identity.
const diskWait = 2 * time.Minute

// partitionGrace is how long, at least, init keeps looking for the label
// after every disk has shown up (as long again as the disks took, when
// that is longer): the kernel adds a disk's partitions just after the
// disk itself.
const partitionGrace = time.Second

// storageControllers returns the sysfs directories of the PCI bus's
// storage controllers (class 0x01: SATA, NVMe, SAS, RAID, virtio disks)
// under sys. Only when there is one does init look for the data
// partition before ready; a diskless machine pays nothing.
func storageControllers(sys string) []string {
	devs, _ := filepath.Glob(filepath.Join(sys, "bus/pci/devices/*"))
	var ctrls []string
	for _, d := range devs {
		class, _ := os.ReadFile(filepath.Join(d, "class"))
		if strings.HasPrefix(strings.TrimSpace(string(class)), "0x01") {
			ctrls = append(ctrls, d)
		}
	}
	return ctrls
}

// isVirtioBlock: a virtio block device (legacy 0x1001 or modern 0x1042
// of vendor 0x1af4), which shows its disk under virtioN/block.
func isVirtioBlock(pci string) bool {
	vendor, _ := os.ReadFile(filepath.Join(pci, "vendor"))
	device, _ := os.ReadFile(filepath.Join(pci, "device"))
	v, dev := strings.TrimSpace(string(vendor)), strings.TrimSpace(string(device))
	return v == "0x1af4" && (dev == "0x1001" || dev == "0x1042")
}

// disksShown reports whether the driver has made a block device for each
// virtio block device among ctrls (sysfs: <pci>/virtioN/block/vdX). Other
// controllers' disks cannot be counted before they show: their drivers
// probe them before their modules finish loading (libata, NVMe), so that
// once the drivers are in and their events handled, they are there.
func disksShown(ctrls []string) bool {
	for _, d := range ctrls {
		if !isVirtioBlock(d) {
			continue
		}
		if b, _ := filepath.Glob(filepath.Join(d, "virtio*", "block", "*")); len(b) == 0 {
			return false
		}
	}
	return true
}

// mountData mounts the filesystem labelled DataLabel at /var, over the
// tmpfs stage 1 put there, once the storage controllers ctrls have their
// drivers (settle) and their disks have shown up. It returns the device,
// or "" when no disk carries the label.
func mountData(ctrls []string, settle func(time.Duration) error, loadFS func() error) (string, error) {
	start := time.Now()
	if err := settle(diskWait); err != nil {
		return "", fmt.Errorf("disk drivers: %w", err)
	}
	var shown time.Time
	nextSay := start.Add(10 * time.Second)
	for {
		if dev := findLabel(DataLabel); dev != "" {
			if err := loadFS(); err != nil {
				return dev, fmt.Errorf("ext4 for %s: %w", dev, err)
			}
			if err := unix.Mount(dev, "/var", "ext4", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOATIME, ""); err != nil {
				return dev, fmt.Errorf("mount %s (%s) at /var: %w", dev, DataLabel, err)
			}
			growStart := time.Now()
			switch from, to, err := growData(dev, "/var"); {
			case err != nil:
				say("data filesystem on %s not grown to fill its partition: %v", dev, err)
			case to > from:
				say("data filesystem on %s grown from %s to %s in %.2fs", dev, byteSize(from), byteSize(to), time.Since(growStart).Seconds())
			}
			return dev, nil
		}
		now := time.Now()
		if shown.IsZero() && disksShown(ctrls) {
			shown = now
			if !anyDisk() {
				return "", nil
			}
		}
		switch {
		// A guest slow to show its disks is slow to scan their
		// partitions too: the grace grows with the wait.
		case !shown.IsZero() && now.Sub(shown) > max(partitionGrace, shown.Sub(start)):
			return "", nil
		case shown.IsZero() && now.Sub(start) > diskWait:
			return "", fmt.Errorf("virtio disk(s) on the PCI bus, but the driver showed no block device for some within %s", diskWait)
		case shown.IsZero() && now.After(nextSay):
			say("waiting for the disk driver to show the virtio disk(s) (%s so far)", now.Sub(start).Round(time.Second))
			nextSay = now.Add(10 * time.Second)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// anyDisk reports whether the machine has a disk: a block device that is
// not a loop device, a RAM disk or a device-mapper target.
func anyDisk() bool {
	names, _ := os.ReadDir("/sys/class/block")
	for _, n := range names {
		name := n.Name()
		if !strings.HasPrefix(name, "loop") && !strings.HasPrefix(name, "ram") && !strings.HasPrefix(name, "dm-") {
			return true
		}
	}
	return false
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

// ext4IocResizeFS is EXT4_IOC_RESIZE_FS, _IOW('f', 16, __u64): grow the
// mounted filesystem to the given number of blocks.
const ext4IocResizeFS = 0x40086610

// growData grows the ext4 filesystem on dev, mounted at mnt, to the size
// of dev when it is smaller, online: the kernel adds block groups (their
// inode tables are zeroed later by its ext4lazyinit thread). It returns
// the filesystem's size in bytes before and after.
func growData(dev, mnt string) (from, to int64, err error) {
	blocks, bs, err := extGeometry(dev)
	if err != nil {
		return 0, 0, err
	}
	from = int64(blocks) * bs
	size, err := deviceSize(dev)
	if err != nil {
		return from, from, err
	}
	want := uint64(size / bs)
	if want <= blocks {
		return from, from, nil
	}
	fd, err := unix.Open(mnt, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return from, from, err
	}
	defer unix.Close(fd)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), ext4IocResizeFS, uintptr(unsafe.Pointer(&want)))
	if errno != 0 {
		return from, from, fmt.Errorf("EXT4_IOC_RESIZE_FS to %d blocks: %w", want, errno)
	}
	// The kernel may leave out a last group too small to hold its own
	// metadata: report what it did.
	if blocks, _, err = extGeometry(dev); err != nil {
		return from, int64(want) * bs, nil
	}
	return from, int64(blocks) * bs, nil
}

// extGeometry reads an ext4 superblock's block count and block size.
func extGeometry(dev string) (blocks uint64, blockSize int64, err error) {
	f, err := os.Open(dev)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, 1024); err != nil {
		return 0, 0, fmt.Errorf("read superblock of %s: %w", dev, err)
	}
	le := binary.LittleEndian
	if le.Uint16(sb[0x38:]) != 0xEF53 {
		return 0, 0, fmt.Errorf("%s holds no ext4 filesystem", dev)
	}
	blocks = uint64(le.Uint32(sb[0x04:]))
	if le.Uint32(sb[0x60:])&0x80 != 0 { // 64bit: the count's high half
		blocks |= uint64(le.Uint32(sb[0x150:])) << 32
	}
	return blocks, 1024 << le.Uint32(sb[0x18:]), nil
}

func deviceSize(dev string) (int64, error) {
	f, err := os.Open(dev)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n, err := unix.IoctlGetUint64(int(f.Fd()), unix.BLKGETSIZE64)
	if err != nil {
		return 0, fmt.Errorf("size of %s: %w", dev, err)
	}
	return int64(n), nil
}

// byteSize prints n bytes in MiB, or GiB from 10 GiB on.
func byteSize(n int64) string {
	if n >= 10<<30 {
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	}
	return fmt.Sprintf("%d MiB", n>>20)
}
