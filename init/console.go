package boot

import (
	"io"
	"os"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// console is where init and its services write: every console the kernel
// was given (console=tty0 console=ttyS0 writes to the screen and the
// serial port alike), not only /dev/console, which is the last of them.
var console io.Writer = os.Stdout

var consoleOnce sync.Once

// openConsoles points console at every console in /proc/consoles, once
// /proc is mounted. With one console it stays /dev/console.
func openConsoles() {
	consoleOnce.Do(func() {
		data, err := os.ReadFile("/proc/consoles")
		if err != nil {
			return
		}
		names := consoleNames(string(data))
		if len(names) < 2 {
			return
		}
		var fs fanout
		for _, n := range names {
			f, err := os.OpenFile("/dev/"+n, os.O_WRONLY|unix.O_NOCTTY, 0)
			if err != nil {
				say("console /dev/%s: %v", n, err)
				continue
			}
			fs = append(fs, f)
		}
		if len(fs) > 0 {
			console = fs
		}
	})
}

// consoleNames reads the device names of /proc/consoles, one console per
// line: "ttyS0  -W- (EC p a)  4:64". Only consoles that can be written
// (W) count.
func consoleNames(procConsoles string) []string {
	var names []string
	for _, line := range strings.Split(procConsoles, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && strings.Contains(f[1], "W") {
			names = append(names, f[0])
		}
	}
	return names
}

// fanout writes to each of its writers; one that fails (a screen gone, a
// serial port unplugged) does not keep the line from the others.
type fanout []io.Writer

func (f fanout) Write(p []byte) (int, error) {
	for _, w := range f {
		w.Write(p)
	}
	return len(p), nil
}
