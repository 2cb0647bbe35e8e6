// Package verity builds and checks the dm-verity hash trees of plinth's
// system images.
//
// It owns the on-disk format: the kernel's version 1 tree (the format
// veritysetup writes by default) appended right after the data, without a
// verity superblock, since the parameters travel in the signed image
// manifest. It also owns the device-mapper table line that activates the
// tree. It does not talk to the kernel (init/devmapper does) and does not
// sign anything (the image manifest carries Params under a signature).
package verity

import (
	"encoding/hex"
	"fmt"
	"math"
)

const (
	// BlockSize is the data and hash block size Append uses: the page size,
	// which the kernel's verification works in most efficiently.
	BlockSize = 4096

	// TargetType is the device-mapper target that reads the tree.
	TargetType = "verity"

	algorithm = "sha256"
	// format is the tree format version: in version 1 the salt is hashed
	// before each block (version 0, Chrome OS's original, hashed it after).
	format = 1
	// maxSaltSize is veritysetup's limit; staying under it keeps our trees
	// checkable with veritysetup.
	maxSaltSize = 256
	// maxBlockSize bounds block sizes: the kernel refuses blocks larger
	// than a page, and 64 KiB is the largest page size of the
	// architectures Linux runs plinth on (arm64, ppc64).
	maxBlockSize = 64 << 10
)

// Params describe a dm-verity hash tree, format version 1, stored without
// a verity superblock: the parameters travel in plinth's signed image
// manifest instead.
type Params struct {
	Algorithm     string `json:"algorithm"`       // only "sha256"
	DataBlockSize uint32 `json:"data_block_size"` // bytes
	HashBlockSize uint32 `json:"hash_block_size"` // bytes
	DataBlocks    uint64 `json:"data_blocks"`
	// HashOffset is the byte offset of the first hash block from the start
	// of the device; Append puts it right after the data.
	HashOffset uint64 `json:"hash_offset"`
	Salt       string `json:"salt"`      // hex, may be empty
	RootHash   string `json:"root_hash"` // hex
}

// Validate checks that p describes a tree this package and the kernel can
// read, naming the field that is wrong.
func (p Params) Validate() error {
	if p.Algorithm != algorithm {
		return fmt.Errorf("verity: unsupported hash algorithm %q (only %s is supported)", p.Algorithm, algorithm)
	}
	if err := checkBlockSize("data_block_size", p.DataBlockSize); err != nil {
		return err
	}
	if err := checkBlockSize("hash_block_size", p.HashBlockSize); err != nil {
		return err
	}
	if p.DataBlocks == 0 {
		return fmt.Errorf("verity: data_blocks is 0; a tree needs at least one data block")
	}
	if p.DataBlocks > math.MaxInt64/uint64(p.DataBlockSize) {
		return fmt.Errorf("verity: data_blocks %d of %d bytes exceed the largest device size", p.DataBlocks, p.DataBlockSize)
	}
	if dataEnd := p.DataBlocks * uint64(p.DataBlockSize); p.HashOffset < dataEnd {
		return fmt.Errorf("verity: hash_offset %d lies inside the data, which ends at byte %d", p.HashOffset, dataEnd)
	}
	// The table gives the tree's start in hash blocks; veritysetup would
	// silently round such an offset down.
	if p.HashOffset%uint64(p.HashBlockSize) != 0 {
		return fmt.Errorf("verity: hash_offset %d is not a multiple of hash_block_size %d", p.HashOffset, p.HashBlockSize)
	}
	if p.HashOffset > math.MaxInt64-shapeOf(p).treeSize() {
		return fmt.Errorf("verity: hash_offset %d puts the tree beyond the largest device size", p.HashOffset)
	}
	salt, err := hex.DecodeString(p.Salt)
	if err != nil {
		return fmt.Errorf("verity: salt is not hex: %w", err)
	}
	if len(salt) > maxSaltSize {
		return fmt.Errorf("verity: salt is %d bytes, at most %d are allowed", len(salt), maxSaltSize)
	}
	root, err := hex.DecodeString(p.RootHash)
	if err != nil {
		return fmt.Errorf("verity: root_hash is not hex: %w", err)
	}
	if len(root) != digestSize {
		return fmt.Errorf("verity: root_hash is %d bytes, a %s digest is %d", len(root), algorithm, digestSize)
	}
	return nil
}

func checkBlockSize(field string, n uint32) error {
	if n < 512 || n > maxBlockSize || n&(n-1) != 0 {
		return fmt.Errorf("verity: %s %d is not a power of two between 512 and %d", field, n, maxBlockSize)
	}
	return nil
}

// Table returns the device-mapper target that verifies dev, a device
// holding the data followed by the tree at HashOffset: its length in
// 512-byte sectors (the data only), its type and its parameters. The
// table line is "0 <sectors> <targetType> <params>". p must be valid (see
// Validate).
func (p Params) Table(dev string) (sectors uint64, targetType, params string) {
	salt := p.Salt
	if salt == "" {
		salt = "-" // the kernel's spelling of "no salt"
	}
	params = fmt.Sprintf("%d %s %s %d %d %d %d %s %s %s",
		format, dev, dev, p.DataBlockSize, p.HashBlockSize,
		p.DataBlocks, p.HashOffset/uint64(p.HashBlockSize),
		p.Algorithm, p.RootHash, salt)
	return p.DataBlocks * uint64(p.DataBlockSize) / 512, TargetType, params
}
