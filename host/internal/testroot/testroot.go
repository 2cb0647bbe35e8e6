// Package testroot makes root filesystems for the tests that start real
// containers: Debian's static busybox and links to its applets.
package testroot

import (
	"os"
	"path/filepath"
	"testing"
)

// Busybox returns a new root filesystem holding /bin/busybox, a link to
// it for each applet, and empty /proc, /dev, /sys, /tmp and /etc. It
// skips the test unless it runs as root (containers need namespaces and
// cgroups) with a static busybox at /bin/busybox.
func Busybox(t testing.TB, applets ...string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (namespaces, cgroups)")
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skipf("needs a static busybox (apt-get install busybox-static): %v", err)
	}
	root := t.TempDir()
	for _, d := range []string{"bin", "proc", "dev", "sys", "tmp", "etc"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "bin/busybox"), bb, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, applet := range applets {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", applet)); err != nil {
			t.Fatal(err)
		}
	}
	return root
}
