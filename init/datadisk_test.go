package boot

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// A fake sysfs: two virtio block devices (legacy and modern), an AHCI
// controller, a virtio NIC and an e1000. The storage controllers are the
// three disk ones; the disks count as shown once each virtio one has its
// block device (the AHCI controller's disks are there once its driver
// is, and are not counted).
func TestStorageControllersAndDisksShown(t *testing.T) {
	sys := t.TempDir()
	pci := func(addr, vendor, device, class string) string {
		d := filepath.Join(sys, "bus/pci/devices", addr)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(d, "vendor"), []byte(vendor+"\n"), 0o644)
		os.WriteFile(filepath.Join(d, "device"), []byte(device+"\n"), 0o644)
		os.WriteFile(filepath.Join(d, "class"), []byte(class+"\n"), 0o644)
		return d
	}
	ahci := pci("0000:00:1f.2", "0x8086", "0x2922", "0x010601")
	legacy := pci("0000:00:04.0", "0x1af4", "0x1001", "0x010000")
	modern := pci("0000:00:05.0", "0x1af4", "0x1042", "0x010000")
	pci("0000:00:03.0", "0x1af4", "0x1000", "0x020000")
	pci("0000:00:02.0", "0x8086", "0x100e", "0x020000")

	ctrls := storageControllers(sys)
	if want := []string{legacy, modern, ahci}; !slices.Equal(ctrls, want) {
		t.Fatalf("storage controllers %v, want %v", ctrls, want)
	}
	if disksShown(ctrls) {
		t.Fatal("disks shown before the driver made any block device")
	}
	os.MkdirAll(filepath.Join(legacy, "virtio1/block/vda"), 0o755)
	if disksShown(ctrls) {
		t.Fatal("disks shown with the second one still probing")
	}
	os.MkdirAll(filepath.Join(modern, "virtio2/block/vdb"), 0o755)
	if !disksShown(ctrls) {
		t.Fatal("disks not shown once both virtio disks have block devices")
	}
	if got := storageControllers(filepath.Join(sys, "none")); len(got) != 0 {
		t.Fatalf("no PCI bus: got %v", got)
	}
}
