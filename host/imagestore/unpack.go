package imagestore

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Layer tars mark deletions with whiteout entries (OCI image spec,
// "Representing Changes"); overlayfs marks them differently, and unpack
// translates.
const (
	whiteoutPrefix = ".wh."
	// whiteoutMeta prefixes aufs bookkeeping entries, which mean nothing
	// to overlayfs.
	whiteoutMeta = ".wh..wh."
	// whiteoutOpaque in a directory hides what lower layers have in it.
	whiteoutOpaque = ".wh..wh..opq"
)

// unpack unpacks the layer tar read from r into dir, an empty directory
// nothing else writes to, and returns the diffID of the stream (its
// sha256) and the summed size of its regular files.
//
// Layers come from untrusted images, so every path is resolved beneath
// dir by the kernel (openat2 RESOLVE_BENEATH) without following any
// symlink: an entry can neither leave dir nor write through a symlink an
// earlier entry made, and a hardlink can only link to a file of the
// layer.
func unpack(ctx context.Context, dir string, r io.Reader) (diffID string, size int64, err error) {
	u, err := newUnpacker(dir)
	if err != nil {
		return "", 0, err
	}
	defer u.close()

	h := sha256.New()
	stream := io.TeeReader(r, h)
	tr := tar.NewReader(stream)
	for {
		if err := ctx.Err(); err != nil {
			return "", 0, err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", 0, fmt.Errorf("read layer tar: %w", err)
		}
		if err := u.entry(hdr, tr); err != nil {
			return "", 0, fmt.Errorf("layer entry %q: %w", hdr.Name, err)
		}
	}
	// The diffID covers the whole stream, including what follows the
	// tar's end marker.
	if _, err := io.Copy(io.Discard, stream); err != nil {
		return "", 0, fmt.Errorf("read layer tar: %w", err)
	}
	if err := u.setDirTimes(); err != nil {
		return "", 0, err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), u.size, nil
}

type unpacker struct {
	root    *os.Root // for RemoveAll, which os.Root does without following symlinks
	rootFD  int      // O_PATH descriptor of the layer directory
	dirs    []dirTime
	size    int64
	copyBuf []byte
}

// dirTime is a directory's mtime, set once the directory is complete
// (creating entries in it changes it).
type dirTime struct {
	path         string
	atime, mtime time.Time
}

func newUnpacker(dir string) (*unpacker, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("unpack layer: %w", err)
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		root.Close()
		return nil, fmt.Errorf("unpack layer: open %s: %w", dir, err)
	}
	return &unpacker{root: root, rootFD: fd, copyBuf: make([]byte, 256<<10)}, nil
}

func (u *unpacker) close() {
	u.root.Close()
	unix.Close(u.rootFD)
}

// entryPath turns a tar entry name into a clean path relative to the
// layer's root. A leading "/" is dropped, as tar does; ".." is refused
// (no image builder writes it, so it only appears in attacks).
func entryPath(name string) (string, error) {
	name = strings.TrimLeft(name, "/")
	for _, elem := range strings.Split(name, "/") {
		if elem == ".." {
			return "", errors.New("path contains \"..\": the image is malformed or malicious; do not run it")
		}
	}
	return path.Clean(name), nil
}

func (u *unpacker) entry(hdr *tar.Header, r io.Reader) error {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil // pax defaults, already applied by archive/tar
	}
	p, err := entryPath(hdr.Name)
	if err != nil {
		return err
	}
	if p == "." {
		// The layer's root: overlayfs shows the job's upper directory's
		// attributes for the root, not a layer's.
		return nil
	}
	parent, base := path.Dir(p), path.Base(p)
	if strings.HasPrefix(base, whiteoutPrefix) {
		return u.whiteout(parent, base)
	}
	pfd, err := u.mkdirAll(parent)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)

	if hdr.Typeflag == tar.TypeDir {
		return u.dir(pfd, p, hdr)
	}
	// A later entry replaces an earlier one of the same name.
	if err := u.clear(pfd, p); err != nil {
		return err
	}
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeGNUSparse:
		err = u.file(pfd, base, hdr, r)
	case tar.TypeSymlink:
		err = u.symlink(pfd, base, hdr)
	case tar.TypeLink:
		// A hardlink shares its target's attributes.
		return u.hardlink(pfd, base, hdr.Linkname)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		err = u.node(pfd, base, hdr)
	default:
		return fmt.Errorf("unsupported tar entry type %q", hdr.Typeflag)
	}
	if err != nil {
		return err
	}
	return setTimes(pfd, base, hdr.AccessTime, hdr.ModTime)
}

