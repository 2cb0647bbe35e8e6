package disk

import (
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"
)

// FAT32 is written in one pass from a complete file list: every directory
// and file gets a contiguous cluster run, so the FAT is a set of straight
// chains and the volume is a pure function of its inputs.
const (
	fatReservedSecs = 32 // boot sector, FSInfo, their backups at 6 and 7
	fatBackupBoot   = 6
	fatMinClusters  = 65525 // fewer and readers take the volume for FAT16
	fatMaxClusters  = 0x0ffffff5 - 2
	fatEOC          = 0x0fffffff
	dirEntrySize    = 32
	lfnChars        = 13
	attrVolumeID    = 0x08
	attrDirectory   = 0x10
	attrArchive     = 0x20
	attrLFN         = 0x0f
)

// fatNode is a file or directory of the volume being planned.
type fatNode struct {
	name     string
	short    [11]byte
	lfn      bool // name differs from short, so LFN entries precede it
	dir      bool
	parent   *fatNode
	children []*fatNode
	file     File
	size     int64
	cluster  uint32 // first cluster; 0 for an empty file
	clusters uint32
}

// fatVolume is a planned FAT32 volume; write puts it on disk.
type fatVolume struct {
	sectors       uint32
	secPerCluster uint32
	fatSecs       uint32
	clusters      uint32 // data clusters, numbered from 2
	used          uint32
	hiddenSecs    uint32 // sectors before the volume, for the BPB
	volumeID      uint32
	label         [11]byte
	date, time    uint16
	root          *fatNode
}

func (v *fatVolume) clusterBytes() int64 { return int64(v.secPerCluster) * sectorSize }

func (v *fatVolume) clusterOffset(c uint32) int64 {
	return int64(fatReservedSecs+2*v.fatSecs)*sectorSize + int64(c-2)*v.clusterBytes()
}

// planFAT lays out a FAT32 volume of size bytes holding files. All errors
// a caller can cause surface here, before anything is written.
func planFAT(size int64, label string, volumeID uint32, mtime time.Time, files []File) (*fatVolume, error) {
	v := &fatVolume{volumeID: volumeID}
	if err := v.geometry(size); err != nil {
		return nil, err
	}
	l, ok := shortLabel(label)
	if !ok {
		return nil, fmt.Errorf("FAT volume label %q: want at most 11 upper-case 8.3 characters", label)
	}
	v.label = l
	v.date, v.time = fatTimestamp(mtime)

	v.root = &fatNode{dir: true}
	for _, f := range files {
		if err := v.add(f); err != nil {
			return nil, fmt.Errorf("ESP file %q: %w", f.Path, err)
		}
	}
	next := uint32(2)
	v.allocate(v.root, &next)
	v.used = next - 2
	if v.used > v.clusters {
		return nil, fmt.Errorf("ESP of %d MiB is too small: files and directories need %d MiB",
			size/mib, (int64(v.used)*v.clusterBytes()+v.clusterOffset(2)+mib-1)/mib)
	}
	return v, nil
}

// geometry picks the cluster size as Microsoft's FAT32 table does and sizes
// the FAT to cover the data area it leaves.
func (v *fatVolume) geometry(size int64) error {
	sectors := size / sectorSize
	if sectors > 0xffffffff {
		return fmt.Errorf("ESP of %d bytes is too large for FAT32", size)
	}
	v.sectors = uint32(sectors)
	switch {
	case size <= 260*mib:
		v.secPerCluster = 1
	case size <= 8<<30:
		v.secPerCluster = 8
	case size <= 16<<30:
		v.secPerCluster = 16
	case size <= 32<<30:
		v.secPerCluster = 32
	default:
		v.secPerCluster = 64
	}
	// Sizing the FAT for everything after the reserved sectors counts the
	// FAT's own sectors as clusters too; the few spare entries are allowed.
	tooSmall := fmt.Errorf("ESP of %d bytes is too small for FAT32", size)
	if v.sectors <= fatReservedSecs {
		return tooSmall
	}
	upper := uint64(v.sectors-fatReservedSecs) / uint64(v.secPerCluster)
	v.fatSecs = uint32(((upper+2)*4 + sectorSize - 1) / sectorSize)
	if fatReservedSecs+2*v.fatSecs >= v.sectors {
		return tooSmall
	}
	v.clusters = (v.sectors - fatReservedSecs - 2*v.fatSecs) / v.secPerCluster
	if v.clusters < fatMinClusters {
		return fmt.Errorf("ESP of %d MiB is too small for FAT32 (%d clusters, at least %d needed): use at least %d MiB",
			size/mib, v.clusters, fatMinClusters, MinESPSize/mib)
	}
	if v.clusters > fatMaxClusters {
		return fmt.Errorf("ESP of %d bytes has too many clusters for FAT32", size)
	}
	return nil
}

