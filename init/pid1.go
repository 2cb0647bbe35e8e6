package boot

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/plinth-os/plinth/image"
	"github.com/plinth-os/plinth/init/config"
	"github.com/plinth-os/plinth/init/kmod"
	"github.com/plinth-os/plinth/init/supervise"
	"github.com/plinth-os/plinth/netd"
)

// pid1 is stage 2, read top to bottom as the boot path.
func pid1() {
	cl := readCmdline()
	applyPanicPolicy(cl, nil)
	openConsoles()
	slog.SetDefault(ConsoleLogger(console))
	phase("init: started (pid 1)")

	// Everything that could go wrong later needs these: the kernel reboots
	// 10 s after its own panic instead of hanging, Ctrl-Alt-Del reaches us
	// as SIGINT, orphans are reaped from the start.
	os.WriteFile("/proc/sys/kernel/panic", []byte("10"), 0o644)
	unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF)
	supervise.StartReaper()
	power := watchPowerSignals()

	must(mountSystem())
	phase("init: filesystems mounted")

	slot := cl[paramSlot]
	modDir := filepath.Join("/lib/modules", kernelRelease())
	mods := readModules(modDir)
	// Drivers for the devices the machine has: the ACPI devices' at once
	// (the machine config's fw_cfg, the power button), the disks' and
	// NICs' in the background, then those of the devices they find.
	hw := startColdplug(modDir, mods, "acpi")
	modules := loadModules(modDir, mods, slot != "")
	// Only controllers with a driver can show disks: the cloud kernel
	// has none for q35's AHCI controller, and waits for nothing there.
	if ctrls := hw.driven(storageControllers("/sys")); len(ctrls) > 0 {
		var dev string
		var err error
		busy(func() {
			// ext4 finds its checksum through the crypto API, not as a
			// dependency: crc32c goes first.
			dev, err = mountData(ctrls, hw.settle, func() error { return loadNow(modDir, mods, "crc32c_generic", "ext4") })
		})
		switch {
		case err != nil:
			say("%v; /var stays on tmpfs", err)
		case dev != "":
			phase("init: data partition %s mounted at /var", dev)
		case anyDisk():
			say("no %s filesystem on the disks; /var is a tmpfs and nothing survives a reboot", DataLabel)
		}
	}
	// Armed before anything can stop for a person (maintenance, ready), so
	// that a press of the power button from then on is never lost.
	buttonArmed := watchPowerButton(power)

	m, src, raw, err := loadMachineConfig(cl)
	ready := make(chan struct{})
	loadInBackground(modules, hurryModules(modules, m.Network), ready)
	if err != nil {
		<-buttonArmed
		maintenance(src, err, power)
		return
	}
	applyPanicPolicy(cl, &m)
	phase("init: machine config from %s", src)
	if m.Boot.Watchdog.Duration > 0 {
		startWatchdog(modDir, m.Boot.Watchdog.Duration)
	}
	if testFault() == image.FaultInitHang {
		say("test fault %s in this image: init stops here, the watchdog armed", image.FaultInitHang)
		select {}
	}
	if slot != "" {
		// The trial's clock runs from here: services that never become
		// ready must not delay the fall back.
		if disk := openSlots(slot); disk != nil {
			go guard(func() { commitOrFallBack(disk, m.Boot.CommitTimeout.Duration, power) })
		}
	}

	hostname := m.Hostname
	if hostname == "" {
		hostname = "plinth"
	}
	if err := unix.Sethostname([]byte(hostname)); err != nil {
		say("set hostname %s: %v", hostname, err)
	}

	sup := supervise.New(supervisorConfig(m))
	// Services read their own sections of the machine config from here.
	if raw != nil {
		if err := os.WriteFile(machineConfigCopy, raw, 0o600); err != nil {
			say("write %s: %v", machineConfigCopy, err)
		}
	}

	start := time.Now()
	var notReady, more []string
	phase("init: starting netd")
	busy(func() { notReady, err = sup.Start(context.Background(), netdService(m, raw != nil)) })
	must(err)
	if len(notReady) == 0 {
		phase("init: network ready in %.2fs", time.Since(start).Seconds())
	}
	start = time.Now()
	busy(func() { more, err = sup.Start(context.Background(), services(cl, src, raw != nil)...) })
	must(err)
	phase("init: services ready in %.2fs", time.Since(start).Seconds())
	if notReady = append(notReady, more...); len(notReady) > 0 {
		say("services not ready: %s (still supervised)", strings.Join(notReady, ", "))
	}
	busy(func() { <-buttonArmed })
	close(ready)
	say("ready in %.2fs", uptime().Seconds())
	// When the kernel ran /init tells what it took (unpacking the
	// initramfs) apart from this binary's start: read from its log after
	// ready, off the boot path.
	phase("init: the kernel ran /init at %.2fs", execUptime())
	go guard(func() { prefetch(platformBinary) })

	if cl[paramDebug] == "panic" {
		panic("fault injected by " + paramDebug + "=panic")
	}
	// The main loop is what keeps the watchdog fed from now on: if it
	// stops, the machine resets.
	tick := time.NewTicker(time.Second)
	for {
		select {
		case ev := <-power:
			tick.Stop()
			busy(func() { shutdown(ev, sup) })
			return
		case <-tick.C:
			beat()
		}
	}
}

