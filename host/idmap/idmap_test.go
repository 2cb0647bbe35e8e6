package idmap

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestMountShiftsOwners(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root")
	}
	src, target := t.TempDir(), t.TempDir()
	file := filepath.Join(src, "f")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chown(file, 0, 0)
	other := filepath.Join(src, "other")
	os.WriteFile(other, nil, 0o644)
	os.Chown(other, 1000, 1001)

	var ns Namespaces
	r := Range{Host: 1 << 20, Size: 65536}
	userns, err := ns.Get(r)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := ns.Get(r); err != nil || again != userns {
		t.Errorf("second Get of the same range: %v, %v; want the same namespace", again, err)
	}
	if err := Mount(src, target, userns, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(target, unix.MNT_DETACH) })

	for name, want := range map[string][2]uint32{"f": {1 << 20, 1 << 20}, "other": {1<<20 + 1000, 1<<20 + 1001}} {
		st, err := os.Stat(filepath.Join(target, name))
		if err != nil {
			t.Fatal(err)
		}
		sys := st.Sys().(*syscall.Stat_t)
		if sys.Uid != want[0] || sys.Gid != want[1] {
			t.Errorf("%s through the idmapped mount: owner %d:%d, want %d:%d", name, sys.Uid, sys.Gid, want[0], want[1])
		}
	}
	// On disk nothing changed.
	if st, _ := os.Stat(file); st.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Errorf("the source's owner changed to %d", st.Sys().(*syscall.Stat_t).Uid)
	}
	if err := os.WriteFile(filepath.Join(target, "new"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("write through a read-only idmapped mount: %v, want EROFS", err)
	}
}
