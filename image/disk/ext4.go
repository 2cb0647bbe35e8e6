package disk

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"time"
)

// ext4 is made by e2fsprogs' mkfs.ext4 rather than in Go: go-diskfs v1.9.4
// writes filesystems e2fsck rejects when the last block group is too small
// for its inode table (1 GiB plus 4 KiB to 2 MiB, for one), and zeroes
// every inode table up front (33 GB of writes for 1 TiB).
const mkfsExt4 = "mkfs.ext4"

// lookMkfs finds mkfs.ext4, failing early so nothing is written when the
// data partition cannot be formatted.
func lookMkfs() (string, error) {
	p, err := exec.LookPath(mkfsExt4)
	if err != nil {
		return "", fmt.Errorf("format %s: %s not found in PATH: install e2fsprogs, or write with FormatData false and format the partition elsewhere", DataName, mkfsExt4)
	}
	return p, nil
}

// formatExt4 makes the data filesystem inside path at part. The UUID, hash
// seed and timestamps are fixed by the spec so the bytes are reproducible.
func formatExt4(mkfs, path string, part Partition, s Spec) error {
	t := s.Time
	if t.Before(fatEpoch) {
		t = fatEpoch
	}
	cmd := exec.Command(mkfs, "-q", "-F",
		"-L", DataName,
		"-U", deriveGUID(s.Seed, "data filesystem").String(),
		"-E", "offset="+strconv.FormatInt(part.Start, 10)+",hash_seed="+deriveGUID(s.Seed, "data hash seed").String(),
		path, strconv.FormatInt(part.Size/1024, 10)+"k")
	// E2FSPROGS_FAKE_TIME is e2fsprogs' clock override; it is what makes
	// the superblock times reproducible.
	cmd.Env = append(os.Environ(), "E2FSPROGS_FAKE_TIME="+strconv.FormatInt(t.Unix(), 10))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("format %s with %s: %w: %s", DataName, mkfs, err, bytes.TrimSpace(out))
	}
	return nil
}

var fatEpoch = time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC)
