package imagestore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/plinth-os/plinth/host/idmap"
)

// Mount assembles a job's root filesystem from the image ref names: an
// overlayfs of the image's layers, read-only below, with the job's writes
// going to jobDir/upper (overlayfs needs jobDir/work, on the same
// filesystem, as scratch space). It returns the mount point,
// jobDir/rootfs. If that is mounted already, Mount returns it as it is.
//
// The mount is nodev: a device node an image brings would reach the
// host's devices, and the container runtime gives a job its /dev.
//
// With ids, for a job in a user namespace, the layers are idmapped into
// its ID range and the writable layer belongs to its root: inside, the
// image's files have the owners the image gave them, and on the host they
// belong to the range, not to host root.
func (s *Store) Mount(ctx context.Context, ref, jobDir string, ids *IDMapping) (rootfs string, err error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	jobDir, err = filepath.Abs(jobDir)
	if err != nil {
		return "", fmt.Errorf("job directory: %w", err)
	}
	// These separate overlayfs mount options.
	if strings.ContainsAny(jobDir, ",:\\") {
		return "", fmt.Errorf("job directory %s: choose a path without ',', ':' or '\\'", jobDir)
	}
	rootfs = filepath.Join(jobDir, "rootfs")
	if mounted, err := isOverlayMount(rootfs); err != nil || mounted {
		return rootfs, err
	}

	// Layers under a mount are in use, but GC learns that only from its
	// caller once Mount has returned.
	s.gcMu.RLock()
	defer s.gcMu.RUnlock()
	r, err := s.find(ref)
	if err != nil {
		return "", err
	}
	if len(r.Layers) == 0 {
		return "", fmt.Errorf("image %s has no layers: there is nothing to run", ref)
	}
	upper, work := filepath.Join(jobDir, "upper"), filepath.Join(jobDir, "work")
	for _, d := range []string{upper, work, rootfs} {
		// upper's mode and owner become those of the job's "/".
		if err := os.MkdirAll(d, 0o755); err != nil {
			return "", fmt.Errorf("mount image %s: %w", ref, err)
		}
	}
	// overlayfs takes the topmost lower layer first.
	lower := make([]string, 0, len(r.Layers))
	for i := len(r.Layers) - 1; i >= 0; i-- {
		dir := s.layerDir(r.Layers[i].DiffID)
		if _, err := os.Stat(dir); err != nil {
			return "", fmt.Errorf("mount image %s: layer %s is missing (remove the image and import it again): %w", ref, r.Layers[i].DiffID, err)
		}
		lower = append(lower, dir)
	}
	if ids != nil {
		mapped, unmap, err := ids.mapLayers(jobDir, lower)
		switch {
		case errors.Is(err, unix.EINVAL):
			// No idmapped mounts on this filesystem: copies.
			lower = lower[:0]
			for i := len(r.Layers) - 1; i >= 0; i-- {
				dir, err := s.shiftedLayer(r.Layers[i].DiffID, ids)
				if err != nil {
					return "", fmt.Errorf("mount image %s: %w", ref, err)
				}
				lower = append(lower, dir)
			}
		case err != nil:
			return "", fmt.Errorf("mount image %s: %w", ref, err)
		default:
			// overlayfs keeps its own clones of its layers: the idmapped
			// mounts are not needed once it is mounted.
			defer unmap()
			lower = mapped
		}
		for _, d := range []string{upper, work} {
			if err := os.Chown(d, ids.Root, ids.Root); err != nil {
				return "", fmt.Errorf("mount image %s: %w", ref, err)
			}
		}
	}
	opts, closeFDs, err := overlayOptions(lower, upper, work)
	if err != nil {
		return "", fmt.Errorf("mount image %s: %w", ref, err)
	}
	defer closeFDs()
	if err := unix.Mount("overlay", rootfs, "overlay", unix.MS_NODEV, opts); err != nil {
		return "", overlayMountError(ref, rootfs, err)
	}
	return rootfs, nil
}

// IDMapping is the user namespace of a job whose root is an unprivileged
// host ID: Root is that ID (user and group), Userns the namespace mapping
// the job's IDs to the host's (see host/idmap).
type IDMapping struct {
	Userns *os.File
	Root   int
	// Size is how many IDs the namespace maps; 0 means 65536.
	Size int
}

func (ids *IDMapping) size() int {
	if ids.Size > 0 {
		return ids.Size
	}
	return 65536
}

// CanIDMap reports whether the store's filesystem takes idmapped mounts
// with userns, by making one; the error says why not. Where it does not,
// Mount copies layers for user-namespaced jobs instead.
func (s *Store) CanIDMap(userns *os.File) error {
	s.gcMu.RLock()
	defer s.gcMu.RUnlock()
	dir, err := os.MkdirTemp(s.path("tmp"), "idmap-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	src, target := filepath.Join(dir, "src"), filepath.Join(dir, "target")
	for _, d := range []string{src, target} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return err
		}
	}
	if err := idmap.Mount(src, target, userns, true); err != nil {
		return err
	}
	return unix.Unmount(target, unix.MNT_DETACH)
}

