//go:build vmtest

package vmtest

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	boot "github.com/plinth-os/plinth/init"
)

// plinthImage returns the built image's kernel and initrd (make image), or
// skips the test.
func plinthImage(t testing.TB) (kernel, initrd string) {
	t.Helper()
	return builtImage(t, "PLINTH_IMAGE_DIR", "../out", "make image")
}

// builtImage returns the kernel and initrd of the image in the directory
// env names (default dir), or skips the test, saying to run target.
func builtImage(t testing.TB, env, dir, target string) (kernel, initrd string) {
	t.Helper()
	testKernel(t) // root and QEMU checks
	if d := os.Getenv(env); d != "" {
		dir = d
	}
	kernel, initrd = filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd.img")
	for _, f := range []string{kernel, initrd} {
		if _, err := os.Stat(f); err != nil {
			t.Skipf("no image in %s (run %s): %v", dir, target, err)
		}
	}
	return kernel, initrd
}

// TestPlinthBootSmoke boots the image with the self-check, asserts what the
// report says about the running system, then powers off through ACPI and
// asserts an ordered, clean shutdown.
func TestPlinthBootSmoke(t *testing.T) {
	kernel, initrd := plinthImage(t)
	vm := StartT(t, Config{Name: "smoke", Kernel: kernel, Initrd: initrd, Cmdline: "plinth.selftest=1",
		NICs:          []NIC{{User: &UserNet{}}},
		MachineConfig: []byte("hostname = \"smoke-1\"\n[boot]\nshutdown_timeout = \"5s\"\n")})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := vm.WaitFor(ctx, "plinth: ready in "); err != nil {
		t.Fatal(err)
	}
	// The report comes through the supervisor's copy of the service's
	// output, which may reach the console just after init's own ready
	// line.
	for !strings.Contains(vm.Console(), "plinth-selftest:") && ctx.Err() == nil {
		time.Sleep(100 * time.Millisecond)
	}
	r, err := boot.ParseSelftest(vm.Console())
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK || len(r.Problems) > 0 {
		t.Errorf("self-check problems: %v", r.Problems)
	}
	// Stage 2 continues in the stage-1 process, whose binary must be the
	// system image's.
	if r.PID1Exe != "/init" || !r.PID1IsImage {
		t.Errorf("PID 1 is %q, same bytes as /usr/bin/plinth: %v", r.PID1Exe, r.PID1IsImage)
	}
	if m := r.Mounts["/"]; m.FSType != "squashfs" || !m.ReadOnly {
		t.Errorf("/ = %+v, want read-only squashfs", m)
	}
	for _, d := range []string{"/run", "/var", "/tmp"} {
		if r.Mounts[d].FSType != "tmpfs" {
			t.Errorf("%s = %+v, want tmpfs", d, r.Mounts[d])
		}
	}
	if r.Mounts["/sys/fs/cgroup"].FSType != "cgroup2" {
		t.Errorf("cgroup2 not mounted: %+v", r.Mounts)
	}
	for _, m := range []string{"loop", "squashfs", "virtio_net", "overlay", "qemu_fw_cfg", "button", "evdev"} {
		if !slices.Contains(r.Modules, m) {
			t.Errorf("module %s not loaded; loaded: %v", m, r.Modules)
		}
	}
	if r.Hostname != "smoke-1" || r.ConfigSource != "fw_cfg:opt/plinth/config" {
		t.Errorf("hostname %q from %q, want smoke-1 from fw_cfg", r.Hostname, r.ConfigSource)
	}

	if err := vm.Powerdown(ctx); err != nil {
		t.Fatal(err)
	}
	code, err := vm.WaitExit(ctx)
	if err != nil || code != 0 {
		t.Fatalf("qemu exit %d, %v", code, err)
	}
	con := vm.Console()
	for _, want := range []string{"shutdown: power off requested (ACPI power button)", "shutdown: services stopped", "shutdown: complete, power off", "reboot: Power down"} {
		if !strings.Contains(con, want) {
			t.Errorf("console lacks %q", want)
		}
	}
	if ev, err := vm.WaitEvent(ctx, "SHUTDOWN"); err != nil || ev.Reason() != "guest-shutdown" {
		t.Errorf("SHUTDOWN event %+v (%v), want reason guest-shutdown", ev, err)
	}
}

// TestPlinthBadConfigMaintenance: an invalid machine config must not crash
// or loop: the console names file:line and key, and the machine stays up in
// maintenance mode until powered off.
func TestPlinthBadConfigMaintenance(t *testing.T) {
	kernel, initrd := plinthImage(t)
	vm := StartT(t, Config{Name: "badcfg", Kernel: kernel, Initrd: initrd,
		MachineConfig: []byte("hostname = \"ok\"\n[boot]\npanik = \"hold\"\n")})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	line, err := vm.WaitFor(ctx, "boot.panik")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(line, "fw_cfg:opt/plinth/config:3:") {
		t.Errorf("error line %q lacks file:line", line)
	}
	if _, err := vm.WaitFor(ctx, "maintenance mode"); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(vm.Console(), "ready in") {
		t.Error("machine reported ready with an invalid config")
	}
	if err := vm.Powerdown(ctx); err != nil {
		t.Fatal(err)
	}
	if code, err := vm.WaitExit(ctx); err != nil || code != 0 {
		t.Fatalf("qemu exit %d, %v", code, err)
	}
	if !strings.Contains(vm.Console(), "shutdown: complete, power off") {
		t.Error("no ordered power off from maintenance mode")
	}
}

// TestPlinthPanicReboots: a panic in PID 1 is logged and followed by a
// reboot after the countdown (QEMU runs with -no-reboot, so it exits with
// reason guest-reset) instead of a hung machine.
func TestPlinthPanicReboots(t *testing.T) {
	kernel, initrd := plinthImage(t)
	vm := StartT(t, Config{Name: "panic", Kernel: kernel, Initrd: initrd, Cmdline: "plinth.debug=panic",
		MachineConfig: []byte("[boot]\npanic_countdown = \"1s\"\n")})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := vm.WaitFor(ctx, "plinth: PANIC: fault injected"); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.WaitFor(ctx, "rebooting in 1s"); err != nil {
		t.Fatal(err)
	}
	if ev, err := vm.WaitEvent(ctx, "SHUTDOWN"); err != nil || ev.Reason() != "guest-reset" {
		t.Fatalf("SHUTDOWN event %+v (%v), want guest-reset", ev, err)
	}
}

// TestPlinthPowerButtonAtReady presses the power button the moment the
// machine says ready, with no services to slow the boot down: the press must
// not be lost (init opens the button device in the background and must wait
// for it before ready). Three boots, because a lost press was a race.
func TestPlinthPowerButtonAtReady(t *testing.T) {
	kernel, initrd := plinthImage(t)
	for i := range 3 {
		vm := StartT(t, Config{Name: "button", Kernel: kernel, Initrd: initrd})
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		if _, err := vm.WaitFor(ctx, "plinth: ready in "); err != nil {
			cancel()
			t.Fatal(err)
		}
		if err := vm.Powerdown(ctx); err != nil {
			cancel()
			t.Fatal(err)
		}
		// A lost press leaves the machine running; 30 s is ample for a
		// shutdown that takes well under a second.
		exitCtx, exitCancel := context.WithTimeout(ctx, 30*time.Second)
		code, err := vm.WaitExit(exitCtx)
		exitCancel()
		cancel()
		if err != nil || code != 0 {
			t.Fatalf("boot %d: power button press at ready: qemu exit %d, %v", i+1, code, err)
		}
		vm.Close()
	}
}
