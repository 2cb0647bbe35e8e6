// Package boot is plinth's init, in two stages that share one binary:
//
//   - stage 1 (stage1.go) runs as /init from the initramfs: it loads the
//     modules needed to mount the system image, mounts it read-only with
//     tmpfs for /run, /tmp and /var, and switches root;
//   - stage 2 (pid1.go) is PID 1 for the life of the machine: it reads the
//     machine config, supervises the layer-0 services, reaps orphans and
//     powers the machine off or reboots it in order.
//
// The directory is init/ as in the repository layout; the package is named
// boot because a package named init cannot be imported without an alias.
// Which services exist and what they do is theirs to say, not boot's.
package boot

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// Main runs the init stage this process was started as. It does not return.
//
// Started as /init from the initramfs, it runs stage 1 and then stage 2 in
// the same process, without exec'ing the system image's /sbin/init: both are
// the same binary (the image builder copies one file to both places), and
// under TCG an exec cost 0.15-0.25 s from RAM (a second Go runtime start)
// and 1.3-2.5 s from the squashfs (every page fault decompresses a block
// through the loop device). Started under any other name, as PID 1 of a
// root that is already mounted, it runs stage 2 only.
func Main() {
	if filepath.Clean(os.Args[0]) == "/init" {
		guard(stage1)
	}
	guard(pid1)
	// Stage 2 ends by powering off or rebooting; reaching here means it
	// returned, which PID 1 must never do.
	crash(fmt.Errorf("init returned"))
}

// uptime is the time since the kernel started, the clock boot phases are
// reported in so that they compare with the kernel's own timestamps.
func uptime() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// phase prints one boot-phase line on the console.
func phase(format string, args ...any) {
	fmt.Fprintf(console, "plinth: [%7.3fs] %s\n", uptime().Seconds(), fmt.Sprintf(format, args...))
}

// say prints a console line without a timestamp, for messages meant for a
// person at the console (errors, instructions).
func say(format string, args ...any) {
	fmt.Fprintf(console, "plinth: "+format+"\n", args...)
}
