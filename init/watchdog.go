package boot

import (
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// PID 1 arms a watchdog so that a machine whose init hangs resets by
// itself; on a boot on trial, the reset costs the slot a try and the boot
// loader falls back once they are used up. A hardware watchdog (real
// machines' iTCO, QEMU's i6300esb with the generic kernel) also covers a
// hung kernel; the cloud kernel has only softdog, a kernel timer that
// covers a hung PID 1 but not a hung kernel (a kernel panic reboots by
// itself: /proc/sys/kernel/panic). PID 1 uses whichever /dev/watchdog
// exists, loading softdog only when no hardware one showed up.
//
// PID 1 pets the device only while it shows progress: a heartbeat that
// each boot phase and, after ready, PID 1's main loop renews. A bounded
// wait on the boot path (services becoming ready, disks showing up) keeps
// the heartbeat going through busy, for at most busyLimit.

// Linux watchdog ioctls (include/uapi/linux/watchdog.h).
const (
	wdiocKeepalive  = 0x80045705 // _IOR('W', 5, int)
	wdiocSetTimeout = 0xc0045706 // _IOWR('W', 6, int)
)

// busyLimit is the longest a boot step may keep the watchdog fed without
// a phase of its own.
const busyLimit = 5 * time.Minute

// heartbeat is when PID 1 last showed progress (uptime, ns).
var heartbeat atomic.Int64

func beat() { heartbeat.Store(int64(uptime())) }

// busy keeps the heartbeat going while fn runs, for at most busyLimit.
func busy(fn func()) {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		limit := time.After(busyLimit)
		for {
			select {
			case <-done:
				return
			case <-limit:
				say("watchdog: a boot step has run for %s; no longer keeping the watchdog fed", busyLimit)
				return
			case <-t.C:
				beat()
			}
		}
	}()
	defer close(done)
	fn()
}

// armWatchdog opens dev with the given timeout and pets it while the
// heartbeat is younger than the timeout's half.
func armWatchdog(dev string, timeout time.Duration) error {
	var f *os.File
	var err error
	// devtmpfs makes the node just after the driver registers it.
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if f, err = os.OpenFile(dev, os.O_WRONLY, 0); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("open watchdog: %w", err)
	}
	secs := int32(timeout / time.Second)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), wdiocSetTimeout, uintptr(unsafe.Pointer(&secs))); e != 0 {
		f.Close()
		return fmt.Errorf("set watchdog timeout %s: %w", timeout, e)
	}
	beat()
	go guard(func() {
		t := time.NewTicker(timeout / 4)
		for range t.C {
			if time.Duration(int64(uptime())-heartbeat.Load()) < timeout/2 {
				var dummy int32
				unix.Syscall(unix.SYS_IOCTL, f.Fd(), wdiocKeepalive, uintptr(unsafe.Pointer(&dummy)))
			}
		}
	})
	return nil
}

// hardwareWatchdog reports whether a watchdog driver other than softdog
// has registered.
func hardwareWatchdog() bool {
	ids, _ := filepath.Glob("/sys/class/watchdog/watchdog*/identity")
	for _, p := range ids {
		if id, err := os.ReadFile(p); err == nil && string(id) != "Software Watchdog\n" {
			return true
		}
	}
	return false
}
