// Package image builds plinth's boot artifacts from a kernel package and the
// plinth binary: the kernel (vmlinuz), a squashfs system image with its
// dm-verity hash tree, an initramfs that carries init and the system image
// (for network and direct kernel boots), an initramfs without it (for disk
// slots, whose partition holds the system image), a manifest describing
// them, its signature and the upgrade bundle.
//
// Builds are reproducible (same inputs → same bytes) and need no loop
// devices, mounts or root: archives are written in Go and the squashfs by
// mksquashfs from a staging directory with normalised owners and times.
// The package does not boot anything; vm-tests does.
package image

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"

	"github.com/cavaliergopher/cpio"

	"github.com/plinth-os/plinth/image/verity"
	"github.com/plinth-os/plinth/init/kmod"
	"github.com/plinth-os/plinth/version"
)

// Config says what to build. Build it with DefaultConfig and adjust.
type Config struct {
	OutDir   string // where vmlinuz, initrd.img, system.img, manifest.json go
	CacheDir string // kernel package downloads (kept between builds)
	// Binary is the plinth binary (CLI, platform services), installed as
	// /usr/bin/plinth in the system image.
	Binary string
	// HostBinary is the layer-0 binary (plinth-host), installed as the
	// initramfs's /init: what runs before ready and at every container
	// start. Empty installs Binary there instead, and /usr/bin/plinth
	// links to it: one binary, larger and slower to start.
	HostBinary string
	// OneBinary ignores HostBinary: the flavour's size budget has no room
	// for both binaries (see Flavour).
	OneBinary bool
	Version   string // written to os-release and the manifest
	// Flavour names the kernel and drivers (see Flavours, UseFlavour).
	Flavour string
	Kernel  Kernel

	// InitramfsModules are loaded by stage 1 to mount the system image;
	// SystemModules by PID 1 from the system image. Dependencies are added;
	// modules the kernel has built in are left out.
	InitramfsModules []string
	SystemModules    []string
	// HardwareModules are drivers, in the system image, loaded at boot
	// only for the devices a machine has (coldplug).
	HardwareModules []string
	// SlotModules are in the initramfs for a disk boot, to read the slot's
	// partition through dm-verity: stage 1 loads the disk drivers among
	// them for the disks the machine has, and the rest (dm_verity).
	SlotModules []string
	// FirmwareDir, when set, holds firmware files (a copy of Debian's
	// firmware packages' /lib/firmware): those the drivers name in their
	// .modinfo go into the system image's /lib/firmware.
	FirmwareDir string

	// Compression of the initramfs part holding init and modules.
	Compression string
	// SquashfsCompression of the system image: lz4, zstd or none.
	SquashfsCompression string
	// CACerts is a PEM bundle installed as /etc/ssl/certs/ca-certificates.crt.
	CACerts string
	// Tini is the static init installed as /usr/lib/plinth/tini, which
	// hostd runs as every job's PID 1 (Debian package tini).
	Tini string
	// SystemdBoot is the EFI boot loader installed on disks, carried in
	// the system image for `plinth install` (Debian package
	// systemd-boot-efi).
	SystemdBoot string

	// SignKey is an ed25519 private key (PKCS #8 PEM); when set, the
	// manifest is signed into manifest.sig and the upgrade bundle made.
	SignKey string
	// TrustedKeys are files of public keys (trusted-keys format) that the
	// image trusts for upgrades and slot boots. Default: SignKey's own.
	TrustedKeys []string
	// Serial orders builds: an upgrade to a lower serial is a downgrade.
	// The Makefile uses the commit count.
	Serial uint64
	// TestFault builds an image that fails on purpose, for the upgrade
	// tests: FaultHostd (hostd exits at start) or FaultInitHang (PID 1
	// stops before its services, watchdog armed).
	TestFault string
}

// Values of Config.TestFault.
const (
	FaultHostd    = "hostd-fail"
	FaultInitHang = "init-hang"
)

