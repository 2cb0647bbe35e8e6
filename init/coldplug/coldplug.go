// Package coldplug loads the drivers a machine's devices need, as udev
// would: it matches every device's modalias (sysfs, and the kernel's
// uevents for devices that come later) against the image's alias table
// and loads the modules that match, with their dependencies. Devices a
// loaded driver brings (the virtio devices behind virtio_pci, the disks
// behind a storage controller, a keyboard behind a USB controller) come
// as uevents and are handled the same way.
package coldplug

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/plinth-os/plinth/init/kmod"
)

// Plugger loads drivers for devices until Stop.
type Plugger struct {
	sys     string
	dir     string
	mods    []kmod.Module
	aliases *kmod.Aliases
	say     func(format string, args ...any)
	fd      int
	loadAll func(dir string, mods []kmod.Module) error // kmod.LoadAll; tests replace it

	done chan struct{} // closed when the listener has closed the socket

	mu        sync.Mutex
	handled   uint64          // the last uevent sequence number handled
	lastEvent time.Time       // when it was, or the last load ended
	busy      int             // loads under way
	loaded    map[string]bool // modules loaded or tried
	stop      bool
}

// Start opens the kernel's uevent stream, then finds the devices sysfs
// (at sys, normally "/sys") shows now, and returns once the drivers of
// those on the buses first names are in: what the caller needs at once
// (PID 1: the ACPI devices, its machine config's fw_cfg and the power
// button). The other devices' drivers load in the background, with those
// of devices that come later (Settle waits for them). The stream is opened
// first, so a device that appears during the scan is not missed. say
// reports each module loaded and for which device.
func Start(sys, dir string, mods []kmod.Module, aliases *kmod.Aliases, first []string, say func(format string, args ...any)) (*Plugger, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_KOBJECT_UEVENT)
	if err != nil {
		return nil, fmt.Errorf("uevent socket: %w", err)
	}
	// Bursts (a controller's disks, a hub's devices) must not overflow it.
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20)
	// The listener looks up from its wait this often to see whether to
	// stop: the socket is closed by it alone, so that its number cannot
	// be reused under a wait still on it.
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000})
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("uevent socket: %w", err)
	}
	p := newPlugger(sys, dir, mods, aliases, say)
	p.fd = fd
	// Events up to now are covered by the scan; later ones reach the socket.
	p.handled, p.lastEvent = p.seqnum(), time.Now()
	now, later := splitByBus(p.scan(), first)
	p.load(now)
	p.mu.Lock()
	p.busy++ // until later is loaded
	p.mu.Unlock()
	go func() {
		p.load(later)
		p.mu.Lock()
		p.busy--
		p.lastEvent = time.Now()
		p.mu.Unlock()
		p.listen()
	}()
	return p, nil
}

// splitByBus divides devs into those on the named buses and the rest.
func splitByBus(devs []device, buses []string) (on, off []device) {
	for _, d := range devs {
		if slices.Contains(buses, d.bus) {
			on = append(on, d)
		} else {
			off = append(off, d)
		}
	}
	return on, off
}

func newPlugger(sys, dir string, mods []kmod.Module, aliases *kmod.Aliases, say func(string, ...any)) *Plugger {
	p := &Plugger{sys: sys, dir: dir, mods: mods, aliases: aliases, say: say, fd: -1, loadAll: kmod.LoadAll,
		done: make(chan struct{}), loaded: map[string]bool{}}
	// A module already in the kernel (stage 1's) is done: one read of
	// /proc/modules rather than a look into sysfs for each.
	for _, m := range loadedModules() {
		p.loaded[m] = true
	}
	return p
}

// loadedModules are the modules in the kernel now.
func loadedModules() []string {
	data, _ := os.ReadFile("/proc/modules")
	return moduleNames(string(data))
}

// moduleNames reads the names of /proc/modules: "name size refs deps
// state address", one module per line.
func moduleNames(procModules string) []string {
	var names []string
	for _, line := range strings.Split(procModules, "\n") {
		if name, _, ok := strings.Cut(line, " "); ok {
			names = append(names, name)
		}
	}
	return names
}

// seqnum is the number of the kernel's last uevent.
func (p *Plugger) seqnum() uint64 {
	data, _ := os.ReadFile(filepath.Join(p.sys, "kernel", "uevent_seqnum"))
	n, _ := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
	return n
}

// device is a device and its modalias.
type device struct {
	path     string // sysfs path: under devices/, or the bus's link to it
	bus      string
	modalias string
}

// scan returns the devices on the buses some driver of the image is for
// (sysfs is slow under TCG: only those are read).
func (p *Plugger) scan() []device {
	buses, _ := os.ReadDir(filepath.Join(p.sys, "bus"))
	var files []string
	for _, b := range buses {
		if p.aliases.Bus(b.Name()) {
			f, _ := filepath.Glob(filepath.Join(p.sys, "bus", b.Name(), "devices", "*", "modalias"))
			files = append(files, f...)
		}
	}
	var devs []device
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		// The bus's link to the device serves as well as its real path,
		// and resolving it costs a look at every component.
		bus := filepath.Base(filepath.Dir(filepath.Dir(filepath.Dir(f))))
		devs = append(devs, device{path: filepath.Dir(f), bus: bus, modalias: strings.TrimSpace(string(data))})
	}
	return devs
}