// mountSystem mounts what stage 1 did not: cgroup2 for resource control,
// devpts and shm for programs, and the runtime directory. cgroup2 favours
// moving processes between groups, which every container start does,
// over fork and exit: without favordynmods each move waits for an RCU
// grace period (13 ms against 0.15 ms on the development VM).
func mountSystem() error {
	mounts := []struct {
		src, target, fstype string
		flags               uintptr
		data                string
	}{
		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666"},
		{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"cgroup2", "/sys/fs/cgroup", "cgroup2", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "nsdelegate,favordynmods"},
	}
	for _, mt := range mounts {
		if err := mount(mt.src, mt.target, mt.fstype, mt.flags, mt.data); err != nil {
			return err
		}
	}
	return os.MkdirAll("/run/plinth", 0o755)
}

// espModules read the EFI system partition.
var espModules = []string{"vfat", "nls_cp437", "nls_ascii"}

// readModules reads the system image's module list; without one, the
// machine runs on what the kernel has built in.
func readModules(dir string) []kmod.Module {
	mods, err := kmod.ReadList(dir)
	if err != nil {
		say("read module list: %v", err)
	}
	return mods
}

// loadModules loads what init needs of the modules that are not drivers
// (coldplug loads those): the ESP's on a slot boot, now, and returns the
// queue of the rest for loadInBackground once hurryModules has read the
// config. Under TCG each module costs ~50 ms: only what init needs
// before it reads the machine config is worth waiting for. A module that
// fails degrades the machine but does not stop the boot: it stays
// reachable.
func loadModules(dir string, mods []kmod.Module, slot bool) *kmod.Queue {
	var boot []kmod.Module
	for _, m := range mods {
		if !m.OnDemand {
			boot = append(boot, m)
		}
	}
	if slot {
		// PID 1 mounts the ESP to commit or fail this boot's entry.
		now, later, missing := kmod.Split(boot, espModules...)
		if len(missing) > 0 {
			say("modules not in the image: %s", strings.Join(missing, ", "))
		}
		if err := kmod.LoadAll(dir, now); err != nil {
			say("module loading: %v", err)
		}
		boot = later
	}
	return kmod.NewQueue(dir, boot)
}

// loadNow loads the named modules and their dependencies from mods,
// except those the kernel has built in (mods does not list them).
func loadNow(dir string, mods []kmod.Module, names ...string) error {
	now, _, _ := kmod.Split(mods, names...)
	return kmod.LoadAll(dir, now)
}

// loadInBackground loads the queue's modules at normal priority: the link
// types the config asks for at once, since netd waits for them; the rest
// once ready has been said, what jobs need first. Loading the jobs'
// modules before ready cost ready 0.2 s under TCG. Loading on a thread of the lowest priority, as before, was worse
// as soon as anything else ran: a module's init holds kernel locks (rtnl,
// the network namespace list) that netd and container starts need, and a
// preempted holder made the jobs after boot 4–7 times slower until the
// last module was in. Modules hurried with a rank up to bootPath load at
// once, the rest after ready.
func loadInBackground(q *kmod.Queue, bootPath int, ready <-chan struct{}) {
	n := q.Len()
	go func() {
		start := time.Now()
		err := q.Run(func(hurry int) {
			if hurry == 0 || hurry > bootPath {
				<-ready
			}
		})
		if err != nil {
			say("module loading: %v", err)
			return
		}
		phase("init: %d background modules loaded in %.3fs", n, time.Since(start).Seconds())
	}()
}

// jobModules are what hostd's jobs need: overlayfs for image rootfs, and
// veth, bridge and vxlan for the container network.
var jobModules = []string{"overlay", "veth", "bridge", "vxlan"}