// chown gives the entry base of directory pfd its owner and mode. Chown
// clears setuid bits, so the mode comes after it.
func chown(pfd int, base string, hdr *tar.Header) error {
	if err := unix.Fchownat(pfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if err := unix.Fchmodat(pfd, base, mode(hdr), 0); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	return nil
}

func mode(hdr *tar.Header) uint32 {
	return uint32(hdr.Mode) & 0o7777
}

func (u *unpacker) file(pfd int, base string, hdr *tar.Header, r io.Reader) error {
	fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	f := os.NewFile(uintptr(fd), base)
	defer f.Close()
	n, err := io.CopyBuffer(f, r, u.copyBuf)
	if err != nil {
		return fmt.Errorf("write: %w", err)
	}
	u.size += n
	if err := f.Chown(hdr.Uid, hdr.Gid); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if err := unix.Fchmod(fd, mode(hdr)); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	// File capabilities (ping, caddy…) travel as an xattr; it must be set
	// after chown, which clears it. Other xattrs are dropped: trusted.*
	// ones in particular would steer overlayfs.
	if caps, ok := hdr.PAXRecords["SCHILY.xattr.security.capability"]; ok {
		if err := unix.Fsetxattr(fd, "security.capability", []byte(caps), 0); err != nil {
			return fmt.Errorf("set file capabilities: %w", err)
		}
	}
	return f.Close()
}

func (u *unpacker) dir(pfd int, p string, hdr *tar.Header) error {
	base := path.Base(p)
	var st unix.Stat_t
	err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW)
	if err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		// A directory replaces a non-directory; an existing directory
		// keeps its content (and its opaque mark) and takes the entry's
		// attributes.
		if err := u.clear(pfd, p); err != nil {
			return err
		}
		if err := unix.Mkdirat(pfd, base, 0o700); err != nil {
			return fmt.Errorf("mkdir: %w", err)
		}
	}
	if err := chown(pfd, base, hdr); err != nil {
		return err
	}
	u.dirs = append(u.dirs, dirTime{path: p, atime: hdr.AccessTime, mtime: hdr.ModTime})
	return nil
}

func (u *unpacker) hardlink(pfd int, base, linkname string) error {
	target, err := entryPath(linkname)
	if err != nil {
		return fmt.Errorf("hardlink target: %w", err)
	}
	tfd, err := u.open(path.Dir(target), unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return fmt.Errorf("hardlink target %q: %w", linkname, err)
	}
	defer unix.Close(tfd)
	// Without AT_SYMLINK_FOLLOW, a link to a symlink links the symlink
	// itself, as tar means it.
	if err := unix.Linkat(tfd, path.Base(target), pfd, base, 0); err != nil {
		return fmt.Errorf("hardlink to %q (it must be an earlier entry of the layer): %w", linkname, err)
	}
	return nil
}

func (u *unpacker) node(pfd int, base string, hdr *tar.Header) error {
	typ := uint32(unix.S_IFIFO)
	switch hdr.Typeflag {
	case tar.TypeChar:
		typ = unix.S_IFCHR
	case tar.TypeBlock:
		typ = unix.S_IFBLK
	}
	dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
	if err := unix.Mknodat(pfd, base, typ|mode(hdr), int(dev)); err != nil {
		return fmt.Errorf("mknod: %w", err)
	}
	return chown(pfd, base, hdr)
}