// load loads what devs need that is not loaded yet, each module's
// dependencies first; independent modules load in parallel.
func (p *Plugger) load(devs []device) {
	var want []string
	why := map[string]device{}
	p.mu.Lock()
	for _, d := range devs {
		for _, m := range p.aliases.Match(d.modalias) {
			if p.loaded[m] || slices.Contains(want, m) {
				continue
			}
			want = append(want, m)
			why[m] = d
		}
	}
	var mods []kmod.Module
	if len(want) > 0 {
		first, _, _ := kmod.Split(p.mods, want...)
		for _, m := range first {
			if !p.loaded[m.Name] {
				p.loaded[m.Name] = true
				mods = append(mods, m)
			}
		}
	}
	p.busy++
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.busy--
		// The devices a driver made are uevents the listener has yet to
		// read: the quiet that Settle may take for all handled starts now.
		p.lastEvent = time.Now()
		p.mu.Unlock()
	}()
	if len(mods) == 0 {
		return
	}
	start := time.Now()
	err := p.loadAll(p.dir, mods)
	for _, m := range want {
		if failed := err != nil && strings.Contains(err.Error(), "module "+m+":"); failed {
			p.say("driver %s for %s failed to load", m, describe(p.sys, why[m].path))
		} else {
			p.say("driver %s for %s", m, describe(p.sys, why[m].path))
		}
	}
	if err != nil {
		p.say("%v", err)
	}
	p.say("%d module(s) loaded in %.3fs", len(mods), time.Since(start).Seconds())
}

// listen handles uevents until Stop, then closes the socket.
func (p *Plugger) listen() {
	defer close(p.done)
	defer unix.Close(p.fd)
	buf := make([]byte, 64<<10)
	for {
		p.mu.Lock()
		stop := p.stop
		p.mu.Unlock()
		if stop {
			return
		}
		n, from, err := unix.Recvfrom(p.fd, buf, 0)
		switch {
		case errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ENOBUFS):
			// Events were lost: look at everything again.
			p.load(p.scan())
			continue
		case err != nil:
			p.say("uevents: %v; drivers for new devices are no longer loaded", err)
			return
		}
		// Only the kernel's own: anyone with CAP_NET_ADMIN may send here.
		if nl, ok := from.(*unix.SockaddrNetlink); !ok || nl.Pid != 0 {
			continue
		}
		if ev := parseUevent(buf[:n]); ev != nil {
			p.handle(ev)
		}
	}
}

// handle loads the driver an added device needs.
func (p *Plugger) handle(ev *uevent) {
	if ev.action == "add" && ev.modalias != "" {
		p.load([]device{{path: filepath.Join(p.sys, ev.devpath), modalias: ev.modalias}})
	}
	p.mu.Lock()
	if ev.seqnum > p.handled {
		p.handled = ev.seqnum
	}
	p.lastEvent = time.Now()
	p.mu.Unlock()
}

type uevent struct {
	action, devpath, modalias string
	seqnum                    uint64
}

// parseUevent reads a kernel uevent: "action@devpath", then KEY=value
// strings, NUL-separated. Messages from udev (which start "libudev")
// and malformed ones give nil.
func parseUevent(b []byte) *uevent {
	fields := bytes.Split(b, []byte{0})
	if len(fields) < 2 || !bytes.Contains(fields[0], []byte("@")) {
		return nil
	}
	ev := &uevent{}
	for _, f := range fields[1:] {
		k, v, ok := strings.Cut(string(f), "=")
		if !ok {
			continue
		}
		switch k {
		case "ACTION":
			ev.action = v
		case "DEVPATH":
			ev.devpath = v
		case "MODALIAS":
			ev.modalias = v
		case "SEQNUM":
			ev.seqnum, _ = strconv.ParseUint(v, 10, 64)
		}
	}
	if ev.action == "" || ev.devpath == "" {
		return nil
	}
	return ev
}

// Settle waits until no driver is loading and the kernel's uevents are
// handled, including those of the devices the drivers made: then every
// device known so far has its driver. The kernel numbers its events
// across network namespaces and delivers a namespace's own only there,
// so the events are taken as handled when this namespace's last one is
// or when none came for quiet. A device that a driver finds later (a
// disk after a slow bus scan) still comes as a uevent and is handled then.
func (p *Plugger) Settle(ctx context.Context) error {
	for {
		target := p.seqnum()
		p.mu.Lock()
		settled := p.busy == 0 && (p.handled >= target || time.Since(p.lastEvent) > quiet)
		p.mu.Unlock()
		if settled {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("settle: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// quiet is how long without a uevent counts as all handled.
const quiet = 200 * time.Millisecond

// Stop ends the handling of uevents and returns once the socket is
// closed.
func (p *Plugger) Stop() {
	p.mu.Lock()
	p.stop = true
	p.mu.Unlock()
	<-p.done
}

// describe names a device for the console: its bus, address and, for PCI
// and USB, its IDs ("pci 0000:00:02.0 8086:10d3").
func describe(sys, path string) string {
	bus := ""
	if l, err := os.Readlink(filepath.Join(path, "subsystem")); err == nil {
		bus = filepath.Base(l)
	}
	name := filepath.Base(path)
	read := func(f string) string {
		b, _ := os.ReadFile(filepath.Join(path, f))
		return strings.TrimPrefix(strings.TrimSpace(string(b)), "0x")
	}
	switch bus {
	case "pci":
		return fmt.Sprintf("pci %s %s:%s", name, read("vendor"), read("device"))
	case "usb":
		if v := read("idVendor"); v != "" {
			return fmt.Sprintf("usb %s %s:%s", name, v, read("idProduct"))
		}
	}
	if bus == "" {
		return name
	}
	return bus + " " + name
}
