//go:build vmtest

package vmtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/slots"
	"github.com/plinth-os/plinth/image"
	"github.com/plinth-os/plinth/image/disk"
)

// TestInstall boots out/'s build from the network (kernel and initrd,
// the system image inside the initramfs) with a blank 2 GiB disk,
// installs plinth onto that disk through the host API, powers off, and
// boots a new machine from the disk under UEFI: slot A committed, the
// data partition's filesystem grown from the template to its partition
// and mounted at /var, a node ID of its own kept there.
func TestInstall(t *testing.T) {
	kernel, initrd := plinthImage(t)
	base := outManifest(t)
	if _, err := os.Stat(OVMFCode); err != nil {
		t.Skipf("needs OVMF (apt-get install ovmf): %v", err)
	}
	for _, tool := range []string{"dumpe2fs", "e2fsck", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (apt-get install e2fsprogs)", tool)
		}
	}
	bundle, err := os.ReadFile("../out/" + image.BundleName)
	if err != nil {
		t.Skipf("no signed bundle (run make image): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	dir := t.TempDir()
	target := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(target, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(target, 2<<30); err != nil {
		t.Fatal(err)
	}
	bundlePath, creds, err := ClusterFiles(dir, "vmtest")
	if err != nil {
		t.Fatal(err)
	}
	seg := NewSegment(t)
	started := time.Now()

	// The installer: booted from the network, the blank disk is its vda.
	cfg := ClusterNode(0, 1, kernel, initrd, seg, bundlePath)
	cfg.Name = "installer"
	cfg.Disks = []string{target}
	cfg.Memory = 1024
	vm := StartT(t, cfg)
	if _, err := vm.WaitFor(ctx, "plinth: ready in "); err != nil {
		t.Fatalf("%v\n%s", err, vm.ConsoleTail(40))
	}
	c, err := HostClient(vm, creds)
	if err != nil {
		t.Fatal(err)
	}
	installer, err := c.Host(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if installer.Slots.Booted != "" {
		t.Fatalf("the installer booted from slot %q, want a network boot", installer.Slots.Booted)
	}
	t.Logf("installer %s up after %.0fs (network boot, /var on tmpfs)", installer.ID, time.Since(started).Seconds())

	refused := func(disk string, body []byte, opts host.InstallOptions, status int, want string) {
		t.Helper()
		_, err := c.Install(ctx, disk, bytes.NewReader(body), opts)
		var apiErr *host.APIError
		if !errors.As(err, &apiErr) || apiErr.StatusCode != status || !strings.Contains(apiErr.Message, want) {
			t.Errorf("install to %s: %v, want %d saying %q", disk, err, status, want)
			return
		}
		t.Logf("install to %s refused: %d %s", disk, apiErr.StatusCode, apiErr.Message)
	}
	refused("/dev/vda1", nil, host.InstallOptions{}, http.StatusBadRequest, "its disks: /dev/vda (2.0 GiB)")
	refused("/dev/loop0", nil, host.InstallOptions{}, http.StatusBadRequest, "virtual device")
	refused("/dev/vda", bundle[:len(bundle)/2], host.InstallOptions{}, http.StatusBadRequest, "truncated")
	refused("/dev/vda", nil, host.InstallOptions{Cmdline: "quiet\ninit=/bin/sh"}, http.StatusBadRequest, "printable ASCII")

	at := time.Now()
	res, err := c.Install(ctx, "/dev/vda", bytes.NewReader(bundle), host.InstallOptions{Cmdline: "console=ttyS0 quiet"})
	if err != nil {
		t.Fatalf("install: %v\n%s", err, vm.ConsoleTail(20))
	}
	installTook := time.Since(at)
	t.Logf("installed %s on %s in %.1fs: %+v", res.Version, res.Disk, installTook.Seconds(), res.Partitions)
	if res.Version != base.Version || res.Disk != "/dev/vda" || res.SizeBytes != 2<<30 || len(res.Partitions) != 4 ||
		res.Partitions[3].Device != "/dev/vda4" || res.Partitions[3].Name != disk.DataName {
		t.Fatalf("install answer %+v", res)
	}
	// Now it is a plinth disk, no longer blank; forced, a second install
	// writes a disk of its own, every GUID new.
	refused("/dev/vda", nil, host.InstallOptions{}, http.StatusConflict, "not blank (it has partitions vda1, vda2, vda3, vda4)")
	first := res
	at = time.Now()
	if res, err = c.Install(ctx, "/dev/vda", bytes.NewReader(bundle), host.InstallOptions{Force: true, Cmdline: "console=ttyS0 quiet"}); err != nil {
		t.Fatalf("forced install: %v\n%s", err, vm.ConsoleTail(20))
	}
	t.Logf("installed again with force in %.1fs", time.Since(at).Seconds())
	for i, p := range res.Partitions {
		if p.GUID == first.Partitions[i].GUID {
			t.Errorf("partition %s has GUID %s in both installs", p.Name, p.GUID)
		}
	}

	if err := vm.Powerdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.WaitExit(ctx); err != nil {
		t.Fatal(err)
	}
	parts, err := disk.Read(target)
	if err != nil {
		t.Fatal(err)
	}
	data := parts[3]
	fs := fmt.Sprintf("%s?offset=%d", target, data.Start)
	before := superblock(t, fs)
	if before["Block count"] != "32768" || before["Filesystem volume name"] != disk.DataName {
		t.Errorf("data filesystem as installed: %s blocks, label %q; want the 32768-block template", before["Block count"], before["Filesystem volume name"])
	}

	// A new machine boots the disk under UEFI.
	cfg = ClusterNode(0, 1, "", "", seg, bundlePath)
	cfg.Name = "installed"
	cfg.Disks = []string{target}
	cfg.UEFI = true
	cfg.Memory = 1024
	at = time.Now()
	vm = StartT(t, cfg)
	if _, err := vm.WaitFor(ctx, "plinth: ready in "); err != nil {
		t.Fatalf("%v\n%s", err, vm.ConsoleTail(40))
	}
	t.Logf("installed disk booted to ready in %.0fs", time.Since(at).Seconds())
	if c, err = HostClient(vm, creds); err != nil {
		t.Fatal(err)
	}
	info, err := c.Host(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Version != base.Version || info.Slots.Booted != "a" || slotOf(info, "a").Entry != slots.EntryCommitted ||
		slotOf(info, "b").Version != "" || info.Slots.Upgrade != "committed" {
		t.Fatalf("first boot from the disk: version %s, slots %+v", info.Version, info.Slots)
	}
	grown := regexp.MustCompile(`plinth: data filesystem on /dev/vda4 grown from 128 MiB to (\d+) MiB in ([0-9.]+)s`).FindStringSubmatch(vm.Console())
	if grown == nil || grown[1] != fmt.Sprint(data.Size>>20) {
		t.Errorf("no grow to the %d MiB partition on the console:\n%s", data.Size>>20, vm.ConsoleTail(60))
	} else {
		t.Logf("data filesystem grown from 128 MiB to %s MiB in %ss at boot", grown[1], grown[2])
	}
	if !strings.Contains(vm.Console(), "init: data partition /dev/vda4 mounted at /var") {
		t.Errorf("data partition not mounted:\n%s", vm.ConsoleTail(60))
	}
	// A network-booted host's /var is a tmpfs: its ID is made at every
	// boot, and the installed disk starts with an empty data partition,
	// so the installed host is a new one.
	if info.ID == installer.ID {
		t.Errorf("the installed host has the installer's node ID %s", info.ID)
	}
	t.Logf("installed host %s (the installer was %s), slot a committed, %s", info.ID, installer.ID, info.Slots.Upgrade)

	if err := vm.Powerdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.WaitExit(ctx); err != nil {
		t.Fatal(err)
	}
	after := superblock(t, fs)
	if want := fmt.Sprint(data.Size / 4096); after["Block count"] != want {
		t.Errorf("data filesystem has %s blocks after the first boot, want %s (its partition)", after["Block count"], want)
	}
	if out, err := exec.Command("e2fsck", "-fn", fs).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn after the grow: %v\n%s", err, out)
	}
	id, err := exec.Command("debugfs", "-R", "cat /lib/plinth/host/node-id", fs).Output()
	if err != nil || strings.TrimSpace(string(id)) != info.ID {
		t.Errorf("node ID on the data partition: %q, %v; want %s", id, err, info.ID)
	}
	t.Logf("total %.0fs", time.Since(started).Seconds())
}

// superblock returns the fields dumpe2fs -h prints for the ext4
// filesystem at fs (path?offset=N).
func superblock(t *testing.T, fs string) map[string]string {
	t.Helper()
	out, err := exec.Command("dumpe2fs", "-h", fs).Output()
	if err != nil {
		t.Fatalf("dumpe2fs -h %s: %v", fs, err)
	}
	fields := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			fields[k] = strings.TrimSpace(v)
		}
	}
	return fields
}
