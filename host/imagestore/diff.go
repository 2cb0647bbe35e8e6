package imagestore

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// WriteLayer writes to w, as an uncompressed OCI layer tar, the changes an
// overlayfs upper directory holds: what a job wrote on top of its image.
// Overlayfs marks a deletion with a 0/0 character device and a directory
// that hides the layers below with an xattr; the tar says both as OCI
// whiteouts, the inverse of what unpack does. Entries come in lexical
// order with their owners, modes and modification times, so the same
// changes give the same bytes. Sockets are left out (a socket file means
// nothing without its process); other device nodes too, as job roots are
// mounted nodev.
func WriteLayer(w io.Writer, dir string) error {
	tw := tar.NewWriter(w)
	links := map[uint64]string{} // inode → the first name written for it
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		st, _ := info.Sys().(*syscall.Stat_t)
		if st == nil {
			return fmt.Errorf("%s: no stat", rel)
		}
		mode := info.Mode()
		name := filepath.ToSlash(rel)
		if mode&fs.ModeCharDevice != 0 && st.Rdev == 0 {
			return writeWhiteout(tw, filepath.ToSlash(filepath.Dir(rel)), whiteoutPrefix+filepath.Base(rel), st)
		}
		if mode&(fs.ModeSocket|fs.ModeDevice|fs.ModeCharDevice) != 0 {
			return nil
		}
		hdr := &tar.Header{
			Name:    name,
			Mode:    int64(mode.Perm()) | int64(st.Mode&(unix.S_ISUID|unix.S_ISGID|unix.S_ISVTX)),
			Uid:     int(st.Uid),
			Gid:     int(st.Gid),
			ModTime: time.Unix(st.Mtim.Unix()).UTC(),
			Format:  tar.FormatPAX,
		}
		switch {
		case mode.IsDir():
			hdr.Typeflag, hdr.Name = tar.TypeDir, name+"/"
		case mode&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
		case mode&fs.ModeNamedPipe != 0:
			hdr.Typeflag = tar.TypeFifo
		case mode.IsRegular():
			if first, ok := links[st.Ino]; ok && st.Nlink > 1 {
				hdr.Typeflag, hdr.Linkname = tar.TypeLink, first
				return tw.WriteHeader(hdr)
			}
			if st.Nlink > 1 {
				links[st.Ino] = name
			}
			hdr.Typeflag, hdr.Size = tar.TypeReg, info.Size()
			// File capabilities travel as an xattr, as unpack reads them.
			buf := make([]byte, 256)
			if n, err := unix.Lgetxattr(p, "security.capability", buf); err == nil {
				hdr.PAXRecords = map[string]string{"SCHILY.xattr.security.capability": string(buf[:n])}
			}
		default:
			return nil
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if mode.IsDir() {
			if opaque(p) {
				return writeWhiteout(tw, name, whiteoutOpaque, st)
			}
			return nil
		}
		if hdr.Typeflag == tar.TypeReg {
			return copyFile(tw, p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("layer of %s: %w", dir, err)
	}
	return tw.Close()
}

// opaque reports whether overlayfs marked directory p as hiding the
// lower layers' entries.
func opaque(p string) bool {
	buf := make([]byte, 4)
	n, err := unix.Lgetxattr(p, "trusted.overlay.opaque", buf)
	return err == nil && n == 1 && buf[0] == 'y'
}

// writeWhiteout writes the empty entry dir/name that deletes or hides
// what lower layers have, dated as the overlayfs mark was.
func writeWhiteout(tw *tar.Writer, dir, name string, st *syscall.Stat_t) error {
	p := name
	if dir != "." && dir != "" {
		p = dir + "/" + name
	}
	return tw.WriteHeader(&tar.Header{Name: p, Typeflag: tar.TypeReg, Mode: 0o644,
		ModTime: time.Unix(st.Mtim.Unix()).UTC(), Format: tar.FormatPAX})
}

func copyFile(w io.Writer, p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := io.Copy(w, f); err != nil {
		if errors.Is(err, tar.ErrWriteTooLong) {
			return fmt.Errorf("%s grew while it was read: stop what writes to it first", p)
		}
		return err
	}
	return nil
}
