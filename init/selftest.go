package boot

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/plinth-os/plinth/init/kmod"
	"github.com/plinth-os/plinth/version"
)

// SelftestMarker starts the console line that carries the self-check report.
const SelftestMarker = "plinth-selftest: "

// Selftest is the report `plinth selftest` prints: what a running machine
// looks like from the inside, for VM tests and for people.
type Selftest struct {
	Version      string           `json:"version"`
	Kernel       string           `json:"kernel"`
	Hostname     string           `json:"hostname"`
	PID1Exe      string           `json:"pid1_exe"`
	ConfigSource string           `json:"config_source"`
	Mounts       map[string]Mount `json:"mounts"`          // by mount point, for the ones checked
	Modules      []string         `json:"modules"`         // loaded, from /proc/modules
	Missing      []string         `json:"missing_modules"` // in the image's list but not loaded
	Interfaces   []string         `json:"interfaces"`
	Uptime       float64          `json:"uptime_seconds"`
	Problems     []string         `json:"problems"`
	OK           bool             `json:"ok"`
}

// Mount describes one mounted filesystem.
type Mount struct {
	FSType   string `json:"fstype"`
	Source   string `json:"source"`
	ReadOnly bool   `json:"ro"`
}

// RunSelftest checks the running system, prints the report on one line,
// tells the supervisor it is ready and exits: 0 when every check passed.
func RunSelftest() int {
	r := selftest()
	data, err := json.Marshal(r)
	if err != nil {
		fmt.Fprintln(os.Stderr, "selftest:", err)
		return 1
	}
	fmt.Println(SelftestMarker + string(data))
	daemon.SdNotify(false, daemon.SdNotifyReady)
	if !r.OK {
		return 1
	}
	return 0
}

func selftest() Selftest {
	r := Selftest{Version: version.Version, Kernel: kernelRelease(), ConfigSource: os.Getenv("PLINTH_CONFIG_SOURCE"), Mounts: map[string]Mount{}}
	problem := func(format string, args ...any) { r.Problems = append(r.Problems, fmt.Sprintf(format, args...)) }

	r.Hostname, _ = os.Hostname()
	if exe, err := os.Readlink("/proc/1/exe"); err != nil {
		problem("read /proc/1/exe: %v", err)
	} else if r.PID1Exe = exe; exe != "/usr/bin/plinth" {
		problem("PID 1 is %s, want /usr/bin/plinth", exe)
	}

	mounts, err := readMounts()
	if err != nil {
		problem("read mounts: %v", err)
	}
	for _, m := range mounts {
		// Later entries for the same target are on top; keep the last.
		r.Mounts[m.Target] = Mount{FSType: m.FSType, Source: m.Source, ReadOnly: m.ReadOnly()}
	}
	want := map[string]string{"/": "squashfs", "/run": "tmpfs", "/tmp": "tmpfs", "/var": "tmpfs", "/sys/fs/cgroup": "cgroup2"}
	for target, fstype := range want {
		if got := r.Mounts[target]; got.FSType != fstype {
			problem("%s is %q, want %s", target, got.FSType, fstype)
		}
	}
	if !r.Mounts["/"].ReadOnly {
		problem("/ is writable, want read-only")
	}
	for t := range r.Mounts {
		if _, ok := want[t]; !ok {
			delete(r.Mounts, t)
		}
	}

	r.Modules = loadedModules()
	loaded := map[string]bool{}
	for _, m := range r.Modules {
		loaded[m] = true
	}
	listed, err := kmod.ReadList(filepath.Join("/lib/modules", r.Kernel))
	if err != nil {
		problem("read module list: %v", err)
	}
	for _, m := range listed {
		if !loaded[m.Name] {
			r.Missing = append(r.Missing, m.Name)
		}
	}
	if len(r.Missing) > 0 {
		problem("modules not loaded: %s", strings.Join(r.Missing, ", "))
	}

	if entries, err := os.ReadDir("/sys/class/net"); err == nil {
		for _, e := range entries {
			r.Interfaces = append(r.Interfaces, e.Name())
		}
	}
	if data, err := os.ReadFile("/proc/uptime"); err == nil {
		fmt.Sscanf(string(data), "%f", &r.Uptime)
	}
	r.OK = len(r.Problems) == 0
	return r
}

func loadedModules() []string {
	f, err := os.Open("/proc/modules")
	if err != nil {
		return nil
	}
	defer f.Close()
	var mods []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if name, _, ok := strings.Cut(sc.Text(), " "); ok {
			mods = append(mods, name)
		}
	}
	sort.Strings(mods)
	return mods
}

// ParseSelftest extracts the report from console output.
func ParseSelftest(console string) (Selftest, error) {
	var r Selftest
	i := strings.LastIndex(console, SelftestMarker)
	if i < 0 {
		return r, fmt.Errorf("no %q line in console output", strings.TrimSpace(SelftestMarker))
	}
	line, _, _ := strings.Cut(console[i+len(SelftestMarker):], "\n")
	if err := json.Unmarshal([]byte(strings.TrimSpace(line)), &r); err != nil {
		return r, fmt.Errorf("parse self-test report: %w", err)
	}
	return r, nil
}
