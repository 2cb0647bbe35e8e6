package boot

import (
	"os"
	"strings"
)

// Kernel command line parameters plinth reads.
const (
	paramConfig   = "plinth.config"         // machine config: a path in the image, or "fw_cfg"
	paramSelftest = "plinth.selftest"       // "1": run the self-check service and print its report
	paramPing     = "plinth.selftest.ping"  // comma-separated IPs the self-check pings
	paramWatch    = "plinth.selftest.watch" // seconds: after the report, ping the targets once a second and print each round
	paramPanic    = "plinth.panic"          // "reboot" or "hold": what to do after a panic in init
	paramDebug    = "plinth.debug"          // "panic": inject a panic after ready, to test the panic path
)

// cmdline is the kernel command line as key → value ("" for bare words).
type cmdline map[string]string

func readCmdline() cmdline {
	data, _ := os.ReadFile("/proc/cmdline")
	return parseCmdline(string(data))
}

// parseCmdline splits like the kernel: on spaces, except inside double
// quotes, which are removed.
func parseCmdline(s string) cmdline {
	c := cmdline{}
	var word strings.Builder
	quoted := false
	flush := func() {
		if word.Len() == 0 {
			return
		}
		k, v, _ := strings.Cut(word.String(), "=")
		c[k] = v
		word.Reset()
	}
	for _, r := range s {
		switch {
		case r == '"':
			quoted = !quoted
		case (r == ' ' || r == '\n' || r == '\t') && !quoted:
			flush()
		default:
			word.WriteRune(r)
		}
	}
	flush()
	return c
}
