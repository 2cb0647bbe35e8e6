//go:build vmtest

package vmtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/slots"
	"github.com/plinth-os/plinth/image"
	boot "github.com/plinth-os/plinth/init"
)

// genericImage returns the generic flavour's kernel and initrd (make
// image-generic), or skips the test.
func genericImage(t testing.TB) (kernel, initrd string) {
	t.Helper()
	return builtImage(t, "PLINTH_GENERIC_IMAGE_DIR", "../out/generic", "make image-generic")
}

// dhcpServer runs dnsmasq on a port of seg, leasing 10.61.0.0/24 with
// the given MAC → address pins.
func dhcpServer(t *testing.T, seg *Segment, pins map[string]string) {
	t.Helper()
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		t.Skip("dnsmasq not installed (scripts/deps.sh installs it)")
	}
	const port = "dhcpport"
	seg.HostPort(t, port)
	if err := ip("-n", seg.Netns, "addr", "add", "10.61.0.254/24", "dev", port); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	args := []string{"netns", "exec", seg.Netns, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
		"--port=0", "--user=root", "--log-facility=-", "--log-dhcp", "--interface=" + port, "--bind-interfaces",
		"--dhcp-range=10.61.0.100,10.61.0.200,255.255.255.0,10m",
		"--dhcp-leasefile=" + filepath.Join(dir, "leases"), "--pid-file=" + filepath.Join(dir, "pid")}
	for mac, addr := range pins {
		args = append(args, "--dhcp-host="+mac+","+addr)
	}
	dnsmasq := exec.Command("ip", args...)
	var log bytes.Buffer
	dnsmasq.Stdout, dnsmasq.Stderr = &log, &log
	if err := dnsmasq.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		dnsmasq.Process.Kill()
		dnsmasq.Wait()
		if t.Failed() {
			t.Logf("dnsmasq:\n%s", log.String())
		}
	})
}

// TestBareMetalHardware boots the generic image on q35 machines with the
// NICs and disks of real ones, under TCG: node 1 with an e1000e NIC and
// its data partition on an AHCI (SATA) disk, node 2 with QEMU's default
// e1000 NIC, an NVMe data disk and a USB keyboard on an xhci controller,
// node 3 with an rtl8139 NIC and no disk. Each gets its address by DHCP
// from dnsmasq on the segment, loads the drivers for what it has
// (coldplug), mounts /var from its disk, and the three form a cluster.
func TestBareMetalHardware(t *testing.T) {
	kernel, initrd := genericImage(t)
	bundlePath, creds, err := ClusterFiles(t.TempDir(), "vmtest")
	if err != nil {
		t.Fatal(err)
	}
	seg := NewSegment(t)
	addr := func(i int) string { return fmt.Sprintf("10.61.0.%d", i+1) }
	pins := map[string]string{}
	nics := []struct{ model, pci, driver string }{
		{"e1000e", "8086:10d3", "e1000e"},
		{"e1000", "8086:100e", "e1000"},
		{"rtl8139", "10ec:8139", "8139"}, // 8139cp or 8139too: both claim it
	}
	var cfgs []Config
	for i, nic := range nics {
		c := ClusterNodeAt(i, 3, addr, 24, kernel, initrd, seg, bundlePath)
		c.Cmdline = "plinth.selftest=1"
		c.Memory = 768 // the generic kernel and its modules are larger
		c.NICs[0].Model = nic.model
		pins[c.NICs[0].MAC] = addr(i)
		c.MachineConfig = bytes.Replace(c.MachineConfig, fmt.Appendf(nil, "addresses = [\"%s/24\"]", addr(i)), []byte("dhcp = true"), 1)
		switch i {
		case 0:
			c.DiskBus = DiskAHCI
		case 1:
			c.DiskBus = DiskNVMe
			c.ExtraArgs = append(c.ExtraArgs, "-device", "qemu-xhci", "-device", "usb-kbd")
		}
		if c.DiskBus != "" {
			disk, err := DataDisk(t.TempDir(), 256<<20)
			if err != nil {
				t.Fatal(err)
			}
			c.Disks = []string{disk}
		}
		cfgs = append(cfgs, c)
	}
	dhcpServer(t, seg, pins)
	vms := StartN(t, cfgs...)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	_, took := clusterConverges(t, ctx, vms, creds, addr)
	t.Logf("three members alive at their DHCP addresses %.1fs after the last ready", took.Seconds())

	// The self-check reports after ready.
	reports := make([]boot.Selftest, len(vms))
	for i, vm := range vms {
		if _, err := vm.WaitFor(ctx, boot.SelftestMarker); err != nil {
			t.Fatalf("%s: %v", vm.Name(), err)
		}
		if reports[i], err = boot.ParseSelftest(vm.Console()); err != nil {
			t.Fatalf("%s: %v", vm.Name(), err)
		}
	}
	for i, r := range reports {
		vm, nic := vms[i], nics[i]
		if got := r.Addresses["lan0"]; len(got) == 0 || got[0] != addr(i)+"/24" {
			t.Errorf("%s: lan0 addresses %v, want %s/24 from DHCP", vm.Name(), got, addr(i))
		}
		if d := driverOf(r, "pci", nic.pci); !strings.HasPrefix(d, nic.driver) {
			t.Errorf("%s: the %s NIC (%s) has driver %q, want %s; drivers %v", vm.Name(), nic.model, nic.pci, d, nic.driver, r.Drivers)
		}
		if !strings.Contains(vm.Console(), "coldplug: driver "+driverOf(r, "pci", nic.pci)+" for pci ") {
			t.Errorf("%s: the console does not say which driver was loaded for the NIC", vm.Name())
		}
		if len(r.Problems) > 0 {
			t.Errorf("%s: self-check problems: %v", vm.Name(), r.Problems)
		}
	}
	for i, dev := range []string{"/dev/sda", "/dev/nvme0n1"} {
		if m := reports[i].Mounts["/var"]; m.FSType != "ext4" || !strings.HasPrefix(m.Source, dev) {
			t.Errorf("%s: /var = %+v, want ext4 on %s", vms[i].Name(), m, dev)
		}
	}
	if d := driverOf(reports[0], "pci", "8086:2922"); d != "ahci" {
		t.Errorf("node1: the AHCI controller has driver %q", d)
	}
	if d := driverOf(reports[1], "pci", "1b36:0010"); d != "nvme" {
		t.Errorf("node2: the NVMe controller has driver %q", d)
	}
	if d := driverOf(reports[1], "pci", "1b36:000d"); d != "xhci_hcd" {
		t.Errorf("node2: the xhci controller has driver %q", d)
	}
	// The keyboard's interface (1-1:1.0) is bound to usbhid.
	if d := driverOf(reports[1], "usb", "1-1:1.0"); d != "usbhid" {
		t.Errorf("node2: the USB keyboard's interface has driver %q, want usbhid; drivers %v", d, reports[1].Drivers)
	}
}

