package vmtest

import (
	"fmt"
	"regexp"
	"strconv"
)

// BootPhaseNames are the phases BootPhases splits a plinth boot into, in
// order: the kernel until it executes /init (unpacking the initramfs is
// in it), the Go binary's start until its first line, stage 1 (modules,
// the system image), PID 1 until it starts netd (mounts, machine config,
// watchdog), netd until the network is ready, hostd until it is, and the
// rest until "plinth: ready".
var BootPhaseNames = []string{"kernel", "go-start", "stage1", "init", "netd", "hostd", "rest"}

// Phase is one boot phase's duration.
type Phase struct {
	Name    string
	Seconds float64
}

func (p Phase) String() string { return fmt.Sprintf("%s=%.3f", p.Name, p.Seconds) }

var (
	phaseExec    = regexp.MustCompile(`init: the kernel ran /init at ([0-9.]+)s`)
	phaseStamped = regexp.MustCompile(`plinth: \[ *([0-9.]+)s\] (.*)`)
)

// BootPhases splits a plinth console up to "plinth: ready" (at ready
// seconds of uptime) into BootPhaseNames, from the phase lines PID 1
// prints with their uptime.
func BootPhases(console string, ready float64) ([]Phase, error) {
	m := phaseExec.FindStringSubmatch(console)
	if m == nil {
		return nil, fmt.Errorf("boot phases: no line saying when the kernel ran /init on the console")
	}
	exec, _ := strconv.ParseFloat(m[1], 64)
	marks := map[string]float64{}
	prefixes := map[string]string{
		"stage1: started":      "stage1",
		"init: started":        "init",
		"init: starting netd":  "netd",
		"init: network ready":  "hostd",
		"init: services ready": "rest",
	}
	for _, line := range phaseStamped.FindAllStringSubmatch(console, -1) {
		for prefix, name := range prefixes {
			if _, seen := marks[name]; !seen && len(line[2]) >= len(prefix) && line[2][:len(prefix)] == prefix {
				marks[name], _ = strconv.ParseFloat(line[1], 64)
			}
		}
	}
	for _, name := range []string{"stage1", "init", "netd", "hostd", "rest"} {
		if _, ok := marks[name]; !ok {
			return nil, fmt.Errorf("boot phases: no line starting the %s phase on the console", name)
		}
	}
	return []Phase{
		{"kernel", exec},
		{"go-start", marks["stage1"] - exec},
		{"stage1", marks["init"] - marks["stage1"]},
		{"init", marks["netd"] - marks["init"]},
		{"netd", marks["hostd"] - marks["netd"]},
		{"hostd", marks["rest"] - marks["hostd"]},
		{"rest", ready - marks["rest"]},
	}, nil
}