// add places f in the tree, creating parent directories.
func (v *fatVolume) add(f File) error {
	if !fs.ValidPath(f.Path) || f.Path == "." {
		return fmt.Errorf("path must be relative and slash-separated, like EFI/BOOT/BOOTX64.EFI")
	}
	size := int64(len(f.Data))
	if f.Data == nil && f.Src != "" {
		st, err := os.Stat(f.Src)
		if err != nil {
			return fmt.Errorf("stat source: %w", err)
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("source %s is not a regular file", f.Src)
		}
		size = st.Size()
	}
	if size > 0xffffffff {
		return fmt.Errorf("%d bytes is more than a FAT file can hold", size)
	}

	parts := strings.Split(f.Path, "/")
	dir := v.root
	for i, name := range parts {
		if err := checkFATName(name); err != nil {
			return err
		}
		last := i == len(parts)-1
		var child *fatNode
		for _, c := range dir.children {
			// FAT names are case-insensitive.
			if strings.EqualFold(c.name, name) {
				child = c
			}
		}
		switch {
		case child == nil:
			child = &fatNode{name: name, dir: !last, parent: dir}
			dir.children = append(dir.children, child)
		case last || !child.dir:
			return fmt.Errorf("%s is given twice or is both a file and a directory", strings.Join(parts[:i+1], "/"))
		}
		dir = child
	}
	dir.file, dir.size = f, size
	return nil
}

// allocate assigns short names and contiguous clusters depth-first, each
// directory before its files and subdirectories; the root gets cluster 2.
func (v *fatVolume) allocate(d *fatNode, next *uint32) {
	slices.SortFunc(d.children, func(a, b *fatNode) int { return strings.Compare(a.name, b.name) })
	used := map[[11]byte]bool{}
	entries := 1 // "." and ".." in subdirectories, the label in the root
	if d != v.root {
		entries = 2
	}
	for _, c := range d.children {
		c.short, c.lfn = shortName(c.name, used)
		used[c.short] = true
		entries++
		if c.lfn {
			entries += lfnSlots(c.name)
		}
	}
	take := func(n *fatNode, bytes int64) {
		n.clusters = uint32((bytes + v.clusterBytes() - 1) / v.clusterBytes())
		if n.clusters > 0 {
			n.cluster = *next
			*next += n.clusters
		}
	}
	take(d, int64(entries)*dirEntrySize)
	for _, c := range d.children {
		if !c.dir {
			take(c, c.size)
		}
	}
	for _, c := range d.children {
		if c.dir {
			v.allocate(c, next)
		}
	}
}

// write puts the volume at offset 0 of w. The data area outside allocated
// clusters is not touched, so a fresh sparse file stays sparse.
func (v *fatVolume) write(w io.WriterAt) error {
	boot := v.bootSector()
	info := v.fsInfo()
	for _, x := range []struct {
		what string
		b    []byte
		sec  int64
	}{
		{"boot sector", boot, 0},
		{"FSInfo", info, 1},
		{"backup boot sector", boot, fatBackupBoot},
		{"backup FSInfo", info, fatBackupBoot + 1},
	} {
		if _, err := w.WriteAt(x.b, x.sec*sectorSize); err != nil {
			return fmt.Errorf("write FAT32 %s: %w", x.what, err)
		}
	}

	fat := make([]byte, int64(v.fatSecs)*sectorSize)
	binary.LittleEndian.PutUint32(fat[0:], 0x0fffff00|0xf8) // media byte
	binary.LittleEndian.PutUint32(fat[4:], fatEOC)
	if err := v.walk(v.root, func(n *fatNode) error {
		for c := n.cluster; c < n.cluster+n.clusters; c++ {
			next := c + 1
			if c == n.cluster+n.clusters-1 {
				next = fatEOC
			}
			binary.LittleEndian.PutUint32(fat[4*c:], next)
		}
		return nil
	}); err != nil {
		return err
	}
	for i := range int64(2) {
		off := (fatReservedSecs + i*int64(v.fatSecs)) * sectorSize
		if _, err := w.WriteAt(fat, off); err != nil {
			return fmt.Errorf("write FAT %d: %w", i+1, err)
		}
	}

	return v.walk(v.root, func(n *fatNode) error {
		if n.dir {
			return v.writeDir(w, n)
		}
		return v.writeFile(w, n)
	})
}

func (v *fatVolume) walk(n *fatNode, fn func(*fatNode) error) error {
	if err := fn(n); err != nil {
		return err
	}
	for _, c := range n.children {
		if err := v.walk(c, fn); err != nil {
			return err
		}
	}
	return nil
}

