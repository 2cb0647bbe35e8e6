package boot

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/plinth-os/plinth/image"
)

// TestGrowData puts the image's data template on a 1 GiB loop device,
// mounts it and grows it as PID 1 does. The grow needs CAP_SYS_RESOURCE;
// where root lacks it (some containers) the test stops after checking
// what it read, and the VM test covers the grow.
func TestGrowData(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a loop device and a mount")
	}
	for _, tool := range []string{"mkfs.ext4", "losetup", "e2fsck"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	dir := t.TempDir()
	tmpl := filepath.Join(dir, "data.ext4")
	if err := image.BuildDataTemplate(context.Background(), tmpl); err != nil {
		t.Fatal(err)
	}
	blocks, bs, err := extGeometry(tmpl)
	if err != nil || blocks*uint64(bs) != image.DataTemplateSize || bs != 4096 {
		t.Fatalf("template geometry: %d blocks of %d bytes, %v", blocks, bs, err)
	}
	data, err := os.ReadFile(tmpl)
	if err != nil {
		t.Fatal(err)
	}
	backing := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(backing, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(backing, 1<<30); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "-f", "--show", backing).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	if err := unix.Mount(dev, mnt, "ext4", 0, ""); err != nil {
		t.Fatalf("mount %s: %v", dev, err)
	}
	mounted := true
	unmount := func() {
		if mounted {
			if err := unix.Unmount(mnt, 0); err != nil {
				t.Errorf("unmount %s: %v", mnt, err)
			}
			mounted = false
		}
	}
	t.Cleanup(unmount)

	start := time.Now()
	from, to, err := growData(dev, mnt)
	if from != image.DataTemplateSize {
		t.Errorf("grow from %d bytes, want the template's %d", from, image.DataTemplateSize)
	}
	if errors.Is(err, unix.EPERM) {
		t.Skipf("the kernel refused the grow (%v): root here lacks CAP_SYS_RESOURCE", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("grown from %d to %d MiB in %v", from>>20, to>>20, time.Since(start))
	if to != 1<<30 {
		t.Errorf("grown to %d bytes, want 1 GiB", to)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(mnt, &st); err != nil {
		t.Fatal(err)
	}
	if total := int64(st.Blocks) * st.Bsize; total < 900<<20 {
		t.Errorf("statfs after the grow: %d MiB", total>>20)
	}
	if f2, t2, err := growData(dev, mnt); err != nil || f2 != to || t2 != to {
		t.Errorf("second grow: %d → %d, %v; want nothing done", f2, t2, err)
	}
	unmount()
	if out, err := exec.Command("e2fsck", "-fn", dev).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn after the grow: %v\n%s", err, out)
	}
}
