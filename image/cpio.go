package image

import (
	"bytes"
	"fmt"
	"io"
	"path"
	"sort"

	"github.com/cavaliergopher/cpio"
	"github.com/pierrec/lz4/v4"
)

// entry is one file or directory of an archive. Entries carry no timestamps
// or owners so that archives are byte-for-byte reproducible.
type entry struct {
	Name string // path without leading slash
	Mode cpio.FileMode
	Data []byte // for regular files (when Src is empty)
	Src  string // for regular files: copy from this path
	Link string // for symlinks: target
}

// writeCPIO writes entries as a newc archive, parent directories first and
// everything sorted by name.
func writeCPIO(w io.Writer, entries []entry) error {
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name < entries[j].Name })
	cw := cpio.NewWriter(w)
	for _, e := range entries {
		hdr := &cpio.Header{Name: e.Name, Mode: e.Mode, Links: 1}
		var body io.Reader
		switch {
		case e.Link != "":
			hdr.Mode |= cpio.TypeSymlink
			hdr.Size = int64(len(e.Link))
			hdr.Linkname = e.Link
		case e.isDir():
			hdr.Mode = e.Mode
			hdr.Links = 2
		case e.Src != "":
			data, err := readDecompressed(e.Src)
			if err != nil {
				return err
			}
			hdr.Mode |= cpio.TypeReg
			hdr.Size = int64(len(data))
			body = bytes.NewReader(data)
		default:
			hdr.Mode |= cpio.TypeReg
			hdr.Size = int64(len(e.Data))
			body = bytes.NewReader(e.Data)
		}
		if err := cw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("cpio header %s: %w", e.Name, err)
		}
		if e.Link != "" {
			if _, err := io.WriteString(cw, e.Link); err != nil {
				return err
			}
		}
		if body != nil {
			if _, err := io.Copy(cw, body); err != nil {
				return fmt.Errorf("cpio %s: %w", e.Name, err)
			}
		}
	}
	return cw.Close()
}

// dirsFor returns directory entries for every parent of names, so the kernel
// can create each file without guessing modes.
func dirsFor(names []string) []entry {
	seen := map[string]bool{}
	var dirs []entry
	for _, n := range names {
		for d := path.Dir(n); d != "." && d != "/" && !seen[d]; d = path.Dir(d) {
			seen[d] = true
			dirs = append(dirs, entry{Name: d, Mode: cpio.TypeDir | 0o755})
		}
	}
	return dirs
}

// Compression of the initramfs part that holds init and modules. The system
// image is appended uncompressed: squashfs is compressed already, and the
// guest CPU that unpacks the initramfs is slow under TCG.
const (
	CompressNone = "none"
	CompressLZ4  = "lz4"
)

// compressWriter wraps w in the named compressor. LZ4 must use the legacy
// frame format: it is the only one the kernel's initramfs unpacker reads.
func compressWriter(w io.Writer, kind string) (io.WriteCloser, error) {
	switch kind {
	case CompressNone, "":
		return nopCloser{w}, nil
	case CompressLZ4:
		zw := lz4.NewWriter(w)
		if err := zw.Apply(lz4.LegacyOption(true), lz4.CompressionLevelOption(lz4.Level9)); err != nil {
			return nil, err
		}
		return zw, nil
	}
	return nil, fmt.Errorf("unknown initramfs compression %q (use %s or %s)", kind, CompressLZ4, CompressNone)
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

func (e entry) isDir() bool { return e.Mode&cpio.ModeType == cpio.TypeDir }
