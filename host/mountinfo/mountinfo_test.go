package mountinfo

import (
	"os"
	"slices"
	"testing"
)

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		"/var":               "/var",
		`/mnt/a\040b`:        "/mnt/a b",
		`/x\011y\134z`:       "/x\ty\\z",
		`/trailing\04`:       `/trailing\04`,
		`/not\999octal`:      `/not\999octal`,
		`\040\040`:           "  ",
		`/end\040`:           "/end ",
		`/short\0`:           `/short\0`,
		`/ok\1341`:           `/ok\1`,
		`/high\377`:          "/high\xff",
		`/over\400`:          `/over\400`,
		`/multi\040a\040b/c`: "/multi a b/c",
	} {
		if got := Unescape(in); got != want {
			t.Errorf("Unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRead(t *testing.T) {
	path := t.TempDir() + "/mountinfo"
	data := "22 1 254:1 / / ro,relatime shared:1 - squashfs /dev/dm-0 ro\n" +
		"not a mountinfo line\n" +
		"30 22 0:21 / /run rw,nosuid shared:2 master:1 - tmpfs tmpfs rw,mode=755\n" +
		`31 22 254:4 / /boot/my\040esp rw - vfat /dev/vda1 rw` + "\n"
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	ms, err := Read(path)
	want := []Mount{
		{Dev: "254:1", Target: "/", Options: "ro,relatime", FSType: "squashfs", Source: "/dev/dm-0"},
		{Dev: "0:21", Target: "/run", Options: "rw,nosuid", FSType: "tmpfs", Source: "tmpfs"},
		{Dev: "254:4", Target: "/boot/my esp", Options: "rw", FSType: "vfat", Source: "/dev/vda1"},
	}
	if err != nil || !slices.Equal(ms, want) {
		t.Errorf("Read = %+v, %v; want %+v", ms, err, want)
	}
	if !ms[0].ReadOnly() || ms[1].ReadOnly() {
		t.Errorf("ReadOnly: %v, %v; want true, false", ms[0].ReadOnly(), ms[1].ReadOnly())
	}
	if _, err := Read(path + ".missing"); err == nil {
		t.Error("Read of a missing file succeeded")
	}
	// The running process's own table has its root.
	self, err := Read(Self)
	if err != nil || !slices.ContainsFunc(self, func(m Mount) bool { return m.Target == "/" }) {
		t.Errorf("Read(Self) = %d mounts, %v; want one at /", len(self), err)
	}
}