// FaultPath is where a test image names its fault.
const FaultPath = "/usr/lib/plinth/test-fault"

// Where the running system finds its binaries: the initramfs's /init
// (the layer-0 binary) in a directory stage 1 binds over the image's
// empty HostBinaryDir (see init/stage1.go), and the platform binary.
const (
	HostBinaryDir      = "/usr/lib/plinth/bin"
	HostBinaryPath     = HostBinaryDir + "/plinth-host"
	PlatformBinaryPath = "/usr/bin/plinth"
)

// BootLoaderPath is where the system image carries the EFI boot loader.
const BootLoaderPath = "/usr/lib/plinth/systemd-bootx64.efi"

// DefaultConfig returns the configuration `make image` uses.
func DefaultConfig() Config {
	c := Config{
		OutDir:           "out",
		CacheDir:         ".cache/kernel",
		Version:          version.Version,
		InitramfsModules: []string{"loop", "squashfs"},
		SystemModules: []string{
			"ext4", "crc32c_generic", // the data partition (built into the cloud kernel), and its checksums
			"overlay",                 // container rootfs; also lets libcontainer seal its binary cheaply
			"bridge", "veth", "vxlan", // container networking
			"8021q", "bonding", // VLANs and bonds from the [network] config
			"vfat", "nls_cp437", "nls_ascii", // the EFI system partition: boot entries of disk slots
			"softdog", // PID 1's watchdog when the machine has no hardware one
		},
		Compression:         CompressLZ4,
		SquashfsCompression: "zstd",
		CACerts:             "/etc/ssl/certs/ca-certificates.crt",
		Tini:                "/usr/bin/tini-static",
		SystemdBoot:         "/usr/lib/systemd/boot/efi/systemd-bootx64.efi",
	}
	if err := c.UseFlavour(DefaultFlavour); err != nil {
		panic(err)
	}
	return c
}

// DefaultFlavour is the flavour of images built without --kernel: the one
// that boots real machines (disk and network boots). VMs boot faster on
// the cloud flavour, which the test and demo images use.
const DefaultFlavour = "generic"

// File describes one output file in the manifest.
type File struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Manifest describes a build. It has no timestamps, so identical inputs give
// an identical manifest.
type Manifest struct {
	Version          string   `json:"version"`
	Serial           uint64   `json:"serial"`
	Arch             string   `json:"arch"` // the kernel's machine name (uname -m)
	KernelPackage    string   `json:"kernel_package"`
	KernelVersion    string   `json:"kernel_version"`
	KernelRelease    string   `json:"kernel_release"`
	Compression      string   `json:"initramfs_compression"`
	SquashfsComp     string   `json:"system_image_compression"`
	Flavour          string   `json:"flavour,omitempty"`
	InitramfsModules []string `json:"initramfs_modules"`
	SystemModules    []string `json:"system_modules"`
	SlotModules      []string `json:"slot_modules"`
	// Firmware are the files in /lib/firmware; FirmwareMissing the files
	// drivers name that the build's firmware directory did not have, by
	// driver.
	Firmware        []string            `json:"firmware,omitempty"`
	FirmwareMissing map[string][]string `json:"firmware_missing,omitempty"`
	Files           []File              `json:"files"`
	// System is the dm-verity tree appended to system.img.
	System    verity.Params `json:"system_verity"`
	TestFault string        `json:"test_fault,omitempty"`
}

// File returns the named file's entry.
func (m *Manifest) File(name string) (File, bool) {
	for _, f := range m.Files {
		if f.Name == name {
			return f, true
		}
	}
	return File{}, false
}

// Arch is the machine name (uname -m) the builder's kernels are for.
const Arch = "x86_64"

