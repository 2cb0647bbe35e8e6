// Package devmapper creates and removes device-mapper devices through the
// kernel's ioctl interface on /dev/mapper/control. Stage-1 init uses it to
// put dm-verity over the system partition; it has neither libdevmapper nor
// udev, so this package speaks the ioctls itself and waits for devtmpfs to
// make the device node.
//
// It knows nothing of particular targets: callers give the table lines
// (image/verity writes the dm-verity one).
package devmapper

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Target is one line of a device-mapper table.
type Target struct {
	Start, Length uint64 // in 512-byte sectors
	Type          string // target type, e.g. "verity"
	Params        string // the target's arguments
}

// nodeTimeout bounds the wait for devtmpfs to make a new device's node.
const nodeTimeout = 2 * time.Second

// Create makes the device name with the given table, read-only when
// readOnly (dm-verity refuses a writable table), activates it and returns
// its block device node (/dev/dm-N). On failure it removes what it made,
// so a retry can reuse the name.
func Create(name string, readOnly bool, targets ...Target) (string, error) {
	if err := checkName(name); err != nil {
		return "", err
	}
	// Encode the table first: a table we cannot send should not leave a
	// device without one behind.
	load, err := tableLoad(name, readOnly, targets)
	if err != nil {
		return "", fmt.Errorf("devmapper: %s: %w", name, err)
	}
	c, err := openControl()
	if err != nil {
		return "", err
	}
	defer c.close()

	if _, err := c.call(cmdDevCreate, name, header(name)); err != nil {
		return "", err
	}
	dev, err := c.activate(name, load)
	if err != nil {
		if _, rerr := c.call(cmdDevRemove, name, header(name)); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return "", err
	}
	return waitNode(name, dev)
}

// activate loads the table into the new device's inactive slot and
// resumes the device, which swaps that table in. It returns the device
// number.
func (c *control) activate(name string, load []byte) (uint64, error) {
	if _, err := c.call(cmdTableLoad, name, load); err != nil {
		return 0, err
	}
	// DM_DEV_SUSPEND without DM_SUSPEND_FLAG is a resume.
	reply, err := c.call(cmdDevSuspend, name, header(name))
	if err != nil {
		return 0, err
	}
	return reply.Dev, nil
}

// Remove removes the device name. It fails with EBUSY while the device is
// open or mounted.
func Remove(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	c, err := openControl()
	if err != nil {
		return err
	}
	defer c.close()
	_, err = c.call(cmdDevRemove, name, header(name))
	return err
}

// checkName refuses names the kernel would: empty, too long for the
// header's name field with its NUL, or holding a slash (names appear
// under /dev/mapper and /sys).
func checkName(name string) error {
	switch {
	case name == "" || name == "." || name == "..":
		return fmt.Errorf("devmapper: invalid device name %q", name)
	case len(name) >= unix.DM_NAME_LEN:
		return fmt.Errorf("devmapper: device name %q is %d bytes, at most %d are allowed", name, len(name), unix.DM_NAME_LEN-1)
	case strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("devmapper: device name %q holds a slash or NUL", name)
	}
	return nil
}

// waitNode waits for devtmpfs to make the node of device dev, which the
// kernel names dm-<minor>.
func waitNode(name string, dev uint64) (string, error) {
	path := fmt.Sprintf("/dev/dm-%d", unix.Minor(dev))
	deadline := time.Now().Add(nodeTimeout)
	for {
		var st unix.Stat_t
		err := unix.Stat(path, &st)
		if err == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK &&
			unix.Major(st.Rdev) == unix.Major(dev) && unix.Minor(st.Rdev) == unix.Minor(dev) {
			return path, nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("devmapper: %s is active as %d:%d but %s did not appear within %v (is devtmpfs mounted on /dev?)",
				name, unix.Major(dev), unix.Minor(dev), path, nodeTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
