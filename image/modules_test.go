package image

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// fakeModule compiles a relocatable ELF object whose .modinfo section holds
// depends=deps, the way kbuild lays it out, and stores it at dir/kernel/rel.
func fakeModule(t *testing.T, dir, rel, deps string, info ...string) string {
	t.Helper()
	src := filepath.Join(t.TempDir(), "m.c")
	extra := ""
	for _, kv := range info {
		extra += kv + `\0`
	}
	code := `__attribute__((section(".modinfo"), used)) static const char info[] = "license=GPL\0` + extra + `depends=` + deps + `\0vermagic=6.1.0 SMP mod_unload";` + "\n"
	if err := os.WriteFile(src, []byte(code), 0o644); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "kernel", rel)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("gcc", "-c", "-o", dst, src).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	return dst
}

func moduleNames(mods []moduleFile) []string {
	var n []string
	for _, m := range mods {
		n = append(n, m.Name+"<"+strings.Join(m.Deps, ",")+">")
	}
	return n
}

func TestResolveModules(t *testing.T) {
	dir := t.TempDir()
	fakeModule(t, dir, "virtio/virtio_ring.ko", "")
	fakeModule(t, dir, "virtio/virtio.ko", "virtio_ring")
	fakeModule(t, dir, "net/virtio_net.ko", "net_failover,virtio,virtio_ring")
	fakeModule(t, dir, "net/net_failover.ko", "failover")
	fakeModule(t, dir, "net/failover.ko", "")
	fakeModule(t, dir, "hw/virtio-rng.ko", "virtio,virtio_ring") // '-' in the file, '_' in the name
	xzed := fakeModule(t, dir, "fs/squashfs.ko", "")
	if out, err := exec.Command("xz", "--check=crc32", xzed).CombinedOutput(); err != nil {
		t.Fatalf("xz: %v\n%s", err, out)
	}

	mods, err := resolveModules(dir, []string{"virtio_net", "virtio-rng", "squashfs"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"squashfs<>",
		"failover<>", "net_failover<failover>", "virtio_ring<>", "virtio<virtio_ring>",
		"virtio_net<net_failover,virtio,virtio_ring>",
		"virtio_rng<virtio,virtio_ring>",
	}
	if got := moduleNames(mods); !reflect.DeepEqual(got, want) {
		t.Errorf("load order\n got %v\nwant %v", got, want)
	}
	for _, m := range mods {
		if m.Name == "squashfs" && m.Path != "kernel/fs/squashfs.ko" {
			t.Errorf("xz module path %q, want the decompressed name kernel/fs/squashfs.ko", m.Path)
		}
		if m.Name == "virtio_rng" && m.Path != "kernel/hw/virtio-rng.ko" {
			t.Errorf("virtio_rng path %q", m.Path)
		}
	}
	// The .xz file is stored decompressed: a plain ELF that finit_module takes.
	for _, m := range mods {
		if m.Name != "squashfs" {
			continue
		}
		data, err := readDecompressed(m.src)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(string(data), "\x7fELF") {
			t.Errorf("decompressed squashfs.ko does not start with the ELF magic")
		}
	}
}

func TestResolveModulesErrors(t *testing.T) {
	dir := t.TempDir()
	fakeModule(t, dir, "a.ko", "b")
	fakeModule(t, dir, "b.ko", "a")
	fakeModule(t, dir, "c.ko", "nosuch")
	for _, tc := range []struct{ name, want string }{
		{"a", "cycle"},
		{"c", "module nosuch (needed by c) not found"},
		{"zz", "module zz not found"},
	} {
		_, err := resolveModules(dir, []string{tc.name})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("resolve %s: error %v, want one containing %q", tc.name, err, tc.want)
		}
	}
}

// A generic-like tree: ext4 built in is left out, drivers are marked to
// load on demand with their aliases, what the system needs at boot is not,
// and the firmware a driver names is taken from the firmware directory
// when there, else reported missing.
func TestHardwareModules(t *testing.T) {
	dir := t.TempDir()
	fakeModule(t, dir, "ata/libata.ko", "")
	fakeModule(t, dir, "ata/ahci.ko", "libata", "alias=pci:v*d*sv*sd*bc01sc06i01*")
	fakeModule(t, dir, "net/tg3.ko", "", "alias=pci:v000014E4d00001644sv*sd*bc*sc*i*", "firmware=tigon/tg3.bin", "firmware=tigon/tg3_tso.bin")
	fakeModule(t, dir, "net/bridge.ko", "")
	os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte("kernel/fs/ext4/ext4.ko\n"), 0o644)

	mods, err := resolveModules(dir, []string{"ext4", "bridge", "ahci", "tg3"})
	if err != nil {
		t.Fatal(err)
	}
	mods = markOnDemand(mods, []string{"ext4", "bridge"})
	got := map[string]bool{}
	for _, m := range mods {
		got[m.Name] = m.OnDemand
	}
	if want := map[string]bool{"bridge": false, "libata": true, "ahci": true, "tg3": true}; !reflect.DeepEqual(got, want) {
		t.Fatalf("on demand %v, want %v", got, want)
	}
	var list, aliases string
	for _, e := range moduleEntries("lib/modules/x", mods) {
		switch filepath.Base(e.Name) {
		case "plinth-modules.list":
			list = string(e.Data)
		case "plinth-modules.alias":
			aliases = string(e.Data)
		}
	}
	if !strings.Contains(list, "ahci kernel/ata/ahci.ko libata demand\n") || !strings.Contains(list, "bridge kernel/net/bridge.ko -\n") {
		t.Errorf("module list:\n%s", list)
	}
	if aliases != "pci:v*d*sv*sd*bc01sc06i01* ahci\npci:v000014E4d00001644sv*sd*bc*sc*i* tg3\n" {
		t.Errorf("alias table:\n%s", aliases)
	}

	fw := t.TempDir()
	os.MkdirAll(filepath.Join(fw, "tigon"), 0o755)
	os.WriteFile(filepath.Join(fw, "tigon/tg3_tso.bin"), []byte("fw"), 0o644)
	es, missing, err := pickFirmware(fw, mods)
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 1 || es[0].Name != "lib/firmware/tigon/tg3_tso.bin" || !reflect.DeepEqual(missing, map[string][]string{"tg3": {"tigon/tg3.bin"}}) {
		t.Errorf("firmware %+v, missing %v", es, missing)
	}
	if es, missing, _ := pickFirmware("", mods); len(es) != 0 || len(missing["tg3"]) != 2 {
		t.Errorf("without a firmware directory: %+v, missing %v", es, missing)
	}
}