// Output file names inside OutDir.
const (
	VmlinuzName = "vmlinuz"
	InitrdName  = "initrd.img"
	// SlotInitrdName is the initramfs of a disk slot: InitrdName without
	// the system image, which the slot's partition holds.
	SlotInitrdName = "initrd-slot.img"
	// SystemName is the squashfs system image, its dm-verity tree appended.
	SystemName   = "system.img"
	ManifestName = "manifest.json"
	BundleName   = "upgrade.bundle"
	// TrustedKeysName is a copy of the keys the image trusts.
	TrustedKeysName = "trusted-keys"
	// SystemImagePath is where the initramfs carries the system image.
	SystemImagePath = "/system.img"
)

// Build fetches the kernel and writes the boot artifacts into cfg.OutDir.
func Build(ctx context.Context, cfg Config) (*Manifest, error) {
	if cfg.Binary == "" {
		return nil, fmt.Errorf("image build: no plinth binary given")
	}
	if cfg.OneBinary {
		cfg.HostBinary = ""
	}
	if _, err := exec.LookPath("mksquashfs"); err != nil {
		return nil, fmt.Errorf("image build needs mksquashfs: apt-get install squashfs-tools")
	}
	switch cfg.TestFault {
	case "", FaultHostd, FaultInitHang:
	default:
		return nil, fmt.Errorf("unknown test fault %q (%s or %s)", cfg.TestFault, FaultHostd, FaultInitHang)
	}
	var key ed25519.PrivateKey
	if cfg.SignKey != "" {
		var err error
		if key, err = LoadKey(cfg.SignKey); err != nil {
			return nil, err
		}
	}
	trusted, err := trustedKeys(cfg.TrustedKeys, key)
	if err != nil {
		return nil, err
	}
	tree, err := FetchKernel(ctx, cfg.Kernel, cfg.CacheDir)
	if err != nil {
		return nil, err
	}
	early, err := resolveModules(tree.ModuleDir(), append(slices.Clone(cfg.InitramfsModules), cfg.SlotModules...))
	if err != nil {
		return nil, err
	}
	system, err := resolveModules(tree.ModuleDir(), slices.Concat(cfg.SystemModules, cfg.HardwareModules))
	if err != nil {
		return nil, err
	}
	// Drivers, and what only drivers need, load for devices, not at boot.
	system = markOnDemand(system, cfg.SystemModules)
	early = markOnDemand(early, slices.Concat(cfg.InitramfsModules, nonDrivers(cfg.SlotModules, cfg.HardwareModules)))
	firmware, missing, err := pickFirmware(cfg.FirmwareDir, system)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
		return nil, err
	}
	if err := copyFile(tree.Vmlinuz(), filepath.Join(cfg.OutDir, VmlinuzName)); err != nil {
		return nil, err
	}
	sysImg := filepath.Join(cfg.OutDir, SystemName)
	if err := buildSystemImage(ctx, cfg, tree, system, firmware, trusted, sysImg); err != nil {
		return nil, err
	}
	params, err := verity.Append(sysImg, nil)
	if err != nil {
		return nil, fmt.Errorf("system image verity tree: %w", err)
	}
	if err := buildInitramfs(cfg, tree, early, trusted, sysImg); err != nil {
		return nil, err
	}
	m := &Manifest{
		Version:       cfg.Version,
		Serial:        cfg.Serial,
		Arch:          Arch,
		KernelPackage: cfg.Kernel.Package,
		KernelVersion: cfg.Kernel.Version,
		KernelRelease: tree.Release(),
		Flavour:       cfg.Flavour,
		Compression:   cfg.Compression,
		SquashfsComp:  cfg.SquashfsCompression,
		System:        params,
		TestFault:     cfg.TestFault,
	}
	for _, mod := range early {
		m.InitramfsModules = append(m.InitramfsModules, mod.Name)
	}
	m.SlotModules = cfg.SlotModules
	for _, f := range firmware {
		m.Firmware = append(m.Firmware, f.Name)
	}
	m.FirmwareMissing = missing
	for _, mod := range system {
		m.SystemModules = append(m.SystemModules, mod.Name)
	}
	for _, name := range []string{VmlinuzName, InitrdName, SlotInitrdName, SystemName} {
		f, err := describe(filepath.Join(cfg.OutDir, name))
		if err != nil {
			return nil, err
		}
		m.Files = append(m.Files, f)
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	data = append(data, '\n')
	if err := os.WriteFile(filepath.Join(cfg.OutDir, ManifestName), data, 0o644); err != nil {
		return nil, err
	}
	// The keys the image trusts, for tools that check its signature.
	if err := os.WriteFile(filepath.Join(cfg.OutDir, TrustedKeysName), trusted, 0o644); err != nil {
		return nil, err
	}
	// A new manifest invalidates the old signature and bundle.
	os.Remove(filepath.Join(cfg.OutDir, SignatureName))
	os.Remove(filepath.Join(cfg.OutDir, BundleName))
	if key == nil {
		return m, nil
	}
	sig, err := SignManifest(data, nil, key)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(cfg.OutDir, SignatureName), sig, 0o644); err != nil {
		return nil, err
	}
	return m, WriteBundle(cfg.OutDir, filepath.Join(cfg.OutDir, BundleName))
}

