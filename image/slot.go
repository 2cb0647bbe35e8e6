package image

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// A disk slot's partition holds the system image (squashfs, then its
// verity tree) from its first byte, and in its last SlotHeaderSize bytes
// the signed manifest that describes it. The header is written last when
// a slot is filled, so a slot cut short by a crash has no valid header;
// stage 1 reads it, checks the signature and takes the verity root hash
// from it.

// SlotHeaderSize is the size of the slot header at the partition's end.
const SlotHeaderSize = 64 << 10

var slotMagic = []byte("plinth-slot 1\n")

// ErrNoSlotHeader is returned for a partition without a slot header: a
// slot never written, or one whose writing did not finish.
var ErrNoSlotHeader = errors.New("no slot header (slot empty or not completely written)")

// EncodeSlotHeader returns the header block for a signed manifest.
func EncodeSlotHeader(manifest, sig []byte) ([]byte, error) {
	need := len(slotMagic) + 8 + len(manifest) + len(sig)
	if need > SlotHeaderSize {
		return nil, fmt.Errorf("manifest and signature (%d bytes) do not fit a slot header (%d)", need, SlotHeaderSize)
	}
	h := make([]byte, SlotHeaderSize)
	n := copy(h, slotMagic)
	binary.BigEndian.PutUint32(h[n:], uint32(len(manifest)))
	binary.BigEndian.PutUint32(h[n+4:], uint32(len(sig)))
	n += 8
	n += copy(h[n:], manifest)
	copy(h[n:], sig)
	return h, nil
}

// ReadSlotHeader reads the header of a slot partition of size bytes.
func ReadSlotHeader(r io.ReaderAt, size int64) (manifest, sig []byte, err error) {
	if size < SlotHeaderSize {
		return nil, nil, fmt.Errorf("slot partition of %d bytes is smaller than its header", size)
	}
	h := make([]byte, SlotHeaderSize)
	if _, err := r.ReadAt(h, size-SlotHeaderSize); err != nil {
		return nil, nil, fmt.Errorf("read slot header: %w", err)
	}
	if !bytes.HasPrefix(h, slotMagic) {
		return nil, nil, ErrNoSlotHeader
	}
	n := len(slotMagic)
	ml, sl := int(binary.BigEndian.Uint32(h[n:])), int(binary.BigEndian.Uint32(h[n+4:]))
	n += 8
	if ml > SlotHeaderSize || sl > SlotHeaderSize || n+ml+sl > SlotHeaderSize {
		return nil, nil, fmt.Errorf("slot header lengths out of range (corrupted)")
	}
	return h[n : n+ml], h[n+ml : n+ml+sl], nil
}
