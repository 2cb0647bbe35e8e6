package netd

import (
	"os"
	"path/filepath"
	"testing"
)

func TestCountPCINICs(t *testing.T) {
	sys := t.TempDir()
	for dev, class := range map[string]string{
		"0000:00:01.0": "0x020000\n", // Ethernet (virtio-net, e1000)
		"0000:00:02.0": "0x030000\n", // VGA
		"0000:00:03.0": "0x028000\n", // other network (e.g. Wi-Fi): not waited for
		"0000:00:04.0": "0x020000\n",
	} {
		dir := filepath.Join(sys, "bus/pci/devices", dev)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "class"), []byte(class), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if n := countPCINICs(sys); n != 2 {
		t.Errorf("countPCINICs = %d, want 2", n)
	}
	if n := countPCINICs(t.TempDir()); n != 0 {
		t.Errorf("countPCINICs of an empty sysfs = %d, want 0", n)
	}
}