func (v *fatVolume) writeDir(w io.WriterAt, d *fatNode) error {
	b := make([]byte, 0, int64(d.clusters)*v.clusterBytes())
	if d == v.root {
		b = append(b, v.dirEntry(v.label, attrVolumeID, 0, 0)...)
	} else {
		b = append(b, v.dirEntry(dotName("."), attrDirectory, d.cluster, 0)...)
		// ".." names cluster 0 when the parent is the root.
		parent := d.parent.cluster
		if d.parent == v.root {
			parent = 0
		}
		b = append(b, v.dirEntry(dotName(".."), attrDirectory, parent, 0)...)
	}
	for _, c := range d.children {
		if c.lfn {
			b = append(b, lfnEntries(c.name, c.short)...)
		}
		attr, size := byte(attrArchive), uint32(c.size)
		if c.dir {
			attr, size = attrDirectory, 0
		}
		b = append(b, v.dirEntry(c.short, attr, c.cluster, size)...)
	}
	b = b[:cap(b)] // zero entries mark the end of the directory
	if _, err := w.WriteAt(b, v.clusterOffset(d.cluster)); err != nil {
		return fmt.Errorf("write ESP directory %s: %w", d.name, err)
	}
	return nil
}

func (v *fatVolume) writeFile(w io.WriterAt, n *fatNode) error {
	if n.size == 0 {
		return nil
	}
	ow := io.NewOffsetWriter(w, v.clusterOffset(n.cluster))
	if n.file.Data != nil {
		if _, err := ow.Write(n.file.Data); err != nil {
			return fmt.Errorf("write ESP file %s: %w", n.file.Path, err)
		}
		return nil
	}
	src, err := os.Open(n.file.Src)
	if err != nil {
		return fmt.Errorf("ESP file %s: %w", n.file.Path, err)
	}
	defer src.Close()
	// The size was fixed when planning; a source that changed since would
	// overrun its clusters or leave stale bytes.
	if _, err := io.CopyN(ow, src, n.size); err != nil {
		return fmt.Errorf("copy %s to ESP file %s: %w", n.file.Src, n.file.Path, err)
	}
	if extra, _ := src.Read(make([]byte, 1)); extra > 0 {
		return fmt.Errorf("copy %s to ESP file %s: source grew while writing", n.file.Src, n.file.Path)
	}
	return nil
}

func (v *fatVolume) bootSector() []byte {
	b := make([]byte, sectorSize)
	copy(b[0:3], []byte{0xeb, 0x58, 0x90}) // jump over the BPB
	copy(b[3:11], "PLINTH  ")
	le := binary.LittleEndian
	le.PutUint16(b[11:], sectorSize)
	b[13] = byte(v.secPerCluster)
	le.PutUint16(b[14:], fatReservedSecs)
	b[16] = 2                // FAT copies
	b[21] = 0xf8             // fixed disk
	le.PutUint16(b[24:], 32) // sectors per track, heads: unused by LBA readers
	le.PutUint16(b[26:], 64)
	le.PutUint32(b[28:], v.hiddenSecs)
	le.PutUint32(b[32:], v.sectors)
	le.PutUint32(b[36:], v.fatSecs)
	le.PutUint32(b[44:], 2) // root directory cluster
	le.PutUint16(b[48:], 1) // FSInfo sector
	le.PutUint16(b[50:], fatBackupBoot)
	b[64] = 0x80 // drive number
	b[66] = 0x29 // extended boot signature: the next three fields are valid
	le.PutUint32(b[67:], v.volumeID)
	copy(b[71:82], v.label[:])
	copy(b[82:90], "FAT32   ")
	b[510], b[511] = 0x55, 0xaa
	return b
}

func (v *fatVolume) fsInfo() []byte {
	b := make([]byte, sectorSize)
	le := binary.LittleEndian
	le.PutUint32(b[0:], 0x41615252)
	le.PutUint32(b[484:], 0x61417272)
	le.PutUint32(b[488:], v.clusters-v.used)
	le.PutUint32(b[492:], v.used+2)
	le.PutUint32(b[508:], 0xaa550000)
	return b
}

func (v *fatVolume) dirEntry(name [11]byte, attr byte, cluster, size uint32) []byte {
	b := make([]byte, dirEntrySize)
	le := binary.LittleEndian
	copy(b[0:11], name[:])
	b[11] = attr
	le.PutUint16(b[14:], v.time)
	le.PutUint16(b[16:], v.date)
	le.PutUint16(b[18:], v.date)
	le.PutUint16(b[20:], uint16(cluster>>16))
	le.PutUint16(b[22:], v.time)
	le.PutUint16(b[24:], v.date)
	le.PutUint16(b[26:], uint16(cluster))
	le.PutUint32(b[28:], size)
	return b
}