// nonDrivers are the names of mods that are not among drivers.
func nonDrivers(mods, drivers []string) []string {
	var out []string
	for _, m := range mods {
		if !slices.Contains(drivers, m) {
			out = append(out, m)
		}
	}
	return out
}

// trustedKeys returns the trusted-keys file an image carries: the keys of
// files, and the signing key's own when files name none.
func trustedKeys(files []string, key ed25519.PrivateKey) ([]byte, error) {
	var out bytes.Buffer
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("trusted keys: %w", err)
		}
		keys, err := ParseTrustedKeys(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		for _, k := range keys {
			fmt.Fprintln(&out, FormatKey(k, filepath.Base(f)))
		}
	}
	if out.Len() == 0 && key != nil {
		fmt.Fprintln(&out, FormatKey(key.Public().(ed25519.PublicKey), "signing key"))
	}
	return out.Bytes(), nil
}

// buildSystemImage stages the root tree and packs it with mksquashfs.
func buildSystemImage(ctx context.Context, cfg Config, tree KernelTree, mods []moduleFile, firmware []entry, trusted []byte, dst string) error {
	stage, err := os.MkdirTemp("", "plinth-system-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	// The image's / gets the stage's mode: 0755, not MkdirTemp's 0700,
	// which kept every unprivileged process (a user-namespaced job's
	// root among them) from walking the root filesystem.
	if err := os.Chmod(stage, 0o755); err != nil {
		return err
	}

	modDir := "lib/modules/" + tree.Release()
	entries := []entry{
		// Empty: stage 1 binds a directory holding the initramfs's /init
		// over it, so the image does not carry a second copy of the
		// binary (see init/stage1.go).
		{Name: HostBinaryDir[1:], Mode: cpio.TypeDir | 0o755},
		{Name: "sbin/init", Link: HostBinaryPath},
		{Name: "etc/os-release", Mode: 0o644, Data: osRelease(cfg.Version)},
		{Name: "etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0:root:/root:/usr/bin/plinth\nnobody:x:65534:65534:nobody:/nonexistent:/usr/bin/plinth\n")},
		{Name: "etc/group", Mode: 0o644, Data: []byte("root:x:0:\nnogroup:x:65534:\n")},
		{Name: "etc/resolv.conf", Link: "/run/plinth/resolv.conf"}, // written by netd
		{Name: "etc/mtab", Link: "/proc/self/mounts"},
		{Name: "etc/ssl/certs/ca-certificates.crt", Mode: 0o644, Src: cfg.CACerts},
		{Name: "usr/lib/plinth/tini", Mode: 0o755, Src: cfg.Tini},
	}
	if cfg.HostBinary == "" {
		entries = append(entries, entry{Name: PlatformBinaryPath[1:], Link: HostBinaryPath})
	} else {
		entries = append(entries, entry{Name: PlatformBinaryPath[1:], Mode: 0o755, Src: cfg.Binary})
	}
	if len(trusted) > 0 {
		entries = append(entries, entry{Name: TrustedKeysPath[1:], Mode: 0o644, Data: trusted})
	}
	if _, err := os.Stat(cfg.SystemdBoot); err != nil {
		return fmt.Errorf("EFI boot loader %s: %w (apt-get install systemd-boot-efi)", cfg.SystemdBoot, err)
	}
	entries = append(entries, entry{Name: BootLoaderPath[1:], Mode: 0o644, Src: cfg.SystemdBoot})
	if cfg.TestFault != "" {
		entries = append(entries, entry{Name: FaultPath[1:], Mode: 0o644, Data: []byte(cfg.TestFault + "\n")})
	}
	for _, d := range []string{"dev", "proc", "sys", "run", "tmp", "var", "root"} {
		entries = append(entries, entry{Name: d, Mode: cpio.TypeDir | 0o755})
	}
	entries = append(entries, moduleEntries(modDir, mods)...)
	entries = append(entries, firmware...)
	entries = append(entries, dirsFor(entryNames(firmware))...)
	if _, err := os.Stat(cfg.Tini); err != nil {
		return fmt.Errorf("job init %s: %w (apt-get install tini)", cfg.Tini, err)
	}
	if _, err := os.Stat(cfg.CACerts); err != nil {
		return fmt.Errorf("CA certificates %s: %w (apt-get install ca-certificates)", cfg.CACerts, err)
	}
	if err := stageTree(stage, entries); err != nil {
		return err
	}
	// Made in place: staged through an entry it would be read into memory
	// and written back without its holes.
	if err := BuildDataTemplate(ctx, filepath.Join(stage, DataTemplatePath[1:])); err != nil {
		return err
	}
	os.Remove(dst)
	// -all-time/-mkfs-time/-all-root/-no-xattrs make the image independent of
	// the staging directory's metadata; 4.5's default -reproducible fixes
	// the block order even with several compressor threads.
	args := []string{stage, dst, "-noappend", "-quiet", "-no-progress",
		"-all-root", "-no-xattrs", "-all-time", "0", "-mkfs-time", "0",
		"-processors", strconv.Itoa(runtime.NumCPU())}
	switch cfg.SquashfsCompression {
	case "none":
		args = append(args, "-noI", "-noD", "-noF", "-noX")
	case "lz4":
		args = append(args, "-comp", "lz4", "-Xhc")
	case "zstd":
		args = append(args, "-comp", "zstd", "-Xcompression-level", "15")
	default:
		return fmt.Errorf("unknown system image compression %q (use lz4, zstd or none)", cfg.SquashfsCompression)
	}
	cmd := exec.CommandContext(ctx, "mksquashfs", args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("mksquashfs: %w\n%s", err, out)
	}
	return nil
}

