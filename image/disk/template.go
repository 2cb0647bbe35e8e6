package disk

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ext4 superblock fields used here: the superblock is 1024 bytes at byte
// 1024 of the filesystem.
const (
	sbOffset         = 1024
	sbSize           = 1024
	sbBlocksCountLo  = 0x04
	sbLogBlockSize   = 0x18
	sbMagic          = 0x38
	sbFeatureIncompt = 0x60
	sbFeatureROCompt = 0x64
	sbUUID           = 0x68
	sbVolumeName     = 0x78
	sbHashSeed       = 0xec
	sbMkfsTime       = 0x108
	sbBlocksCountHi  = 0x150
	sbMkfsTimeHi     = 0x276
	sbChecksum       = 0x3fc

	ext4Magic           = 0xef53
	incompat64Bit       = 0x80
	incompatCsumSeed    = 0x2000
	roCompatMetadataCsm = 0x400
)

// templateBlock is the unit in which the template is copied: a block of
// the template that is all zeros is not written.
const templateBlock = 4096

// dataTemplate is a checked ext4 template with the superblock this disk
// gets.
type dataTemplate struct {
	path  string
	size  int64
	super []byte
}

// planTemplate checks that path is an ext4 image labelled DataName that
// fits part, and makes its superblock for this disk: the UUID and hash
// seed Write would give mkfs.ext4, and s.Time as the creation time. The
// template's checksums must not depend on the UUID (metadata_csum_seed),
// or every checksum would have to be rewritten; the hash seed may change
// because the template holds no indexed directory yet.
func planTemplate(path string, part Partition, s Spec) (*dataTemplate, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("data template: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("data template: %w", err)
	}
	size := st.Size()
	if size > part.Size {
		return nil, fmt.Errorf("data template %s is %d MiB, more than the %d MiB data partition: give a larger disk", path, size>>20, part.Size>>20)
	}
	sb := make([]byte, sbSize)
	if _, err := f.ReadAt(sb, sbOffset); err != nil {
		return nil, fmt.Errorf("data template %s: read superblock: %w", path, err)
	}
	le := binary.LittleEndian
	if le.Uint16(sb[sbMagic:]) != ext4Magic {
		return nil, fmt.Errorf("data template %s is not an ext4 filesystem", path)
	}
	if label := string(bytes.TrimRight(sb[sbVolumeName:sbVolumeName+16], "\x00")); label != DataName {
		return nil, fmt.Errorf("data template %s is labelled %q, not %s", path, label, DataName)
	}
	blocks := uint64(le.Uint32(sb[sbBlocksCountLo:]))
	if le.Uint32(sb[sbFeatureIncompt:])&incompat64Bit != 0 {
		blocks |= uint64(le.Uint32(sb[sbBlocksCountHi:])) << 32
	}
	if bs := int64(1024) << le.Uint32(sb[sbLogBlockSize:]); int64(blocks)*bs != size || size%templateBlock != 0 {
		return nil, fmt.Errorf("data template %s: the filesystem has %d blocks of %d bytes, the file %d bytes", path, blocks, bs, size)
	}
	csum := le.Uint32(sb[sbFeatureROCompt:])&roCompatMetadataCsm != 0
	if csum && le.Uint32(sb[sbFeatureIncompt:])&incompatCsumSeed == 0 {
		return nil, fmt.Errorf("data template %s has metadata_csum without metadata_csum_seed: its UUID cannot change", path)
	}

	uuid := deriveGUID(s.Seed, "data filesystem")
	seed := deriveGUID(s.Seed, "data hash seed")
	copy(sb[sbUUID:], uuid[:])
	copy(sb[sbHashSeed:], seed[:])
	t := s.Time
	if t.Before(fatEpoch) {
		t = fatEpoch
	}
	le.PutUint32(sb[sbMkfsTime:], uint32(t.Unix()))
	sb[sbMkfsTimeHi] = byte(t.Unix() >> 32)
	if csum {
		le.PutUint32(sb[sbChecksum:], crc32c(sb[:sbChecksum]))
	}
	return &dataTemplate{path: path, size: size, super: sb}, nil
}

// crc32c is ext4's checksum: CRC-32C seeded with ~0 and not inverted at
// the end, which is the inverse of what hash/crc32 returns.
func crc32c(b []byte) uint32 {
	return ^crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli))
}

// write copies the template to the start of the data partition, leaving
// out its all-zero blocks. ext4 relies on those reading as zeros: the
// reserved GDT blocks that online resizing fills, the inode table that
// mkfs marked zeroed and the journal it did not initialise all are zero
// blocks of the template. A fresh image file is all zeros; on a block
// device the template's range is zeroed first, whatever the disk held
// (install's blank check reads only its first and last MiB).
func (d *dataTemplate) write(t *target, part Partition) error {
	if t.block {
		if err := zeroRange(t.f, part.Start, d.size); err != nil {
			return fmt.Errorf("zero the data partition's first %d MiB: %w", d.size>>20, err)
		}
	}
	src, err := os.Open(d.path)
	if err != nil {
		return fmt.Errorf("data template: %w", err)
	}
	defer src.Close()
	buf := make([]byte, mib)
	zero := make([]byte, templateBlock)
	for off := int64(0); off < d.size; off += mib {
		n, err := io.ReadFull(src, buf[:min(mib, d.size-off)])
		if err != nil {
			return fmt.Errorf("read data template %s: %w", d.path, err)
		}
		chunk := buf[:n]
		if off == 0 {
			copy(chunk[sbOffset:], d.super)
		}
		// Runs of non-zero blocks, each written at once.
		for i := 0; i < n; {
			if bytes.Equal(chunk[i:i+templateBlock], zero) {
				i += templateBlock
				continue
			}
			j := i + templateBlock
			for j < n && !bytes.Equal(chunk[j:j+templateBlock], zero) {
				j += templateBlock
			}
			if _, err := t.f.WriteAt(chunk[i:j], part.Start+off+int64(i)); err != nil {
				return fmt.Errorf("write %s: %w", DataName, err)
			}
			i = j
		}
	}
	if extra, _ := src.Read(buf[:1]); extra > 0 {
		return fmt.Errorf("data template %s grew while writing", d.path)
	}
	return nil
}

// blkZeroOut is BLKZEROOUT, _IO(0x12, 127): the kernel zeroes a byte
// range of the device, with the device's write-zeroes command where it
// has one and by writing zero pages where not. It drops the range from
// the page cache too.
const blkZeroOut = 0x127f

func zeroRange(f *os.File, start, length int64) error {
	r := [2]uint64{uint64(start), uint64(length)}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), blkZeroOut, uintptr(unsafe.Pointer(&r[0])))
	if errno != 0 {
		return fmt.Errorf("BLKZEROOUT: %w", errno)
	}
	return nil
}