// fatTimestamp encodes t in UTC, clamped to the years FAT can express;
// the zero time becomes 1980-01-01 00:00.
func fatTimestamp(t time.Time) (date, tm uint16) {
	t = t.UTC()
	switch {
	case t.Year() < 1980:
		t = time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC)
	case t.Year() > 2107:
		t = time.Date(2107, 12, 31, 23, 59, 58, 0, time.UTC)
	}
	date = uint16(t.Year()-1980)<<9 | uint16(t.Month())<<5 | uint16(t.Day())
	tm = uint16(t.Hour())<<11 | uint16(t.Minute())<<5 | uint16(t.Second()/2)
	return date, tm
}

// checkFATName rejects names a FAT long name cannot hold.
func checkFATName(name string) error {
	if n := len(utf16.Encode([]rune(name))); n > 255 {
		return fmt.Errorf("name %q is %d UTF-16 units long, FAT allows 255", name, n)
	}
	if strings.TrimRight(name, ". ") != name {
		return fmt.Errorf("name %q ends in a dot or space, which FAT drops", name)
	}
	for _, r := range name {
		if r < 0x20 || strings.ContainsRune(`"*/:<>?\|`, r) {
			return fmt.Errorf("name %q has character %q, which FAT does not allow", name, r)
		}
	}
	return nil
}

func shortChar(r rune) bool {
	return r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("!#$%&'()-@^_`{}~", r)
}

// shortName derives the 8.3 entry name. A name that is already upper-case
// 8.3 is used as is; one that only differs in case keeps its letters and
// gets a long name; anything lossy gets a "~N" tail unique within used.
func shortName(name string, used map[[11]byte]bool) (short [11]byte, lfn bool) {
	upper := strings.ToUpper(name)
	base, ext := upper, ""
	if i := strings.LastIndexByte(upper, '.'); i > 0 {
		base, ext = upper[:i], upper[i+1:]
	}
	lossy := false
	clean := func(s string, max int) string {
		var out []rune
		for _, r := range s {
			switch {
			case r == ' ' || r == '.':
				lossy = true
				continue
			case !shortChar(r):
				lossy = true
				r = '_'
			}
			out = append(out, r)
		}
		if len(out) > max {
			lossy = true
			out = out[:max]
		}
		return string(out)
	}
	b, e := clean(base, 8), clean(ext, 3)
	if b == "" {
		b, lossy = "_", true
	}
	short = packShort(b, e)
	if !lossy && !used[short] {
		return short, upper != name
	}
	for n := 1; ; n++ {
		tail := "~" + strconv.Itoa(n)
		short = packShort(b[:min(len(b), 8-len(tail))]+tail, e)
		if !used[short] {
			return short, true
		}
	}
}

func packShort(base, ext string) [11]byte {
	var s [11]byte
	copy(s[:], "           ")
	copy(s[0:8], base)
	copy(s[8:11], ext)
	return s
}

func dotName(n string) [11]byte { return packShort(n, "") }

func shortLabel(label string) ([11]byte, bool) {
	if label == "" || len(label) > 11 {
		return [11]byte{}, false
	}
	for _, r := range label {
		if !shortChar(r) && r != ' ' {
			return [11]byte{}, false
		}
	}
	var l [11]byte
	copy(l[:], "           ")
	copy(l[:], label)
	return l, true
}

func lfnSlots(name string) int {
	return (len(utf16.Encode([]rune(name))) + lfnChars - 1) / lfnChars
}

// lfnEntries encodes name as long-name entries, last part first as FAT
// stores them, each carrying the checksum of the short name they belong to.
func lfnEntries(name string, short [11]byte) []byte {
	var sum byte
	for _, c := range short {
		sum = (sum&1)<<7 + sum>>1 + c
	}
	units := utf16.Encode([]rune(name))
	n := lfnSlots(name)
	padded := make([]uint16, n*lfnChars)
	copy(padded, units)
	for i := len(units) + 1; i < len(padded); i++ {
		padded[i] = 0xffff // after the terminating zero
	}
	// Byte offsets of the 13 UTF-16 characters within an LFN entry.
	offsets := [lfnChars]int{1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30}
	out := make([]byte, 0, n*dirEntrySize)
	for seq := n; seq >= 1; seq-- {
		e := make([]byte, dirEntrySize)
		e[0] = byte(seq)
		if seq == n {
			e[0] |= 0x40 // last logical entry
		}
		e[11] = attrLFN
		e[13] = sum
		for i, off := range offsets {
			binary.LittleEndian.PutUint16(e[off:], padded[(seq-1)*lfnChars+i])
		}
		out = append(out, e...)
	}
	return out
}