// buildInitramfs writes the slot initramfs (init, the early modules and
// the trusted keys, compressed) and the full one: a first archive with
// the system image, stored (squashfs is compressed already, and the guest
// CPU that unpacks the initramfs is slow under TCG), then the slot one.
// The compressed archive goes last because the kernel's LZ4 (legacy
// format) decoder cannot tell where its stream ends and consumes
// everything after it; the kernel reads concatenated archives as one.
func buildInitramfs(cfg Config, tree KernelTree, mods []moduleFile, trusted []byte, sysImg string) error {
	modDir := "lib/modules/" + tree.Release()
	entries := []entry{{Name: "init", Mode: 0o755, Src: cmp.Or(cfg.HostBinary, cfg.Binary)}}
	for _, d := range []string{"dev", "proc", "sys", "newroot"} {
		entries = append(entries, entry{Name: d, Mode: cpio.TypeDir | 0o755})
	}
	if len(trusted) > 0 {
		entries = append(entries, entry{Name: TrustedKeysPath[1:], Mode: 0o644, Data: trusted})
		entries = append(entries, dirsFor([]string{TrustedKeysPath[1:]})...)
	}
	entries = append(entries, moduleEntries(modDir, mods)...)
	var slot bytes.Buffer
	zw, err := compressWriter(&slot, cfg.Compression)
	if err != nil {
		return err
	}
	if err := writeCPIO(zw, entries); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	if err := zw.Close(); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(cfg.OutDir, SlotInitrdName), slot.Bytes(), 0o644); err != nil {
		return err
	}

	var full bytes.Buffer
	img := []entry{{Name: SystemImagePath[1:], Mode: 0o444, Src: sysImg}}
	if err := writeCPIO(&full, img); err != nil {
		return fmt.Errorf("initramfs system image: %w", err)
	}
	full.Write(slot.Bytes())
	return os.WriteFile(filepath.Join(cfg.OutDir, InitrdName), full.Bytes(), 0o644)
}

