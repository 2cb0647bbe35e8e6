package coldplug

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/plinth-os/plinth/init/kmod"
	"github.com/plinth-os/plinth/internal/netnstest"
)

// fakeSys is a sysfs with devices (by path under devices/) on buses.
type fakeSys struct {
	t    *testing.T
	root string
}

func (f fakeSys) device(bus, path, modalias string, attrs map[string]string) {
	f.t.Helper()
	dir := filepath.Join(f.root, "devices", path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		f.t.Fatal(err)
	}
	attrs["modalias"] = modalias
	for k, v := range attrs {
		os.WriteFile(filepath.Join(dir, k), []byte(v+"\n"), 0o644)
	}
	os.MkdirAll(filepath.Join(f.root, "bus", bus, "devices"), 0o755)
	os.Symlink(filepath.Join(f.root, "bus", bus), filepath.Join(dir, "subsystem"))
	if err := os.Symlink(dir, filepath.Join(f.root, "bus", bus, "devices", filepath.Base(path))); err != nil {
		f.t.Fatal(err)
	}
}

// recorder stands in for kmod.LoadAll: it records what would be loaded.
type recorder struct {
	mu     sync.Mutex
	loads  [][]string
	failed string
}

func (r *recorder) loadAll(_ string, mods []kmod.Module) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var names []string
	for _, m := range mods {
		names = append(names, m.Name)
	}
	r.loads = append(r.loads, names)
	if slices.Contains(names, r.failed) {
		return fmt.Errorf("load module %s: exec format error", r.failed)
	}
	return nil
}

var mods = []kmod.Module{
	{Name: "libata", Path: "libata.ko", OnDemand: true},
	{Name: "ahci", Path: "ahci.ko", Deps: []string{"libata"}, OnDemand: true},
	{Name: "e1000e", Path: "e1000e.ko", OnDemand: true},
	{Name: "button", Path: "button.ko", OnDemand: true},
	{Name: "sd_mod", Path: "sd_mod.ko", OnDemand: true},
	{Name: "usbhid", Path: "usbhid.ko", OnDemand: true},
}

const aliases = `pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e
pci:v*d*sv*sd*bc01sc06i01* ahci
acpi*:PNP0C0C:* button
scsi:t-0x00* sd_mod
usb:v*p*d*dc*dsc*dp*ic03isc*ip*in* usbhid
`

