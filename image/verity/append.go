package verity

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
)

// Append pads the file at path with zeros to a multiple of BlockSize,
// appends the hash tree right after the data and returns the parameters.
// The file must hold only the data. A nil or empty salt is derived from
// the data (see contentSalt), so the same input always gives the same
// bytes and parameters.
func Append(path string, salt []byte) (Params, error) {
	if len(salt) > maxSaltSize {
		return Params{}, fmt.Errorf("verity: salt is %d bytes, at most %d are allowed", len(salt), maxSaltSize)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return Params{}, fmt.Errorf("verity: %w", err)
	}
	defer f.Close()
	p, err := appendTree(f, salt)
	if err != nil {
		return Params{}, fmt.Errorf("verity: %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return Params{}, fmt.Errorf("verity: %s: %w", path, err)
	}
	return p, nil
}

func appendTree(f *os.File, salt []byte) (Params, error) {
	fi, err := f.Stat()
	if err != nil {
		return Params{}, err
	}
	size := uint64(fi.Size())
	if size == 0 {
		return Params{}, fmt.Errorf("file is empty, there is nothing to protect")
	}
	padded := (size + BlockSize - 1) / BlockSize * BlockSize
	if padded != size {
		// Extending a file reads back as zeros.
		if err := f.Truncate(int64(padded)); err != nil {
			return Params{}, fmt.Errorf("pad to %d bytes: %w", padded, err)
		}
	}
	if len(salt) == 0 {
		if salt, err = contentSalt(f, padded); err != nil {
			return Params{}, err
		}
	}
	p := Params{
		Algorithm:     algorithm,
		DataBlockSize: BlockSize,
		HashBlockSize: BlockSize,
		DataBlocks:    padded / BlockSize,
		HashOffset:    padded,
		Salt:          hex.EncodeToString(salt),
	}
	tree, root, err := build(f, shapeOf(p), newHasher(salt))
	if err != nil {
		return Params{}, err
	}
	if _, err := f.WriteAt(tree, int64(p.HashOffset)); err != nil {
		return Params{}, fmt.Errorf("write hash tree: %w", err)
	}
	if err := f.Sync(); err != nil {
		return Params{}, err
	}
	p.RootHash = hex.EncodeToString(root)
	return p, nil
}

// contentSalt derives the salt from the padded data: the SHA-256 of it.
// A salt makes precomputed collisions useless across images; deriving it
// keeps builds reproducible, and a different image gets a different salt.
func contentSalt(f *os.File, size uint64) ([]byte, error) {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, int64(size))); err != nil {
		return nil, fmt.Errorf("hash data for the salt: %w", err)
	}
	return h.Sum(nil), nil
}
