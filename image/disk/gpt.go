package disk

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"
	"unicode/utf16"
)

// GPT geometry for 512-byte sectors: the usual 128 entries of 128 bytes
// fill 32 sectors after the header, so LBA 34 is the first usable one.
const (
	gptEntries     = 128
	gptEntrySize   = 128
	gptHeaderSize  = 92
	gptArraySecs   = gptEntries * gptEntrySize / sectorSize
	gptNameUnits   = 36
	gptOverheadEnd = 1 + gptArraySecs // backup array and header at the end
)

var gptSignature = []byte("EFI PART")

// guid is a GUID in the byte order of its text form. GPT stores the first
// three fields little-endian, so disk() and guidFromDisk swap them.
type guid [16]byte

var (
	typeESP   = mustParseGUID("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
	typeLinux = mustParseGUID("0FC63DAF-8483-4772-8E79-3D69D8477DE4")
)

func parseGUID(s string) (guid, error) {
	var g guid
	h := strings.ReplaceAll(s, "-", "")
	if len(s) != 36 || len(h) != 32 {
		return g, fmt.Errorf("parse GUID %q: want 8-4-4-4-12 hex digits", s)
	}
	if _, err := hex.Decode(g[:], []byte(h)); err != nil {
		return g, fmt.Errorf("parse GUID %q: %w", s, err)
	}
	return g, nil
}

func mustParseGUID(s string) guid {
	g, err := parseGUID(s)
	if err != nil {
		panic(err)
	}
	return g
}

// deriveGUID makes a version-4-shaped GUID from seed and purpose so that
// equal inputs give equal disks while distinct purposes never collide.
func deriveGUID(seed, purpose string) guid {
	sum := sha256.Sum256([]byte("plinth disk\x00" + seed + "\x00" + purpose))
	var g guid
	copy(g[:], sum[:16])
	g[6] = g[6]&0x0f | 0x40
	g[8] = g[8]&0x3f | 0x80
	return g
}

func (g guid) String() string {
	h := strings.ToUpper(hex.EncodeToString(g[:]))
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

func (g guid) disk() [16]byte {
	d := [16]byte(g)
	d[0], d[1], d[2], d[3] = g[3], g[2], g[1], g[0]
	d[4], d[5] = g[5], g[4]
	d[6], d[7] = g[7], g[6]
	return d
}

func guidFromDisk(b []byte) guid {
	var d [16]byte
	copy(d[:], b)
	// The swap is its own inverse.
	return guid(guid(d).disk())
}

// gptEntry is one partition; first and last are inclusive LBAs.
type gptEntry struct {
	index       int // 1-based slot in the entry array
	typ, id     guid
	first, last uint64
	name        string
}

// writeGPT writes a protective MBR and the primary and backup GPT for a
// disk of size bytes.
func writeGPT(w io.WriterAt, size int64, diskID guid, entries []gptEntry) error {
	sectors := uint64(size / sectorSize)
	array, err := encodeGPTArray(entries)
	if err != nil {
		return err
	}
	backupArray := sectors - gptOverheadEnd
	primary := encodeGPTHeader(1, sectors-1, 2, sectors, diskID, array)
	backup := encodeGPTHeader(sectors-1, 1, backupArray, sectors, diskID, array)

	writes := []struct {
		what string
		b    []byte
		lba  uint64
	}{
		{"protective MBR", protectiveMBR(sectors), 0},
		{"GPT header", primary, 1},
		{"GPT entries", array, 2},
		{"backup GPT entries", array, backupArray},
		{"backup GPT header", backup, sectors - 1},
	}
	for _, x := range writes {
		if _, err := w.WriteAt(x.b, int64(x.lba)*sectorSize); err != nil {
			return fmt.Errorf("write %s: %w", x.what, err)
		}
	}
	return nil
}

// protectiveMBR covers the disk with one 0xEE partition so MBR-only tools
// see it as in use. The whole sector is written to clear old boot code.
func protectiveMBR(sectors uint64) []byte {
	b := make([]byte, sectorSize)
	e := b[446:462]
	copy(e[1:4], []byte{0x00, 0x02, 0x00}) // CHS of LBA 1
	e[4] = 0xee
	copy(e[5:8], []byte{0xff, 0xff, 0xff})
	binary.LittleEndian.PutUint32(e[8:], 1)
	binary.LittleEndian.PutUint32(e[12:], uint32(min(sectors-1, 0xffffffff)))
	b[510], b[511] = 0x55, 0xaa
	return b
}

func encodeGPTArray(entries []gptEntry) ([]byte, error) {
	b := make([]byte, gptEntries*gptEntrySize)
	for _, e := range entries {
		if e.index < 1 || e.index > gptEntries {
			return nil, fmt.Errorf("GPT entry %q: index %d out of range", e.name, e.index)
		}
		units := utf16.Encode([]rune(e.name))
		if len(units) > gptNameUnits {
			return nil, fmt.Errorf("GPT entry %q: name longer than %d UTF-16 units", e.name, gptNameUnits)
		}
		p := b[(e.index-1)*gptEntrySize:][:gptEntrySize]
		t, id := e.typ.disk(), e.id.disk()
		copy(p[0:16], t[:])
		copy(p[16:32], id[:])
		binary.LittleEndian.PutUint64(p[32:], e.first)
		binary.LittleEndian.PutUint64(p[40:], e.last)
		for i, u := range units {
			binary.LittleEndian.PutUint16(p[56+2*i:], u)
		}
	}
	return b, nil
}

func encodeGPTHeader(self, alternate, arrayLBA, sectors uint64, diskID guid, array []byte) []byte {
	b := make([]byte, sectorSize)
	copy(b[0:8], gptSignature)
	binary.LittleEndian.PutUint32(b[8:], 0x00010000) // revision 1.0
	binary.LittleEndian.PutUint32(b[12:], gptHeaderSize)
	binary.LittleEndian.PutUint64(b[24:], self)
	binary.LittleEndian.PutUint64(b[32:], alternate)
	binary.LittleEndian.PutUint64(b[40:], 2+gptArraySecs)
	binary.LittleEndian.PutUint64(b[48:], sectors-gptOverheadEnd-1)
	d := diskID.disk()
	copy(b[56:72], d[:])
	binary.LittleEndian.PutUint64(b[72:], arrayLBA)
	binary.LittleEndian.PutUint32(b[80:], gptEntries)
	binary.LittleEndian.PutUint32(b[84:], gptEntrySize)
	binary.LittleEndian.PutUint32(b[88:], crc32.ChecksumIEEE(array))
	binary.LittleEndian.PutUint32(b[16:], crc32.ChecksumIEEE(b[:gptHeaderSize]))
	return b
}

var errNoGPT = errors.New("no GPT")

// readGPT reads the primary GPT's used entries, checking both CRCs so a
// torn or foreign table is not mistaken for a layout.
func readGPT(r io.ReaderAt) (guid, []gptEntry, error) {
	h := make([]byte, sectorSize)
	if _, err := r.ReadAt(h, sectorSize); err != nil {
		return guid{}, nil, fmt.Errorf("read GPT header: %w", err)
	}
	if !bytes.Equal(h[0:8], gptSignature) {
		return guid{}, nil, errNoGPT
	}
	hsize := binary.LittleEndian.Uint32(h[12:])
	if hsize < gptHeaderSize || hsize > sectorSize {
		return guid{}, nil, fmt.Errorf("GPT header size %d is invalid", hsize)
	}
	want := binary.LittleEndian.Uint32(h[16:])
	check := bytes.Clone(h[:hsize])
	clear(check[16:20])
	if crc32.ChecksumIEEE(check) != want {
		return guid{}, nil, errors.New("GPT header checksum mismatch")
	}
	arrayLBA := binary.LittleEndian.Uint64(h[72:])
	count := binary.LittleEndian.Uint32(h[80:])
	esize := binary.LittleEndian.Uint32(h[84:])
	if esize < gptEntrySize || esize%8 != 0 || count == 0 || uint64(count)*uint64(esize) > 1<<20 {
		return guid{}, nil, fmt.Errorf("GPT entry array of %d×%d bytes is invalid", count, esize)
	}
	array := make([]byte, count*esize)
	if _, err := r.ReadAt(array, int64(arrayLBA)*sectorSize); err != nil {
		return guid{}, nil, fmt.Errorf("read GPT entries: %w", err)
	}
	if crc32.ChecksumIEEE(array) != binary.LittleEndian.Uint32(h[88:]) {
		return guid{}, nil, errors.New("GPT entry array checksum mismatch")
	}

	var entries []gptEntry
	for i := range int(count) {
		p := array[i*int(esize):][:esize]
		e := gptEntry{
			index: i + 1,
			typ:   guidFromDisk(p[0:16]),
			id:    guidFromDisk(p[16:32]),
			first: binary.LittleEndian.Uint64(p[32:]),
			last:  binary.LittleEndian.Uint64(p[40:]),
		}
		if e.typ == (guid{}) {
			continue
		}
		units := make([]uint16, 0, gptNameUnits)
		for j := 0; j < gptNameUnits; j++ {
			u := binary.LittleEndian.Uint16(p[56+2*j:])
			if u == 0 {
				break
			}
			units = append(units, u)
		}
		e.name = string(utf16.Decode(units))
		entries = append(entries, e)
	}
	return guidFromDisk(h[56:72]), entries, nil
}
