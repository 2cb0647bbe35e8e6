package boot

import (
	"os"
	"path/filepath"
	"testing"
)

// A fake sysfs: two virtio block devices (legacy and modern) and a virtio
// NIC; the disks count as shown only once each has its block device.
func TestDisksShown(t *testing.T) {
	sys := t.TempDir()
	pci := func(addr, vendor, device string) string {
		d := filepath.Join(sys, "bus/pci/devices", addr)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(d, "vendor"), []byte(vendor+"\n"), 0o644)
		os.WriteFile(filepath.Join(d, "device"), []byte(device+"\n"), 0o644)
		return d
	}
	legacy := pci("0000:00:04.0", "0x1af4", "0x1001")
	modern := pci("0000:00:05.0", "0x1af4", "0x1042")
	pci("0000:00:03.0", "0x1af4", "0x1000")
	pci("0000:00:02.0", "0x8086", "0x100e")

	devs := virtioBlockDevices(sys)
	if len(devs) != 2 || devs[0] != legacy || devs[1] != modern {
		t.Fatalf("virtio block devices %v, want [%s %s]", devs, legacy, modern)
	}
	if disksShown(devs) {
		t.Fatal("disks shown before the driver made any block device")
	}
	os.MkdirAll(filepath.Join(legacy, "virtio1/block/vda"), 0o755)
	if disksShown(devs) {
		t.Fatal("disks shown with the second one still probing")
	}
	os.MkdirAll(filepath.Join(modern, "virtio2/block/vdb"), 0o755)
	if !disksShown(devs) {
		t.Fatal("disks not shown once both have block devices")
	}
	if got := virtioBlockDevices(filepath.Join(sys, "none")); len(got) != 0 {
		t.Fatalf("no PCI bus: got %v", got)
	}
}
