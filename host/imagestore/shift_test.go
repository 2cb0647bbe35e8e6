package imagestore

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestShiftTree(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (chown, mknod)")
	}
	src, dst := t.TempDir(), filepath.Join(t.TempDir(), "copy")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "bin"), 0o755))
	must(os.WriteFile(filepath.Join(src, "bin", "su"), []byte("setuid"), 0o755))
	must(unix.Chmod(filepath.Join(src, "bin", "su"), 0o4755))
	must(os.Link(filepath.Join(src, "bin", "su"), filepath.Join(src, "bin", "su2")))
	must(os.Symlink("su", filepath.Join(src, "bin", "link")))
	must(os.WriteFile(filepath.Join(src, "owned"), []byte("x"), 0o600))
	must(os.Lchown(filepath.Join(src, "owned"), 1000, 100))
	must(os.WriteFile(filepath.Join(src, "far"), nil, 0o644))
	must(os.Lchown(filepath.Join(src, "far"), 70000, 70000))      // past the range
	must(unix.Mknod(filepath.Join(src, "gone"), unix.S_IFCHR, 0)) // an overlayfs whiteout
	must(os.Mkdir(filepath.Join(src, "opaque"), 0o750))
	if err := unix.Lsetxattr(filepath.Join(src, "opaque"), "trusted.overlay.opaque", []byte("y"), 0); err != nil {
		t.Skipf("no trusted xattrs here: %v", err)
	}

	const root, size = 1048576, 65536
	must(shiftTree(src, dst, root, size))
	stat := func(rel string) *syscall.Stat_t {
		t.Helper()
		var st syscall.Stat_t
		must(syscall.Lstat(filepath.Join(dst, rel), &st))
		return &st
	}
	for rel, want := range map[string][2]uint32{
		".": {root, root}, "bin/su": {root, root}, "bin/link": {root, root},
		"owned": {root + 1000, root + 100}, "far": {root + 65534, root + 65534}, "gone": {root, root},
	} {
		if st := stat(rel); st.Uid != want[0] || st.Gid != want[1] {
			t.Errorf("%s owned by %d:%d, want %d:%d", rel, st.Uid, st.Gid, want[0], want[1])
		}
	}
	if st := stat("bin/su"); st.Mode&0o7777 != 0o4755 || st.Nlink != 2 || stat("bin/su2").Ino != st.Ino {
		t.Errorf("bin/su mode %o, %d links: want the set-ID bit kept after the chown and the hard link kept", st.Mode&0o7777, st.Nlink)
	}
	if to, err := os.Readlink(filepath.Join(dst, "bin", "link")); err != nil || to != "su" {
		t.Errorf("symlink to %q, %v", to, err)
	}
	if st := stat("gone"); st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("whiteout is mode %o rdev %d", st.Mode, st.Rdev)
	}
	val := make([]byte, 8)
	if n, err := unix.Lgetxattr(filepath.Join(dst, "opaque"), "trusted.overlay.opaque", val); err != nil || string(val[:n]) != "y" {
		t.Errorf("opaque xattr %q, %v", val[:n], err)
	}
	if st := stat("opaque"); st.Mode&0o7777 != 0o750 {
		t.Errorf("opaque dir mode %o, want 750", st.Mode&0o7777)
	}
	if data, err := os.ReadFile(filepath.Join(dst, "bin", "su")); err != nil || string(data) != "setuid" {
		t.Errorf("contents %q, %v", data, err)
	}
}
