package disk

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// target is the image file or block device being written.
type target struct {
	path  string
	block bool
	size  int64
	f     *os.File // nil for an image file until create
}

// openTarget inspects path without changing it. A block device is opened
// exclusively now, which fails while any of its partitions is mounted.
func openTarget(path string, size int64) (*target, error) {
	st, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist) || err == nil && st.Mode().IsRegular():
		if size <= 0 {
			return nil, fmt.Errorf("%s: an image file needs Spec.Size", path)
		}
		return &target{path: path, size: size}, nil
	case err != nil:
		return nil, err
	case st.Mode()&fs.ModeDevice == 0 || st.Mode()&fs.ModeCharDevice != 0:
		return nil, fmt.Errorf("%s is neither a regular file nor a block device", path)
	}

	if isPartition(st) {
		return nil, fmt.Errorf("%s is a partition: pass the whole disk", path)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_EXCL, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s exclusively (is it mounted?): %w", path, err)
	}
	t := &target{path: path, block: true, f: f}
	if err := t.probe(size); err != nil {
		f.Close()
		return nil, err
	}
	return t, nil
}

func (t *target) probe(size int64) error {
	fd := int(t.f.Fd())
	ss, err := unix.IoctlGetInt(fd, unix.BLKSSZGET)
	if err != nil {
		return fmt.Errorf("%s: get logical sector size: %w", t.path, err)
	}
	if ss != sectorSize {
		return fmt.Errorf("%s has %d-byte logical sectors; only %d-byte sectors are supported", t.path, ss, sectorSize)
	}
	n, err := unix.IoctlGetUint64(fd, unix.BLKGETSIZE64)
	if err != nil {
		return fmt.Errorf("%s: get size: %w", t.path, err)
	}
	t.size = int64(n)
	if size != 0 && size != t.size {
		return fmt.Errorf("%s holds %d bytes, not the %d asked for: leave Spec.Size 0 for a block device", t.path, t.size, size)
	}
	return nil
}

// isPartition reports whether st is a partition of a disk, per sysfs.
func isPartition(st fs.FileInfo) bool {
	sys, ok := st.Sys().(*unix.Stat_t)
	if !ok {
		return false
	}
	dev := uint64(sys.Rdev)
	_, err := os.Stat(fmt.Sprintf("/sys/dev/block/%d:%d/partition", unix.Major(dev), unix.Minor(dev)))
	return err == nil
}

// create truncates an image file to its full size; the zero bytes are
// holes, so only what is written takes space.
func (t *target) create() error {
	if t.block {
		return nil
	}
	f, err := os.OpenFile(t.path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if err := f.Truncate(t.size); err != nil {
		f.Close()
		return fmt.Errorf("size %s: %w", t.path, err)
	}
	t.f = f
	return nil
}

func (t *target) close() error {
	if t.f == nil {
		return nil
	}
	err := t.f.Sync()
	if cerr := t.f.Close(); err == nil {
		err = cerr
	}
	t.f = nil
	if err != nil {
		return fmt.Errorf("close %s: %w", t.path, err)
	}
	return nil
}

// rereadPartitions makes the kernel create the new partition devices.
// Devices without partition support (a loop device set up without -P)
// refuse with EINVAL, which leaves nothing to do.
func rereadPartitions(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	err = unix.IoctlSetInt(int(f.Fd()), unix.BLKRRPART, 0)
	if err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("%s is written, but the kernel kept its old partition table (reboot or run partprobe): %w", path, err)
	}
	return nil
}
