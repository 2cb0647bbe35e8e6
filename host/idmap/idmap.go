// Package idmap makes idmapped mounts: a view of a directory tree whose
// files' owners are shifted into a user namespace's ID range, so that a
// container whose root is an unprivileged host ID owns the files that host
// root owns on disk, and nothing else changes on disk (Linux 5.12+;
// overlayfs takes idmapped layers from 5.19, tmpfs can be idmapped from
// 6.3).
package idmap

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Range maps IDs 0 to Size-1 (user and group alike) to Host to Host+Size-1.
type Range struct {
	Host, Size uint32
}

// Namespaces hands out user namespaces with a given mapping, one per
// Range, made on first use and kept open: a mount made with one keeps
// its own reference.
type Namespaces struct {
	mu  sync.Mutex
	fds map[Range]*os.File
}

// Get returns the user namespace (an nsfs file) that maps r. The caller
// must not close it.
func (n *Namespaces) Get(r Range) (*os.File, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if f, ok := n.fds[r]; ok {
		return f, nil
	}
	f, err := newNamespace(r)
	if err != nil {
		return nil, err
	}
	if n.fds == nil {
		n.fds = map[Range]*os.File{}
	}
	n.fds[r] = f
	return f, nil
}

// newNamespace makes a user namespace mapping r. A user namespace lives as
// long as something refers to it: a child is started in a new one with the
// mapping, traced so that it stops at its exec before running anything,
// its namespace is opened, and the child is killed.
func newNamespace(r Range) (*os.File, error) {
	ids := []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(r.Host), Size: int(r.Size)}}
	p, err := os.StartProcess("/proc/self/exe", []string{"idmap-userns"}, &os.ProcAttr{Sys: &syscall.SysProcAttr{
		Cloneflags:  unix.CLONE_NEWUSER,
		UidMappings: ids,
		GidMappings: ids,
		Ptrace:      true,
		Pdeathsig:   syscall.SIGKILL,
	}})
	if err != nil {
		return nil, fmt.Errorf("user namespace for IDs %d+%d: %w", r.Host, r.Size, err)
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/ns/user", p.Pid))
	p.Kill()
	p.Wait()
	if err != nil {
		return nil, fmt.Errorf("user namespace for IDs %d+%d: %w", r.Host, r.Size, err)
	}
	return f, nil
}

// Mount mounts an idmapped view of the directory src at target (an
// existing directory), read-only if readOnly: files owned by ID k on disk
// appear owned by the namespace's host ID for k.
func Mount(src, target string, userns *os.File, readOnly bool) error {
	fd, err := unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return fmt.Errorf("idmapped mount of %s: clone: %w", src, err)
	}
	defer unix.Close(fd)
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP, Userns_fd: uint64(userns.Fd())}
	if readOnly {
		attr.Attr_set |= unix.MOUNT_ATTR_RDONLY
	}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, &attr); err != nil {
		if errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("idmapped mount of %s: this kernel cannot idmap its filesystem (tmpfs needs Linux 6.3): %w", src, err)
		}
		return fmt.Errorf("idmapped mount of %s: %w", src, err)
	}
	if err := unix.MoveMount(fd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("idmapped mount of %s on %s: %w", src, target, err)
	}
	return nil
}