func TestScanLoadsWhatDevicesNeed(t *testing.T) {
	f := fakeSys{t, t.TempDir()}
	f.device("pci", "pci0000:00/0000:00:02.0", "pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00", map[string]string{"vendor": "0x8086", "device": "0x10d3"})
	f.device("pci", "pci0000:00/0000:00:1f.2", "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01", map[string]string{"vendor": "0x8086", "device": "0x2922"})
	f.device("pci", "pci0000:00/0000:00:03.0", "pci:v00001022d00002000sv00001AF4sd00001100bc02sc00i00", map[string]string{}) // pcnet: no driver here
	f.device("acpi", "LNXSYSTM:00/PNP0C0C:00", "acpi:PNP0C0C:", map[string]string{})
	f.device("platform", "platform/serial8250", "platform:serial8250", map[string]string{}) // a bus no alias is for

	al, err := kmod.ParseAliases(strings.NewReader(aliases))
	if err != nil {
		t.Fatal(err)
	}
	var said []string
	var mu sync.Mutex
	p := newPlugger(f.root, "/lib/modules/x", mods, al, func(format string, args ...any) {
		mu.Lock()
		said = append(said, fmt.Sprintf(format, args...))
		mu.Unlock()
	})
	rec := &recorder{failed: "usbhid"}
	p.loadAll = rec.loadAll
	p.loaded["button"] = true // in the kernel already
	p.load(p.scan())
	if len(rec.loads) != 1 || !slices.Equal(rec.loads[0], []string{"libata", "ahci", "e1000e"}) {
		t.Fatalf("loads %v, want one of [libata ahci e1000e] (dependency first, button loaded already)", rec.loads)

	}
	for _, want := range []string{"driver e1000e for pci 0000:00:02.0 8086:10d3", "driver ahci for pci 0000:00:1f.2 8086:2922"} {
		if !slices.Contains(said, want) {
			t.Errorf("the console was not told %q: %q", want, said)
		}
	}

	// Devices the drivers find come as uevents: a disk behind the AHCI
	// controller gets sd_mod, the controller nothing again; a keyboard
	// whose driver fails says so.
	p.handled = 10
	p.handle(&uevent{action: "add", devpath: "/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0", modalias: "scsi:t-0x00", seqnum: 11})
	p.handle(&uevent{action: "add", devpath: "/devices/pci0000:00/0000:00:1f.2", modalias: "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01", seqnum: 12})
	p.handle(&uevent{action: "remove", devpath: "/devices/x", modalias: "usb:v0627p0001d0000dc00dsc00dp00ic03isc01ip01in00", seqnum: 13})
	p.handle(&uevent{action: "add", devpath: "/devices/x", modalias: "usb:v0627p0001d0000dc00dsc00dp00ic03isc01ip01in00", seqnum: 14})
	if want := [][]string{{"libata", "ahci", "e1000e"}, {"sd_mod"}, {"usbhid"}}; len(rec.loads) != 3 || !slices.Equal(rec.loads[1], want[1]) || !slices.Equal(rec.loads[2], want[2]) {
		t.Fatalf("loads %v, want %v", rec.loads, want)
	}
	if !slices.ContainsFunc(said, func(s string) bool { return strings.Contains(s, "driver usbhid for x failed to load") }) {
		t.Errorf("a failed load was not said: %q", said)
	}
	if p.handled != 14 {
		t.Errorf("handled %d, want 14", p.handled)
	}

	// A load just ended: its devices' events may still be unread, so
	// Settle does not take the quiet for all handled yet.
	os.MkdirAll(filepath.Join(f.root, "kernel"), 0o755)
	os.WriteFile(filepath.Join(f.root, "kernel", "uevent_seqnum"), []byte("14\n"), 0o644)
	p.handled, p.lastEvent = 13, time.Now().Add(-time.Second)
	p.load(nil)
	early, cancelEarly := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancelEarly()
	if err := p.Settle(early); err == nil {
		t.Fatal("settled with an event unread right after a load")
	}
	p.handled = 14

	// Settle: done once the kernel's last event is handled.
	os.MkdirAll(filepath.Join(f.root, "kernel"), 0o755)
	os.WriteFile(filepath.Join(f.root, "kernel", "uevent_seqnum"), []byte("15\n"), 0o644)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := p.Settle(ctx); err == nil {
		t.Fatal("settled with event 15 not handled")
	}
	p.handle(&uevent{action: "change", devpath: "/devices/y", seqnum: 15})
	if err := p.Settle(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestParseUevent(t *testing.T) {
	msg := "add@/devices/pci0000:00/0000:00:02.0\x00ACTION=add\x00DEVPATH=/devices/pci0000:00/0000:00:02.0\x00SUBSYSTEM=pci\x00MODALIAS=pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00\x00SEQNUM=1234\x00"
	ev := parseUevent([]byte(msg))
	if ev == nil || ev.action != "add" || ev.devpath != "/devices/pci0000:00/0000:00:02.0" || ev.seqnum != 1234 || !strings.HasPrefix(ev.modalias, "pci:v00008086") {
		t.Fatalf("parsed %+v", ev)
	}
	for _, bad := range []string{"", "libudev\x00\xfe\xed", "add@/x\x00SEQNUM=1\x00"} {
		if ev := parseUevent([]byte(bad)); ev != nil {
			t.Errorf("parseUevent(%q) = %+v, want nil", bad, ev)
		}
	}
}

// The listener on the real kernel: in a network namespace of its own, a
// uevent of its loopback device (which has no modalias) is handled, then
// Settle returns, and Stop closes the socket.
func TestListenRealUevents(t *testing.T) {
	if !netnstest.InOwnNetns(t) {
		return
	}
	// A sysfs of this namespace's, where lo is its own.
	if err := unix.Mount("sysfs", "/sys", "sysfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	al, _ := kmod.ParseAliases(strings.NewReader(""))
	p, err := Start("/sys", t.TempDir(), mods, al, nil, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	before := p.seqnum()
	if err := os.WriteFile("/sys/class/net/lo/uevent", []byte("change"), 0o200); err != nil {
		t.Fatal(err)
	}
	handled := func() uint64 {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.handled
	}
	for deadline := time.Now().Add(10 * time.Second); handled() <= before; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the event after %d was not handled in 10 s", before)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Settle(ctx); err != nil {
		t.Fatal(err)
	}
	p.Stop()
	if err := unix.Close(p.fd); err == nil {
		t.Error("the socket was still open after Stop")
	}
}

func TestModuleNames(t *testing.T) {
	proc := "squashfs 73728 1 - Live 0x0000000000000000\nloop 32768 2 - Live 0x0000000000000000\n"
	if got := moduleNames(proc); !slices.Equal(got, []string{"squashfs", "loop"}) {
		t.Errorf("moduleNames = %v", got)
	}
}

func TestSplitByBus(t *testing.T) {
	devs := []device{{path: "a", bus: "acpi"}, {path: "p", bus: "pci"}, {path: "b", bus: "acpi"}}
	on, off := splitByBus(devs, []string{"acpi"})
	if len(on) != 2 || on[0].path != "a" || on[1].path != "b" || len(off) != 1 || off[0].path != "p" {
		t.Errorf("splitByBus: %+v, %+v", on, off)
	}
}
