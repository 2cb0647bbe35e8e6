// Package config owns the machine config: the schema of the TOML file that
// says how one plinth machine is set up, its defaults, and its strict parsing.
// Unknown keys, wrong types and invalid values are errors that name the file,
// line and dotted key, so a typo never silently falls back to a default.
//
// It does not know where the config comes from (a file, fw_cfg, a disk) or
// what to do when there is none: that is init's job. Callers hand Parse the
// bytes and a name for error messages, or use Default.
package config

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/plinth-os/plinth/netd"
)

// Machine is the machine config. Build one from Default: the zero value has
// no panic behaviour or timeouts.
//
// The TOML keys are those of the schema in machineFields, which both Parse
// and MarshalTOML follow.
type Machine struct {
	// Hostname is the kernel hostname: dot-separated RFC 1123 labels, at most
	// 64 characters. Empty means unset and leaves the choice to init.
	Hostname string
	Boot     Boot
	// Network is the [network] section, for netd. Parse copies Hostname
	// into it; its StateDir and RunDir are not configurable and keep
	// netd's defaults.
	Network netd.Config
	Cluster Cluster
}

// Boot is the [boot] section: how PID 1 behaves when it dies or shuts down.
type Boot struct {
	// Panic says what PID 1 does after a panic: PanicReboot (default) or PanicHold.
	Panic string
	// PanicCountdown is how long to wait before rebooting after a panic, so
	// the console shows why. Default 5s; allowed 0s to 10m.
	PanicCountdown Duration
	// ShutdownTimeout is the grace period services get on poweroff or reboot
	// before SIGKILL. Default 10s; allowed 1s to 5m.
	ShutdownTimeout Duration
	// Watchdog is the timeout of the watchdog PID 1 arms: a PID 1 that
	// shows no progress for this long resets the machine. Default 60s;
	// allowed 0s (off) or 10s to 10m.
	Watchdog Duration
	// CommitTimeout is how long a boot of a newly installed slot has to
	// become healthy (in the cluster, its jobs running) before PID 1 marks
	// it failed and reboots into the other slot. Default 10m; allowed 30s
	// to 2h.
	CommitTimeout Duration
}

// Values of Boot.Panic.
const (
	PanicReboot = "reboot" // reboot after Boot.PanicCountdown
	PanicHold   = "hold"   // keep the machine up so the console can be read
)

// Duration is a time.Duration written in TOML as a string such as "5s" or
// "1m30s" (the syntax of time.ParseDuration).
type Duration struct{ time.Duration }

// UnmarshalText parses a duration such as "5s".
func (d *Duration) UnmarshalText(text []byte) error {
	v, err := time.ParseDuration(string(text))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// MarshalText formats d the way UnmarshalText reads it.
func (d Duration) MarshalText() ([]byte, error) {
	return []byte(d.String()), nil
}

// Default returns the config of a machine that was given none. Parse starts
// from it, so it also supplies every key a file leaves out.
func Default() Machine {
	return Machine{
		Boot: Boot{
			Panic:           PanicReboot,
			PanicCountdown:  Duration{5 * time.Second},
			ShutdownTimeout: Duration{10 * time.Second},
			Watchdog:        Duration{60 * time.Second},
			CommitTimeout:   Duration{10 * time.Minute},
		},
		Network: netd.DefaultConfig(),
		Cluster: Cluster{
			GossipPort: 7946,
			APIPort:    7947,
		},
	}
}

// MarshalTOML encodes m in the schema Parse reads, so that a Machine Parse
// returned parses again to the same Machine.
func (m Machine) MarshalTOML() ([]byte, error) {
	return toml.Marshal(encodeFields(machineFields(&m)))
}

// machineFields is the schema of the file's top level; each section is a
// table with its own fields function.
func machineFields(m *Machine) []field {
	return []field{
		textField("hostname", &m.Hostname, plainString(checkHostname)),
		tableField("boot", bootFields(&m.Boot)),
		networkField(&m.Network),
		clusterField(&m.Cluster),
	}
}

func bootFields(b *Boot) []field {
	return []field{
		textField("panic", &b.Panic, plainString(oneOf(PanicReboot, PanicHold))),
		textField("panic_countdown", &b.PanicCountdown.Duration, duration(0, 10*time.Minute)),
		textField("shutdown_timeout", &b.ShutdownTimeout.Duration, duration(time.Second, 5*time.Minute)),
		textField("watchdog", &b.Watchdog.Duration, offOr(duration(10*time.Second, 10*time.Minute))),
		textField("commit_timeout", &b.CommitTimeout.Duration, duration(30*time.Second, 2*time.Hour)),
	}
}

// maxHostname is the kernel's limit (__NEW_UTS_LEN); sethostname(2) fails
// beyond it.
const maxHostname = 64

// checkHostname accepts dot-separated RFC 1123 labels (see checkLabels), at
// most maxHostname characters. Empty is accepted: it means unset.
func checkHostname(name string) error {
	if name == "" {
		return nil
	}
	if len(name) > maxHostname {
		return fmt.Errorf("%q is not a valid hostname: it is %d characters long; the kernel allows at most %d", name, len(name), maxHostname)
	}
	if err := checkLabels(name); err != nil {
		return fmt.Errorf("%q is not a valid hostname: %v", name, err)
	}
	return nil
}

// checkLabels accepts dot-separated RFC 1123 labels: letters, digits and
// hyphens, 1 to 63 characters each, not starting or ending with a hyphen.
// Its errors say what is wrong with name's labels, not what name is for.
func checkLabels(name string) error {
	for _, label := range strings.Split(name, ".") {
		switch {
		case label == "":
			return errors.New("it has an empty label; remove the leading, trailing or doubled dot")
		case len(label) > 63:
			return fmt.Errorf("label %q is longer than 63 characters", label)
		case label[0] == '-':
			return fmt.Errorf("label %q starts with a hyphen", label)
		case label[len(label)-1] == '-':
			return fmt.Errorf("label %q ends with a hyphen", label)
		}
		for _, r := range label {
			if !isHostnameChar(r) {
				return fmt.Errorf("%q is not allowed; use letters, digits, hyphens and dots", string(r))
			}
		}
	}
	return nil
}

func isHostnameChar(r rune) bool {
	return 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '-'
}

// oneOf accepts exactly the given values.
func oneOf(values ...string) func(string) error {
	return func(s string) error {
		if slices.Contains(values, s) {
			return nil
		}
		return fmt.Errorf("%q is not one of %s", s, strings.Join(values, ", "))
	}
}