// hurryModules puts ahead the link types netd is configured to make, then what the first job will need. It returns the
// links' rank: the boot path is loaded with it.
func hurryModules(q *kmod.Queue, n netd.Config) (bootPath int) {
	var links []string
	if len(n.Bonds) > 0 {
		links = append(links, "bonding")
	}
	if len(n.VLANs) > 0 {
		links = append(links, "8021q")
	}
	if len(n.Bridges) > 0 {
		links = append(links, "bridge")
	}
	bootPath = q.Hurry(links...)
	q.Hurry(jobModules...)
	return bootPath
}

// maintenance is where a machine with an unusable config waits: the error is
// on the console, no services run, power handling still works.
func maintenance(src string, err error, power <-chan powerEvent) {
	say("machine config from %s is invalid:", src)
	var cerr *config.Error
	if errors.As(err, &cerr) {
		for _, p := range cerr.Problems {
			say("  %s", p)
		}
	} else {
		say("  %v", err)
	}
	say("maintenance mode: no services started; fix the machine config and reboot")
	shutdown(<-power, nil)
}

func supervisorConfig(m config.Machine) supervise.Config {
	c := supervise.DefaultConfig()
	c.StopTimeout = m.Boot.ShutdownTimeout.Duration
	c.Output = console
	return c
}

// serviceBinary is how PID 1's services run the plinth binary: PID 1's own
// file (the initramfs's /init, in RAM since it was unpacked) by the path
// stage 1 gave it in the running system. Not /proc/self/exe, which names
// the same file by a path that does not exist after switch_root, and
// libcontainer in hostd looks the binary up by that name (see
// bindBinary).
const serviceBinary = binaryPath

// machineConfigCopy is where init leaves the machine config it booted with.
const machineConfigCopy = "/run/plinth/machine.toml"

// netdService runs the network daemon on the machine config's [network]
// section. Its readiness (addresses on the required links, or on any link
// within network.ready_timeout) is the boot's "network ready".
func netdService(m config.Machine, haveConfig bool) supervise.Service {
	args := []string{"netd"}
	if haveConfig {
		args = append(args, "--config", machineConfigCopy)
	}
	if m.Hostname == "" {
		args = append(args, "--dhcp-hostname")
	}
	return supervise.Service{
		Name:    "netd",
		Path:    serviceBinary,
		Argv0:   "plinth",
		Args:    args,
		Notify:  true,
		Restart: supervise.Always,
	}
}

// hostdService runs the host agent on the machine config's [cluster]
// section. It starts after netd so that it advertises the address netd
// configured rather than moving to it later.
func hostdService(haveConfig bool) supervise.Service {
	args := []string{"hostd"}
	if haveConfig {
		args = append(args, "--config", machineConfigCopy)
	}
	return supervise.Service{
		Name:    "hostd",
		Path:    serviceBinary,
		Argv0:   "plinth",
		Args:    args,
		Notify:  true,
		Restart: supervise.Always,
	}
}

// services lists the layer-0 services PID 1 runs after netd, in start order.
func services(cl cmdline, configSource string, haveConfig bool) []supervise.Service {
	svcs := []supervise.Service{hostdService(haveConfig)}
	if cl[paramSelftest] == "1" {
		svcs = append(svcs, supervise.Service{
			Name:  "selftest",
			Path:  serviceBinary,
			Argv0: "plinth",
			Args:  []string{"selftest"},
			Env:   []string{"PLINTH_CONFIG_SOURCE=" + configSource},
			// Ready when started: the self-check waits for the modules
			// that load after ready, and ready must not wait for it.
			Restart: supervise.OnFailure,
		})
	}
	return svcs
}

// ConsoleLogger logs one key=value line per event without timestamps: the
// console lines of init and its services already carry boot-time phases,
// and under TCG every byte on the serial console costs.
func ConsoleLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}}))
}

// prefetch reads a file of the system image into the page cache, after
// ready: the platform binary's first start otherwise decompresses its
// squashfs blocks page fault by page fault (under TCG it took 2.2 s for
// the first job against 0.5 s for the next). Its pages are then shared by
// every platform job. A link (an image with one binary, which is in RAM
// already) is left alone.
func prefetch(path string) {
	st, err := os.Lstat(path)
	if err != nil || !st.Mode().IsRegular() {
		return
	}
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	start := time.Now()
	// Reading, not fadvise(WILLNEED): squashfs decompresses in the
	// reader's context either way, and a read says when it is done.
	n, err := io.Copy(io.Discard, f)
	if err != nil {
		say("prefetch %s: %v", path, err)
		return
	}
	phase("init: %s read ahead (%.1f MB) in %.2fs", path, float64(n)/1e6, time.Since(start).Seconds())
}
