package verity

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"io"
)

// Verify checks, in userspace, that r (the data followed by the tree at
// HashOffset) matches p: the tree hashes to RootHash and every data block
// to its entry in the tree. It reads the whole device, where the kernel
// checks blocks as they are read. An error names the first corrupt block.
func Verify(r io.ReaderAt, p Params) error {
	if err := p.Validate(); err != nil {
		return err
	}
	salt, _ := hex.DecodeString(p.Salt)
	root, _ := hex.DecodeString(p.RootHash)
	s := shapeOf(p)
	tree := make([]byte, s.treeSize())
	if err := readAt(r, tree, p.HashOffset); err != nil {
		return fmt.Errorf("verity: read hash tree: %w", err)
	}
	h := newHasher(salt)
	got := make([]byte, digestSize)

	// Top down, as the kernel does: each block is checked against an entry
	// already known good, so a flipped byte is blamed on the block that
	// holds it, not on the blocks below it.
	top := len(s.levels) - 1
	for i := top; i >= 0; i-- {
		blocks := s.level(tree, i)
		for j := uint64(0); j < s.levels[i]; j++ {
			want, against := root, "the root hash"
			if i < top {
				want, against = s.level(tree, i+1)[j*digestSize:(j+1)*digestSize], "its hash in the level above"
			}
			h.sum(got, blocks[j*s.hashBlockSize:(j+1)*s.hashBlockSize])
			if !bytes.Equal(got, want) {
				return fmt.Errorf("verity: hash block %d of tree level %d (device byte %d) is corrupt: it does not match %s",
					j, i, p.HashOffset+s.levelStart(i)+j*s.hashBlockSize, against)
			}
		}
	}

	leaves, against := root, "the root hash"
	if top >= 0 {
		leaves, against = s.level(tree, 0), "its hash in the tree"
	}
	err := eachDataBlock(r, s, func(i uint64, block []byte) error {
		h.sum(got, block)
		if !bytes.Equal(got, leaves[i*digestSize:(i+1)*digestSize]) {
			return fmt.Errorf("data block %d (device byte %d) is corrupt: it does not match %s", i, i*s.dataBlockSize, against)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("verity: %w", err)
	}
	return nil
}