// moduleEntries returns the module files (decompressed), their load list
// and the alias table of the drivers among them.
func moduleEntries(modDir string, mods []moduleFile) []entry {
	var list, aliases bytes.Buffer
	var es []entry
	var names []string
	plain := make([]kmod.Module, 0, len(mods))
	for _, m := range mods {
		plain = append(plain, m.Module)
		es = append(es, entry{Name: modDir + "/" + m.Path, Mode: 0o644, Src: m.src})
		names = append(names, modDir+"/"+m.Path)
		if m.OnDemand {
			for _, a := range m.aliases {
				kmod.FormatAliases(&aliases, []kmod.Alias{{Pattern: a, Module: m.Name}})
			}
		}
	}
	kmod.FormatList(&list, plain)
	es = append(es, entry{Name: modDir + "/" + kmod.ListName, Mode: 0o644, Data: list.Bytes()},
		entry{Name: modDir + "/" + kmod.AliasName, Mode: 0o644, Data: aliases.Bytes()})
	names = append(names, modDir+"/"+kmod.ListName, modDir+"/"+kmod.AliasName)
	return append(es, dirsFor(names)...)
}

// stageTree materialises entries under root with exact modes.
func stageTree(root string, entries []entry) error {
	for _, e := range dirsFor(entryNames(entries)) {
		if err := os.MkdirAll(filepath.Join(root, e.Name), 0o755); err != nil {
			return err
		}
	}
	for _, e := range entries {
		p := filepath.Join(root, e.Name)
		var err error
		switch {
		case e.Link != "":
			err = os.Symlink(e.Link, p)
		case e.isDir():
			err = os.MkdirAll(p, 0o755)
		case e.Src != "":
			var data []byte
			if data, err = readDecompressed(e.Src); err == nil {
				err = os.WriteFile(p, data, 0o644)
			}
		default:
			err = os.WriteFile(p, e.Data, 0o644)
		}
		if err != nil {
			return fmt.Errorf("stage %s: %w", e.Name, err)
		}
		if e.Link == "" {
			if err := os.Chmod(p, os.FileMode(e.Mode&cpio.ModePerm)); err != nil {
				return err
			}
		}
	}
	return nil
}

func entryNames(es []entry) []string {
	names := make([]string, len(es))
	for i, e := range es {
		names[i] = e.Name
	}
	return names
}

func osRelease(v string) []byte {
	return fmt.Appendf(nil, "NAME=plinth\nID=plinth\nVERSION_ID=%s\nPRETTY_NAME=\"plinth %s\"\nHOME_URL=\"https://github.com/plinth-os/plinth\"\n", v, v)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return out.Close()
}

func describe(path string) (File, error) {
	f, err := os.Open(path)
	if err != nil {
		return File{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return File{}, fmt.Errorf("hash %s: %w", path, err)
	}
	return File{Name: filepath.Base(path), Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}
