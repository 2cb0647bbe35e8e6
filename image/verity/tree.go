package verity

import (
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
)

// digestSize is the size of a tree entry. The kernel pads each digest to a
// power of two; a SHA-256 digest already is one.
const digestSize = sha256.Size

// shape is the geometry of a tree: how many hash blocks each level has.
// Level 0 holds the digests of the data blocks; each level above holds
// the digests of the hash blocks below it. On disk the levels are stored
// top level first, as the kernel expects.
type shape struct {
	dataBlockSize, hashBlockSize uint64
	dataBlocks                   uint64
	levels                       []uint64 // hash blocks per level, level 0 first
}

// shapeOf computes the levels the kernel computes for p: levels are added
// until a single block remains, whose digest is the root hash. So one data
// block has no tree at all and the root hash is that block's digest.
func shapeOf(p Params) shape {
	s := shape{
		dataBlockSize: uint64(p.DataBlockSize),
		hashBlockSize: uint64(p.HashBlockSize),
		dataBlocks:    p.DataBlocks,
	}
	perBlock := s.hashBlockSize / digestSize
	for n := s.dataBlocks; n > 1; {
		n = (n + perBlock - 1) / perBlock
		s.levels = append(s.levels, n)
	}
	return s
}

// treeSize is the size of the tree in bytes.
func (s shape) treeSize() uint64 {
	var blocks uint64
	for _, n := range s.levels {
		blocks += n
	}
	return blocks * s.hashBlockSize
}

// levelStart is the byte offset of level i within the tree, which starts
// with the top level.
func (s shape) levelStart(i int) uint64 {
	var blocks uint64
	for _, n := range s.levels[i+1:] {
		blocks += n
	}
	return blocks * s.hashBlockSize
}

// level returns level i's blocks within tree.
func (s shape) level(tree []byte, i int) []byte {
	start := s.levelStart(i)
	return tree[start : start+s.levels[i]*s.hashBlockSize]
}

// hasher computes the salted digests the kernel checks.
type hasher struct {
	salt []byte
	h    hash.Hash
}

func newHasher(salt []byte) *hasher {
	return &hasher{salt: salt, h: sha256.New()}
}

// sum writes the digest of block into dst[:digestSize], salt first as
// format version 1 has it.
func (x *hasher) sum(dst, block []byte) {
	x.h.Reset()
	x.h.Write(x.salt)
	x.h.Write(block)
	x.h.Sum(dst[:0])
}

// build computes the tree over the data blocks in r and returns it as it
// is stored (top level first) with the root hash.
func build(r io.ReaderAt, s shape, h *hasher) (tree, root []byte, err error) {
	tree = make([]byte, s.treeSize())
	root = make([]byte, digestSize)
	leaves := root // a single data block's digest is the root hash
	if len(s.levels) > 0 {
		leaves = s.level(tree, 0)
	}
	err = eachDataBlock(r, s, func(i uint64, block []byte) error {
		h.sum(leaves[i*digestSize:], block)
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	for i := 1; i < len(s.levels); i++ {
		below, this := s.level(tree, i-1), s.level(tree, i)
		for j := uint64(0); j < s.levels[i-1]; j++ {
			h.sum(this[j*digestSize:], below[j*s.hashBlockSize:(j+1)*s.hashBlockSize])
		}
	}
	if top := len(s.levels) - 1; top >= 0 {
		h.sum(root, s.level(tree, top))
	}
	return tree, root, nil
}

// eachDataBlock calls fn with each data block in r, in order, reading in
// large chunks.
func eachDataBlock(r io.ReaderAt, s shape, fn func(i uint64, block []byte) error) error {
	const chunk = 1 << 20 // a multiple of every block size
	buf := make([]byte, chunk)
	size := s.dataBlocks * s.dataBlockSize
	var i uint64
	for off := uint64(0); off < size; off += chunk {
		b := buf[:min(chunk, size-off)]
		if err := readAt(r, b, off); err != nil {
			return fmt.Errorf("read data: %w", err)
		}
		for ; len(b) > 0; b = b[s.dataBlockSize:] {
			if err := fn(i, b[:s.dataBlockSize]); err != nil {
				return err
			}
			i++
		}
	}
	return nil
}

// readAt fills b from r at off; unlike a bare ReadAt it treats a short
// read as an error and a full one ending at EOF as success.
func readAt(r io.ReaderAt, b []byte, off uint64) error {
	n, err := r.ReadAt(b, int64(off))
	if n == len(b) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("%d bytes at byte %d: %w", len(b), off, err)
}
