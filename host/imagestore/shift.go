package imagestore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Where the store's filesystem takes no idmapped mounts (tmpfs before
// Linux 6.3: a plinth host without a data disk), a user-namespaced job
// gets copies of its layers instead, made once per layer and ID range,
// whose owners are those of the idmapped view: image ID n is range ID
// Root+n, and IDs past the range's size are its nobody. They take the
// layer's space again, in memory on such a host.

// shiftedDir is where layer diffID's copy for a range starting at root is.
func (s *Store) shiftedDir(diffID string, root int) string {
	return s.path("shifted", strconv.Itoa(root), strings.TrimPrefix(diffID, "sha256:"))
}

// shiftedLayer returns layer diffID's copy for ids, making it on first
// use. The caller holds gcMu shared.
func (s *Store) shiftedLayer(diffID string, ids *IDMapping) (string, error) {
	dir := s.shiftedDir(diffID, ids.Root)
	if _, err := os.Stat(dir); err == nil {
		return dir, nil
	}
	s.shiftMu.Lock()
	defer s.shiftMu.Unlock()
	if _, err := os.Stat(dir); err == nil {
		return dir, nil // made while this one waited
	}
	tmp, err := os.MkdirTemp(s.path("tmp"), "shift-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	// Built aside and renamed into place: a copy cut short by a crash is
	// never taken for a whole one.
	built := filepath.Join(tmp, "layer")
	if err := shiftTree(s.layerDir(diffID), built, ids.Root, ids.size()); err != nil {
		return "", fmt.Errorf("copy layer %s for a user namespace: %w", diffID, err)
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o711); err != nil {
		return "", err
	}
	if err := os.Rename(built, dir); err != nil {
		return "", err
	}
	return dir, nil
}

// removeShifted removes every copy of the layer with hex digest name.
func (s *Store) removeShifted(name string) error {
	ranges, err := os.ReadDir(s.path("shifted"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range ranges {
		errs = append(errs, os.RemoveAll(s.path("shifted", r.Name(), name)))
	}
	return errors.Join(errs...)
}

// shiftTree copies the tree src to dst with every owner ID n made
// root+n (root+65534, the range's nobody, for n past size), keeping
// modes, times, extended attributes (overlayfs whiteouts and opaque
// directories among them) and hard links.
func shiftTree(src, dst string, root, size int) error {
	shift := func(id uint32) int {
		if int(id) >= size {
			return root + 65534
		}
		return root + int(id)
	}
	type dirMeta struct {
		path string
		st   unix.Stat_t
	}
	var dirs []dirMeta
	links := map[uint64]string{} // inode of a hard-linked file → its copy
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			if err := os.Mkdir(target, 0o700); err != nil {
				return err
			}
			dirs = append(dirs, dirMeta{target, st})
		case unix.S_IFREG:
			if st.Nlink > 1 {
				if first, ok := links[st.Ino]; ok {
					return os.Link(first, target)
				}
				links[st.Ino] = target
			}
			if err := copyData(p, target); err != nil {
				return err
			}
		case unix.S_IFLNK:
			to, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := os.Symlink(to, target); err != nil {
				return err
			}
		default: // devices (whiteouts are 0:0), FIFOs, sockets
			if err := unix.Mknod(target, st.Mode, int(st.Rdev)); err != nil {
				return err
			}
		}
		if err := copyXattrs(p, target); err != nil {
			return err
		}
		if err := unix.Lchown(target, shift(st.Uid), shift(st.Gid)); err != nil {
			return err
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			return nil // mode and times once its entries are in
		}
		return setModeAndTimes(target, &st)
	})
	if err != nil {
		return err
	}
	for _, d := range slices.Backward(dirs) {
		if err := setModeAndTimes(d.path, &d.st); err != nil {
			return err
		}
	}
	return nil
}

// setModeAndTimes gives path st's permission bits (after the chown,
// which clears set-ID bits) and times; a symlink only its times.
func setModeAndTimes(path string, st *unix.Stat_t) error {
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		if err := unix.Chmod(path, st.Mode&0o7777); err != nil {
			return err
		}
	}
	ts := []unix.Timespec{st.Atim, st.Mtim}
	return unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW)
}

func copyData(src, dst string) error {
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := copyFile(out, src); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// copyXattrs copies src's extended attributes to dst, neither followed
// if a symlink.
func copyXattrs(src, dst string) error {
	size, err := unix.Llistxattr(src, nil)
	if err != nil || size == 0 {
		if errors.Is(err, unix.ENOTSUP) {
			return nil
		}
		return err
	}
	buf := make([]byte, size)
	n, err := unix.Llistxattr(src, buf)
	if err != nil {
		return err
	}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		vsize, err := unix.Lgetxattr(src, name, nil)
		if err != nil {
			return fmt.Errorf("%s: xattr %s: %w", src, name, err)
		}
		val := make([]byte, vsize)
		if vsize, err = unix.Lgetxattr(src, name, val); err != nil {
			return fmt.Errorf("%s: xattr %s: %w", src, name, err)
		}
		if err := unix.Lsetxattr(dst, name, val[:vsize], 0); err != nil {
			return fmt.Errorf("%s: xattr %s: %w", dst, name, err)
		}
	}
	return nil
}
