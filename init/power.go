package boot

import (
	"encoding/binary"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/plinth-os/plinth/host/mountinfo"
	"github.com/plinth-os/plinth/init/supervise"
	"github.com/plinth-os/plinth/netd"
)

type powerEvent struct {
	reboot bool   // false: power off
	why    string // for the console
}

// Signals PID 1 understands, as in busybox init: SIGUSR2 and SIGPWR power
// off, SIGTERM reboots, SIGINT (Ctrl-Alt-Del) reboots.
func watchPowerSignals() chan powerEvent {
	ch := make(chan powerEvent, 4)
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGUSR2, unix.SIGPWR, unix.SIGTERM, unix.SIGINT)
	go guard(func() {
		for s := range sigs {
			reboot := s == unix.SIGTERM || s == unix.SIGINT
			ch <- powerEvent{reboot: reboot, why: "signal " + unix.SignalName(s.(unix.Signal))}
		}
	})
	return ch
}

// watchPowerButton turns ACPI power-button presses (QEMU system_powerdown)
// into a poweroff. The button driver reports them as KEY_POWER on an evdev
// device named "Power Button". Finding and opening the device happens in the
// background (opening it cost ~60 ms under TCG, asleep in the kernel); the
// returned channel is closed once presses are being read, or once it is
// clear there is no button.
func watchPowerButton(ch chan<- powerEvent) <-chan struct{} {
	armed := make(chan struct{})
	go guard(func() {
		defer close(armed)
		var devs []string
		// devtmpfs creates the event nodes shortly after the modules load.
		for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if devs = powerButtons(); len(devs) > 0 || time.Now().After(deadline) {
				break
			}
		}
		if len(devs) == 0 {
			say("no ACPI power button found; power off with 'plinth poweroff' or SIGUSR2 to PID 1")
			return
		}
		for _, d := range devs {
			f, err := os.Open(d)
			if err != nil {
				say("open power button %s: %v", d, err)
				continue
			}
			go guard(func() { readPowerButton(f, ch) })
		}
	})
	return armed
}

// powerButtons lists the event devices of inputs named "Power Button", from
// /proc/bus/input/devices: one read instead of a walk through sysfs, which
// under TCG cost ~0.1 s on the boot path.
func powerButtons() []string {
	data, err := os.ReadFile("/proc/bus/input/devices")
	if err != nil {
		return nil
	}
	return parseInputDevices(data, "Power Button")
}

// parseInputDevices returns /dev/input/eventN for each device named name in
// the text of /proc/bus/input/devices: blank-line separated records with
// `N: Name="..."` and `H: Handlers=kbd event0` lines.
func parseInputDevices(data []byte, name string) []string {
	var devs []string
	for _, rec := range strings.Split(string(data), "\n\n") {
		var named bool
		var events []string
		for _, line := range strings.Split(rec, "\n") {
			switch {
			case line == `N: Name="`+name+`"`:
				named = true
			case strings.HasPrefix(line, "H: Handlers="):
				for _, h := range strings.Fields(strings.TrimPrefix(line, "H: Handlers=")) {
					if strings.HasPrefix(h, "event") {
						events = append(events, "/dev/input/"+h)
					}
				}
			}
		}
		if named {
			devs = append(devs, events...)
		}
	}
	return devs
}

// readPowerButton reads struct input_event records (64-bit layout: 16 bytes
// of time, u16 type, u16 code, s32 value).
func readPowerButton(f *os.File, ch chan<- powerEvent) {
	defer f.Close()
	const evKey, keyPower = 1, 116
	buf := make([]byte, 24)
	for {
		if _, err := f.Read(buf); err != nil {
			return
		}
		typ := binary.LittleEndian.Uint16(buf[16:])
		code := binary.LittleEndian.Uint16(buf[18:])
		value := int32(binary.LittleEndian.Uint32(buf[20:]))
		if typ == evKey && code == keyPower && value == 1 {
			ch <- powerEvent{why: "ACPI power button"}
		}
	}
}

// shutdown stops everything in order and powers off or reboots: services
// in reverse start order, then every remaining process, then filesystems.
// sup may be nil (maintenance mode).
func shutdown(ev powerEvent, sup *supervise.Supervisor) {
	what := "power off"
	if ev.reboot {
		what = "reboot"
	}
	phase("shutdown: %s requested (%s)", what, ev.why)
	// Tells netd to release its DHCP leases as it stops (see netd.ShutdownMarker).
	os.WriteFile(filepath.Join("/run/plinth", netd.ShutdownMarker), nil, 0o644)
	if sup != nil {
		sup.Stop()
		phase("shutdown: services stopped")
	}
	killAll()
	unix.Sync()
	unmountAll()
	unix.Sync()
	phase("shutdown: complete, %s", what)
	if ev.reboot {
		unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	}
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}

// killAll sends SIGTERM to every process but us, waits up to 2 s for them
// to go, then SIGKILLs what is left. The reaper collects them.
func killAll() {
	unix.Kill(-1, unix.SIGTERM)
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if len(userProcesses()) == 0 {
			return
		}
	}
	say("shutdown: killing %d processes that ignored SIGTERM", len(userProcesses()))
	unix.Kill(-1, unix.SIGKILL)
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline) && len(userProcesses()) > 0; {
		time.Sleep(20 * time.Millisecond)
	}
}

// userProcesses lists PIDs other than ours and the kernel's threads
// (kthreadd, PID 2, and its children).
func userProcesses() []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 2 || pid == os.Getpid() {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// Fields after the ")" that ends the command name: state ppid ...
		rest := string(stat)
		if i := strings.LastIndexByte(rest, ')'); i >= 0 {
			rest = rest[i+1:]
		}
		f := strings.Fields(rest)
		if len(f) >= 2 && f[1] != "2" {
			pids = append(pids, pid)
		}
	}
	return pids
}

// unmountAll unmounts in reverse mount order; what stays busy is remounted
// read-only so that its data is consistent on disk.
func unmountAll() {
	mounts, err := mountinfo.Read(mountinfo.Self)
	if err != nil {
		say("shutdown: read mounts: %v", err)
		return
	}
	for i := len(mounts) - 1; i >= 0; i-- {
		t := mounts[i].Target
		if t == "/" || t == "/proc" || t == "/sys" || t == "/dev" {
			continue
		}
		if err := unix.Unmount(t, 0); err != nil {
			if rerr := unix.Mount("", t, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); rerr != nil && !mounts[i].ReadOnly() {
				say("shutdown: unmount %s: %v; remount read-only: %v", t, err, rerr)
			}
		}
	}
}
