package netd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/plinth-os/plinth/init/kmod"
)

func TestCountPCINICs(t *testing.T) {
	sys := t.TempDir()
	for dev, class := range map[string]string{
		"0000:00:01.0": "0x020000\n", // Ethernet (virtio-net, e1000)
		"0000:00:02.0": "0x030000\n", // VGA
		"0000:00:03.0": "0x028000\n", // other network (e.g. Wi-Fi): not waited for
		"0000:00:04.0": "0x020000\n", // bound to its driver
		"0000:00:05.0": "0x020000\n", // pcnet: no driver in the image
	} {
		dir := filepath.Join(sys, "bus/pci/devices", dev)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		files := map[string]string{"class": class}
		switch dev {
		case "0000:00:01.0":
			files["modalias"] = "pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00\n"
		case "0000:00:04.0":
			os.MkdirAll(filepath.Join(dir, "driver"), 0o755)
		case "0000:00:05.0":
			files["modalias"] = "pci:v00001022d00002000sv00001AF4sd00001100bc02sc00i00\n"
			files["vendor"], files["device"] = "0x1022\n", "0x2000\n"
		}
		for f, v := range files {
			if err := os.WriteFile(filepath.Join(dir, f), []byte(v), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	aliases, err := kmod.ParseAliases(strings.NewReader("pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e\n"))
	if err != nil {
		t.Fatal(err)
	}
	n, driverless := countPCINICs(sys, aliases)
	if n != 2 || len(driverless) != 1 || driverless[0] != "1022:2000 (pci 0000:00:05.0)" {
		t.Errorf("countPCINICs = %d, %q; want 2 and the pcnet one without a driver", n, driverless)
	}
	if n, driverless := countPCINICs(t.TempDir(), aliases); n != 0 || driverless != nil {
		t.Errorf("countPCINICs of an empty sysfs = %d, %v, want 0", n, driverless)
	}
}
