package devmapper

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	controlPath = "/dev/" + unix.DM_DIR + "/" + unix.DM_CONTROL_NODE
	// controlDev holds the control node's "major:minor", for when devtmpfs
	// has not made the node.
	controlDev = "/sys/class/misc/device-mapper/dev"
	// align is the alignment the kernel requires of each dm_target_spec.
	align = 8
)

// cmd is a device-mapper ioctl request.
type cmd uint

const (
	cmdDevCreate  cmd = unix.DM_DEV_CREATE
	cmdTableLoad  cmd = unix.DM_TABLE_LOAD
	cmdDevSuspend cmd = unix.DM_DEV_SUSPEND
	cmdDevRemove  cmd = unix.DM_DEV_REMOVE
)

func (c cmd) String() string {
	switch c {
	case cmdDevCreate:
		return "DM_DEV_CREATE"
	case cmdTableLoad:
		return "DM_TABLE_LOAD"
	case cmdDevSuspend:
		return "DM_DEV_SUSPEND"
	case cmdDevRemove:
		return "DM_DEV_REMOVE"
	}
	return fmt.Sprintf("device-mapper ioctl %#x", uint(c))
}

// control is an open /dev/mapper/control.
type control struct{ fd int }

func openControl() (*control, error) {
	fd, err := unix.Open(controlPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		if err = makeControl(); err == nil {
			fd, err = unix.Open(controlPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("devmapper: open %s: %w", controlPath, err)
	}
	return &control{fd: fd}, nil
}

// makeControl makes the control node from the numbers the kernel
// publishes in sysfs; devtmpfs normally makes it, but not always in time
// when dm_mod was just loaded.
func makeControl() error {
	b, err := os.ReadFile(controlDev)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("the kernel has no device-mapper (%s is missing): build it in or load dm_mod", controlDev)
	}
	if err != nil {
		return err
	}
	major, minor, err := parseDev(string(b))
	if err != nil {
		return fmt.Errorf("%s: %w", controlDev, err)
	}
	if err := os.MkdirAll("/dev/"+unix.DM_DIR, 0o755); err != nil {
		return err
	}
	err = unix.Mknod(controlPath, unix.S_IFCHR|0o600, int(unix.Mkdev(major, minor)))
	if err != nil && !errors.Is(err, unix.EEXIST) { // devtmpfs may have won the race
		return fmt.Errorf("mknod %s %d:%d: %w", controlPath, major, minor, err)
	}
	return nil
}

// parseDev parses sysfs's "major:minor\n".
func parseDev(s string) (major, minor uint32, err error) {
	maj, min, ok := strings.Cut(strings.TrimSpace(s), ":")
	x, err1 := strconv.ParseUint(maj, 10, 32)
	y, err2 := strconv.ParseUint(min, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("device number %q is not major:minor", s)
	}
	return uint32(x), uint32(y), nil
}

func (c *control) close() { unix.Close(c.fd) }

// call issues cmd for device name with the request in buf, which the
// kernel overwrites with its reply, and returns the reply's header.
func (c *control) call(cmd cmd, name string, buf []byte) (unix.DmIoctl, error) {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(c.fd), uintptr(cmd), uintptr(unsafe.Pointer(&buf[0])))
	if errno != 0 {
		return unix.DmIoctl{}, fmt.Errorf("devmapper: %v %s: %w%s", cmd, name, errno, hint(cmd, errno))
	}
	var reply unix.DmIoctl
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&reply)), unix.SizeofDmIoctl), buf)
	return reply, nil
}

// hint says what to do next for the failures a caller can act on.
func hint(cmd cmd, errno unix.Errno) string {
	switch {
	case cmd == cmdDevCreate && errno == unix.EBUSY:
		return " (a device of that name exists)"
	case cmd == cmdTableLoad && errno == unix.EINVAL:
		return " (the kernel log says which target refused the table and why)"
	case cmd == cmdDevRemove && errno == unix.EBUSY:
		return " (the device is open or mounted)"
	}
	return ""
}

// header returns a request that is only the dm_ioctl header, naming the
// device.
func header(name string) []byte {
	return encode(name, 0, 0, nil)
}

// tableLoad returns the DM_TABLE_LOAD request for device name: the header,
// then for each target a dm_target_spec followed by the target's
// NUL-terminated parameters, padded so the next spec is 8-byte aligned.
func tableLoad(name string, readOnly bool, targets []Target) ([]byte, error) {
	if len(targets) == 0 {
		return nil, fmt.Errorf("empty table")
	}
	var payload []byte
	for i, t := range targets {
		if err := t.check(); err != nil {
			return nil, fmt.Errorf("target %d: %w", i, err)
		}
		params := (len(t.Params) + 1 + align - 1) / align * align
		spec := unix.DmTargetSpec{
			Sector_start: t.Start,
			Length:       t.Length,
			// The offset of the next spec from this one.
			Next: uint32(unix.SizeofDmTargetSpec + params),
		}
		copy(spec.Target_type[:], t.Type)
		payload = append(payload, unsafe.Slice((*byte)(unsafe.Pointer(&spec)), unix.SizeofDmTargetSpec)...)
		payload = append(payload, t.Params...)
		payload = append(payload, make([]byte, params-len(t.Params))...)
	}
	// The read-only flag on the table load is what the kernel honours: the
	// table's mode decides whether the disk is read-only on resume.
	var flags uint32
	if readOnly {
		flags = unix.DM_READONLY_FLAG
	}
	return encode(name, flags, len(targets), payload), nil
}

func (t Target) check() error {
	switch {
	case t.Type == "":
		return fmt.Errorf("no target type")
	case len(t.Type) >= unix.DM_MAX_TYPE_NAME:
		return fmt.Errorf("target type %q is longer than %d bytes", t.Type, unix.DM_MAX_TYPE_NAME-1)
	case strings.ContainsRune(t.Type, 0) || strings.ContainsRune(t.Params, 0):
		return fmt.Errorf("%s target holds a NUL byte", t.Type)
	case t.Length == 0:
		return fmt.Errorf("%s target has length 0", t.Type)
	}
	return nil
}

// encode lays out a request: the dm_ioctl header, then payload right after
// it (the header's size is a multiple of 8, so the payload is aligned).
// The version asks for interface 4.0: the kernel accepts any minor version
// up to its own, and we use nothing newer.
func encode(name string, flags uint32, targetCount int, payload []byte) []byte {
	h := unix.DmIoctl{
		Version:      [3]uint32{unix.DM_VERSION_MAJOR, 0, 0},
		Data_size:    uint32(unix.SizeofDmIoctl + len(payload)),
		Data_start:   unix.SizeofDmIoctl,
		Target_count: uint32(targetCount),
		Flags:        flags,
	}
	copy(h.Name[:], name) // checkName leaves room for the NUL
	buf := make([]byte, 0, h.Data_size)
	buf = append(buf, unsafe.Slice((*byte)(unsafe.Pointer(&h)), unix.SizeofDmIoctl)...)
	return append(buf, payload...)
}
