// Package vmtest runs plinth (or any Linux kernel and initramfs) in QEMU for
// tests and for humans: it builds the QEMU command line from a Config,
// reads the serial console, speaks QMP, wires VMs together on private
// networks, and writes a busybox-only initramfs that serves as the boot
// baseline.
//
// QEMU here runs under TCG (no KVM), so a boot takes seconds: waits take a
// context with a deadline sized for a guest CPU 20-50 times slower than the
// host.
//
// Network traffic of a VM never leaves the host's loopback or a network
// namespace that the harness created: user networking forwards only from
// 127.0.0.1, and VMs sharing a Segment run inside the segment's own
// namespace.
//
// The package does not build images or read flags and environment
// variables; its callers (tests, `plinth vm run`) do.
//
// The tests that boot VMs need root, QEMU, busybox-static and a kernel, and
// are behind the build tag vmtest, so that `go test ./...` stays fast:
//
//	go test -tags vmtest ./vm-tests/
//
// PLINTH_TEST_KERNEL names the kernel (default
// /tmp/k/x/boot/vmlinuz-6.1.0-56-cloud-amd64); its modules are looked up
// in ../lib/modules/<version> next to its boot directory, as `dpkg -x`
// leaves them. Without a kernel the tests skip.
package vmtest
