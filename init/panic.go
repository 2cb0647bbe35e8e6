package boot

import (
	"fmt"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/plinth-os/plinth/init/config"
)

// panicPolicy is what crash does; set from the kernel command line as early
// as possible and from the machine config once it is read (the command line
// wins: it is the way to debug a machine whose config is broken).
var panicPolicy = struct {
	sync.Mutex
	hold      bool
	countdown time.Duration
}{countdown: 5 * time.Second}

func applyPanicPolicy(cl cmdline, m *config.Machine) {
	panicPolicy.Lock()
	defer panicPolicy.Unlock()
	if m != nil {
		panicPolicy.hold = m.Boot.Panic == config.PanicHold
		panicPolicy.countdown = m.Boot.PanicCountdown.Duration
	}
	switch cl[paramPanic] {
	case "hold":
		panicPolicy.hold = true
	case "reboot":
		panicPolicy.hold = false
	}
}

// guard runs fn and turns a panic in it into crash. Every goroutine of PID
// 1 runs under guard: an unrecovered panic would kill init, and the kernel
// would panic in turn.
func guard(fn func()) {
	defer func() {
		if v := recover(); v != nil {
			crash(v)
		}
	}()
	fn()
}

var crashOnce sync.Once

// crash reports a fatal error in init, syncs, and reboots after a countdown
// or holds the machine for inspection. It does not return.
func crash(v any) {
	crashOnce.Do(func() {
		say("PANIC: %v", v)
		for _, l := range strings.Split(strings.TrimSpace(string(debug.Stack())), "\n") {
			fmt.Fprintf(console, "plinth:   %s\n", l)
		}
		unix.Sync()
		panicPolicy.Lock()
		hold, countdown := panicPolicy.hold, panicPolicy.countdown
		panicPolicy.Unlock()
		if hold {
			say("holding after panic (plinth.panic=hold); power off or reset the machine when done")
			return
		}
		say("rebooting in %s (boot with plinth.panic=hold to keep the machine up)", countdown)
		time.Sleep(countdown)
		unix.Sync()
		unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	})
	// Holding, or a second crash while the first one counts down. Sleeping
	// (rather than blocking on nothing) keeps the runtime from declaring a
	// deadlock; other goroutines, e.g. power handling, keep running.
	for {
		time.Sleep(time.Hour)
	}
}