// driverOf returns the driver the self-check found bound to the device
// of bus whose key contains id ("8086:10d3", "1-1:1.0").
func driverOf(r boot.Selftest, bus, id string) string {
	for k, d := range r.Drivers {
		f := strings.Fields(k)
		if len(f) >= 2 && f[0] == bus && (f[1] == id || len(f) == 3 && f[2] == id) {
			return d
		}
	}
	return ""
}

// TestDriverlessNIC: a machine whose only NIC has no driver in the image
// (QEMU's pcnet, outside the hardware set) says so on the console and is
// ready without waiting out netd's timeout for a link that no driver
// will make.
func TestDriverlessNIC(t *testing.T) {
	kernel, initrd := genericImage(t)
	vm := StartT(t, Config{Name: "pcnet", Kernel: kernel, Initrd: initrd, Memory: 768,
		NICs: []NIC{{Model: "pcnet", User: &UserNet{}}}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	line, err := vm.WaitFor(ctx, "has no driver in this image")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(line, "eth controller 1022:2000") {
		t.Errorf("message %q does not name the controller", line)
	}
	if line, err = vm.WaitFor(ctx, "network ready"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(line, "no network hardware with a driver") {
		t.Errorf("netd ready because %q, want: no network hardware with a driver (not the timeout)", line)
	}
	if _, err := vm.WaitFor(ctx, "plinth: ready in "); err != nil {
		t.Fatal(err)
	}
}

// TestConsolesSerialAndVGA: with console=ttyS0 console=tty0 (the screen
// last, so it is /dev/console), init's lines and its services' reach
// both: the serial port, which the harness reads, and the VGA text
// screen, read from the card's memory through QEMU's monitor.
func TestConsolesSerialAndVGA(t *testing.T) {
	kernel, initrd := genericImage(t)
	vm := StartT(t, Config{Name: "vga", Kernel: kernel, Initrd: initrd, Memory: 768, Cmdline: "console=tty0",
		NICs: []NIC{{User: &UserNet{}}}, ExtraArgs: []string{"-device", "VGA"}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := vm.WaitFor(ctx, "plinth: ready in "); err != nil {
		t.Fatal(err)
	}
	var screen string
	for {
		var err error
		if screen, err = vgaText(ctx, vm); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(screen, "plinth: ready in ") && strings.Contains(screen, "hostd: ") {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the VGA screen shows no line of init's and hostd's:\n%s", screen)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// vgaText reads the VGA text memory through the monitor's xp command:
// cells of character and attribute bytes from 0xb8000, 80 to a line. The
// kernel's console scrolls by moving the screen's start through all
// 32 KiB of it, so all of it is read.
func vgaText(ctx context.Context, vm *VM) (string, error) {
	raw, err := vm.QMP(ctx, "human-monitor-command", map[string]string{"command-line": "xp /32768bx 0xb8000"})
	if err != nil {
		return "", err
	}
	var out string
	if err := json.Unmarshal(raw, &out); err != nil {
		return "", err
	}
	// Lines of "00000000000b8000: 0x70 0x07 ...".
	var cells []byte
	for _, line := range strings.Split(out, "\n") {
		_, bytesPart, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		for _, b := range strings.Fields(bytesPart) {
			v, err := strconv.ParseUint(strings.TrimPrefix(b, "0x"), 16, 8)
			if err != nil {
				return "", fmt.Errorf("monitor output %q: %w", line, err)
			}
			cells = append(cells, byte(v))
		}
	}
	var text strings.Builder
	for i := 0; i+1 < len(cells); i += 2 {
		if i > 0 && i%160 == 0 {
			text.WriteByte('\n')
		}
		c := cells[i]
		if c < 0x20 || c > 0x7e {
			c = ' '
		}
		text.WriteByte(c)
	}
	return text.String(), nil
}

// TestInstallGenericNVMe: the generic image, booted from the network on
// a q35 machine whose only disk is NVMe, installs itself onto that disk;
// a machine then boots the disk under UEFI: stage 1 loads the NVMe driver
// from the initramfs to find slot A (coldplug), and the data partition
// on the same disk is /var.
func TestInstallGenericNVMe(t *testing.T) {
	kernel, initrd := genericImage(t)
	if _, err := os.Stat(OVMFCode); err != nil {
		t.Skipf("needs OVMF (apt-get install ovmf): %v", err)
	}
	bundle, err := os.ReadFile(filepath.Join(filepath.Dir(kernel), image.BundleName))
	if err != nil {
		t.Skipf("no signed bundle (run make image-generic): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dir := t.TempDir()
	target := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(target, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(target, 1<<30); err != nil {
		t.Fatal(err)
	}
	bundlePath, creds, err := ClusterFiles(dir, "vmtest")
	if err != nil {
		t.Fatal(err)
	}
	seg := NewSegment(t)

	cfg := ClusterNode(0, 1, kernel, initrd, seg, bundlePath)
	cfg.Name, cfg.Memory = "installer", 1024
	cfg.Disks, cfg.DiskBus = []string{target}, DiskNVMe
	vm := StartT(t, cfg)
	if _, err := vm.WaitFor(ctx, "plinth: ready in "); err != nil {
		t.Fatalf("%v\n%s", err, vm.ConsoleTail(40))
	}
	c, err := HostClient(vm, creds)
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Install(ctx, "/dev/nvme0n1", bytes.NewReader(bundle), host.InstallOptions{Cmdline: "console=ttyS0 quiet"})
	if err != nil {
		t.Fatalf("install: %v\n%s", err, vm.ConsoleTail(20))
	}
	if len(res.Partitions) != 4 || res.Partitions[3].Device != "/dev/nvme0n1p4" {
		t.Fatalf("install answer %+v", res)
	}
	if err := vm.Powerdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.WaitExit(ctx); err != nil {
		t.Fatal(err)
	}

	cfg = ClusterNode(0, 1, "", "", seg, bundlePath)
	cfg.Name, cfg.Memory, cfg.UEFI = "installed", 1024, true
	cfg.Disks, cfg.DiskBus = []string{target}, DiskNVMe
	vm = StartT(t, cfg)
	if _, err := vm.WaitFor(ctx, "plinth: ready in "); err != nil {
		t.Fatalf("%v\n%s", err, vm.ConsoleTail(40))
	}
	con := vm.Console()
	for _, want := range []string{"coldplug: driver nvme for pci ", "stage1: slot a (/dev/nvme0n1p2", "init: data partition /dev/nvme0n1p4 mounted at /var"} {
		if !strings.Contains(con, want) {
			t.Errorf("console lacks %q:\n%s", want, vm.ConsoleTail(60))
		}
	}
	if c, err = HostClient(vm, creds); err != nil {
		t.Fatal(err)
	}
	info, err := c.Host(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Slots.Booted != "a" || slotOf(info, "a").Entry != slots.EntryCommitted {
		t.Errorf("booted from the disk: slots %+v, want slot a committed", info.Slots)
	}
}