func (u *unpacker) symlink(pfd int, base string, hdr *tar.Header) error {
	// The target is content, never followed here: absolute and ".."
	// targets are fine.
	if err := unix.Symlinkat(hdr.Linkname, pfd, base); err != nil {
		return fmt.Errorf("symlink: %w", err)
	}
	// A symlink's mode means nothing on Linux.
	if err := unix.Fchownat(pfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	return nil
}

// whiteout records in overlayfs form that the entry base of directory
// parent deletes something of a lower layer.
func (u *unpacker) whiteout(parent, base string) error {
	pfd, err := u.mkdirAll(parent)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	switch {
	case base == whiteoutOpaque:
		// Extended attributes need a real descriptor, not an O_PATH one.
		fd, err := u.open(parent, unix.O_RDONLY|unix.O_DIRECTORY)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.Fsetxattr(fd, "trusted.overlay.opaque", []byte("y"), 0); err != nil {
			return fmt.Errorf("mark directory opaque (the store's filesystem needs trusted xattrs): %w", err)
		}
		return nil
	case strings.HasPrefix(base, whiteoutMeta):
		return nil
	}
	name := strings.TrimPrefix(base, whiteoutPrefix)
	if name == "" || name == "." || name == ".." {
		return errors.New("whiteout without a name")
	}
	if err := u.clear(pfd, path.Join(parent, name)); err != nil {
		return err
	}
	// overlayfs's whiteout: a character device 0:0.
	if err := unix.Mknodat(pfd, name, unix.S_IFCHR, 0); err != nil {
		return fmt.Errorf("create whiteout: %w", err)
	}
	return nil
}

// clear removes what is at p, if anything; pfd is p's directory.
func (u *unpacker) clear(pfd int, p string) error {
	var st unix.Stat_t
	err := unix.Fstatat(pfd, path.Base(p), &st, unix.AT_SYMLINK_NOFOLLOW)
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil
	case err != nil:
		return fmt.Errorf("stat: %w", err)
	case st.Mode&unix.S_IFMT == unix.S_IFDIR:
		if err := u.root.RemoveAll(p); err != nil {
			return fmt.Errorf("replace directory: %w", err)
		}
	default:
		if err := unix.Unlinkat(pfd, path.Base(p), 0); err != nil {
			return fmt.Errorf("replace: %w", err)
		}
	}
	return nil
}

// open opens p beneath the layer directory. The kernel refuses to leave
// the directory, cross a mount or follow any symlink on the way.
func (u *unpacker) open(p string, flags int) (int, error) {
	fd, err := unix.Openat2(u.rootFD, p, &unix.OpenHow{
		Flags:   uint64(flags | unix.O_CLOEXEC),
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	})
	switch {
	case errors.Is(err, unix.ELOOP):
		return -1, fmt.Errorf("%s is or goes through a symlink, and a layer may not write through symlinks: the image is malformed or malicious", p)
	case errors.Is(err, unix.EXDEV):
		return -1, fmt.Errorf("%s leaves the layer: the image is malformed or malicious", p)
	case err != nil:
		return -1, fmt.Errorf("open %s in layer: %w", p, err)
	}
	return fd, nil
}

// mkdirAll returns an O_PATH descriptor of directory p, creating it and
// its parents as root-owned 0755 directories if the layer has no entries
// for them (yet).
func (u *unpacker) mkdirAll(p string) (int, error) {
	fd, err := u.open(p, unix.O_PATH|unix.O_DIRECTORY)
	if err == nil || !errors.Is(err, unix.ENOENT) || p == "." {
		return fd, err
	}
	pfd, err := u.mkdirAll(path.Dir(p))
	if err != nil {
		return -1, err
	}
	err = unix.Mkdirat(pfd, path.Base(p), 0o755)
	unix.Close(pfd)
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return -1, fmt.Errorf("mkdir %s: %w", p, err)
	}
	return u.open(p, unix.O_PATH|unix.O_DIRECTORY)
}

// setDirTimes gives directories their entries' times, now that nothing
// is created in them any more.
func (u *unpacker) setDirTimes() error {
	for _, d := range u.dirs {
		if err := u.setDirTime(d); err != nil {
			return fmt.Errorf("layer entry %q: %w", d.path, err)
		}
	}
	return nil
}

func (u *unpacker) setDirTime(d dirTime) error {
	// A later entry may have replaced or deleted the directory.
	fd, err := u.open(d.path, unix.O_PATH|unix.O_DIRECTORY)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return nil
	}
	if err != nil {
		return err
	}
	unix.Close(fd)
	pfd, err := u.open(path.Dir(d.path), unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	return setTimes(pfd, path.Base(d.path), d.atime, d.mtime)
}

func setTimes(pfd int, base string, atime, mtime time.Time) error {
	if atime.IsZero() {
		atime = mtime
	}
	ts := []unix.Timespec{
		{Sec: atime.Unix(), Nsec: int64(atime.Nanosecond())},
		{Sec: mtime.Unix(), Nsec: int64(mtime.Nanosecond())},
	}
	if err := unix.UtimesNanoAt(pfd, base, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}