// mapLayers mounts idmapped views of the layer directories under
// jobDir/lower, and returns their paths and how to unmount them.
func (ids *IDMapping) mapLayers(jobDir string, layers []string) (mapped []string, unmap func(), err error) {
	base := filepath.Join(jobDir, "lower")
	unmap = func() {
		for _, d := range mapped {
			unix.Unmount(d, unix.MNT_DETACH)
		}
		os.RemoveAll(base)
	}
	for i, layer := range layers {
		dir := filepath.Join(base, strconv.Itoa(i))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			unmap()
			return nil, nil, err
		}
		if err := idmap.Mount(layer, dir, ids.Userns, true); err != nil {
			unmap()
			return nil, nil, err
		}
		mapped = append(mapped, dir)
	}
	return mapped, unmap, nil
}

// ErrNoOverlay is Mount's error while the kernel has no overlay
// filesystem: on a plinth machine its module loads in the background
// after boot, so a moment later it does.
var ErrNoOverlay = errors.New("the kernel has no overlay filesystem yet (its module may still be loading after boot)")

func overlayMountError(ref, rootfs string, err error) error {
	if errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("mount image %s: %w", ref, ErrNoOverlay)
	}
	return fmt.Errorf("mount image %s on %s: %w", ref, rootfs, err)
}

// overlayOptions returns the overlayfs mount options. Mount options must
// fit in a page; an image with many layers does not with full layer
// paths, so it then names them by descriptor (/proc/self/fd/N), which
// the kernel resolves while mounting. closeFDs closes those after the
// mount.
func overlayOptions(lower []string, upper, work string) (opts string, closeFDs func(), err error) {
	format := func(lower []string) string {
		return fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", strings.Join(lower, ":"), upper, work)
	}
	closeFDs = func() {}
	if opts := format(lower); len(opts) < os.Getpagesize() {
		return opts, closeFDs, nil
	}
	var fds []int
	closeFDs = func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	short := make([]string, len(lower))
	for i, dir := range lower {
		fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			closeFDs()
			return "", nil, fmt.Errorf("open layer %s: %w", dir, err)
		}
		fds = append(fds, fd)
		short[i] = "/proc/self/fd/" + strconv.Itoa(fd)
	}
	opts = format(short)
	if len(opts) >= os.Getpagesize() {
		closeFDs()
		return "", nil, fmt.Errorf("%d layers are too many for one overlayfs mount: flatten the image", len(lower))
	}
	return opts, closeFDs, nil
}

// Unmount unmounts the root filesystem Mount made in jobDir and removes
// it with the job's writes (jobDir/upper and jobDir/work). It leaves
// jobDir itself and anything else in it, and does nothing for a jobDir
// with no mount.
func (s *Store) Unmount(jobDir string) error {
	rootfs := filepath.Join(jobDir, "rootfs")
	err := unix.Unmount(rootfs, 0)
	switch {
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("unmount %s: %w (stop the job's processes first)", rootfs, err)
	case err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT):
		return fmt.Errorf("unmount %s: %w", rootfs, err)
	}
	// Never delete through a mount: that would delete the job's files
	// from wherever it is mounted from.
	if mounted, err := isMountPoint(rootfs); err != nil {
		return err
	} else if mounted {
		return fmt.Errorf("unmount %s: still a mount point after unmounting; unmount what is mounted there", rootfs)
	}
	for _, d := range []string{"upper", "work"} {
		if err := os.RemoveAll(filepath.Join(jobDir, d)); err != nil {
			return fmt.Errorf("remove job root filesystem: %w", err)
		}
	}
	if err := os.Remove(rootfs); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove job root filesystem: %w", err)
	}
	return nil
}

// isOverlayMount reports whether an overlayfs is mounted at dir; another
// filesystem mounted there is an error.
func isOverlayMount(dir string) (bool, error) {
	mounted, err := isMountPoint(dir)
	if err != nil || !mounted {
		return false, err
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false, fmt.Errorf("statfs %s: %w", dir, err)
	}
	if st.Type != unix.OVERLAYFS_SUPER_MAGIC {
		return false, fmt.Errorf("%s is a mount point of another filesystem than overlayfs: unmount it", dir)
	}
	return true, nil
}

func isMountPoint(dir string) (bool, error) {
	var stx unix.Statx_t
	err := unix.Statx(unix.AT_FDCWD, dir, unix.AT_SYMLINK_NOFOLLOW, 0, &stx)
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("stat %s: %w", dir, err)
	}
	if stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT == 0 {
		return false, fmt.Errorf("stat %s: the kernel does not report mount points (needs Linux 5.8)", dir)
	}
	return stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0, nil
}
