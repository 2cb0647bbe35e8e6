package host

import (
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// fakeMachine is a sysfs, a mount table and disk contents in a temporary
// directory, for diskProbe.
type fakeMachine struct {
	t      *testing.T
	root   string
	sys    string
	mounts []string
	devs   map[string]uint64 // /dev/NAME → device number
	files  map[string]string // /dev/NAME → the file with its bytes
}

func newFakeMachine(t *testing.T) *fakeMachine {
	root := t.TempDir()
	return &fakeMachine{t: t, root: root, sys: filepath.Join(root, "sys"),
		devs: map[string]uint64{}, files: map[string]string{}}
}

func (m *fakeMachine) probe() diskProbe {
	info := filepath.Join(m.root, "mountinfo")
	if err := os.WriteFile(info, []byte(strings.Join(m.mounts, "")), 0o644); err != nil {
		m.t.Fatal(err)
	}
	return diskProbe{
		sys:       m.sys,
		mountinfo: info,
		devNum: func(path string) (uint64, error) {
			if dev, ok := m.devs[path]; ok {
				return dev, nil
			}
			if _, ok := m.files[path]; ok {
				return 0, errNotBlock
			}
			return 0, &fs.PathError{Op: "stat", Path: path, Err: fs.ErrNotExist}
		},
		open: func(path string) (*os.File, error) { return os.Open(m.files[path]) },
	}
}

// device makes a block device's sysfs directory under parent (relative
// to sys), its /sys/dev/block link and its node.
func (m *fakeMachine) device(parent, name string, major, minor uint32, size int64) string {
	m.t.Helper()
	dir := filepath.Join(m.sys, parent, name)
	for _, d := range []string{dir, filepath.Join(dir, "holders"), filepath.Join(m.sys, "dev/block")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			m.t.Fatal(err)
		}
	}
	m.write(dir, "size", fmt.Sprint(size/512))
	m.write(dir, "ro", "0")
	m.link(dir, filepath.Join(m.sys, "dev/block", fmt.Sprintf("%d:%d", major, minor)))
	m.devs["/dev/"+name] = unix.Mkdev(major, minor)
	return dir
}

// disk adds a virtio disk of size bytes, blank.
func (m *fakeMachine) disk(name string, minor uint32, size int64) string {
	dir := m.device("devices/pci0000:00/virtio"+name+"/block", name, 254, minor, size)
	os.Mkdir(filepath.Join(dir, "device"), 0o755)
	os.MkdirAll(filepath.Join(m.sys, "block"), 0o755)
	m.link(dir, filepath.Join(m.sys, "block", name))
	f, err := os.Create(filepath.Join(m.root, name+".raw"))
	if err != nil {
		m.t.Fatal(err)
	}
	f.Truncate(size)
	f.Close()
	m.files["/dev/"+name] = f.Name()
	return dir
}

func (m *fakeMachine) partition(diskDir string, i int, minor uint32) string {
	name := filepath.Base(diskDir) + fmt.Sprint(i)
	rel, _ := filepath.Rel(m.sys, diskDir)
	dir := m.device(rel, name, 254, minor, 64<<20)
	m.write(dir, "partition", fmt.Sprint(i))
	return dir
}

// dm adds a device-mapper device on the given devices, as dm-verity
// stacks on a slot.
func (m *fakeMachine) dm(minor uint32, on ...string) {
	name := fmt.Sprintf("dm-%d", minor)
	dir := m.device("devices/virtual/block", name, 253, minor, 64<<20)
	os.Mkdir(filepath.Join(dir, "slaves"), 0o755)
	for _, d := range on {
		m.link(d, filepath.Join(dir, "slaves", filepath.Base(d)))
		os.WriteFile(filepath.Join(d, "holders", name), nil, 0o644)
	}
}

func (m *fakeMachine) mount(major, minor uint32, at string) {
	m.mounts = append(m.mounts, fmt.Sprintf("%d 1 %d:%d / %s rw,relatime shared:1 - ext4 /dev/x rw\n", 30+len(m.mounts), major, minor, at))
}

func (m *fakeMachine) write(dir, name, value string) {
	if err := os.WriteFile(filepath.Join(dir, name), []byte(value+"\n"), 0o644); err != nil {
		m.t.Fatal(err)
	}
}

func (m *fakeMachine) link(target, name string) {
	if err := os.Symlink(target, name); err != nil {
		m.t.Fatal(err)
	}
}

// TestInstallDiskCheck: a host booted from vda (slot A through
// dm-verity as /, the data partition as /var) with a blank vdb, a vdc
// holding an old partition table, a small vdd and a read-only vde.
func TestInstallDiskCheck(t *testing.T) {
	m := newFakeMachine(t)
	vda := m.disk("vda", 0, 4<<30)
	var parts []string
	for i := 1; i <= 4; i++ {
		parts = append(parts, m.partition(vda, i, uint32(i)))
	}
	m.dm(0, parts[1])
	m.mount(253, 0, "/")
	m.mount(254, 4, "/var")
	m.mount(0, 21, "/run")
	m.mount(254, 1, `/boot/my\040esp`)
	m.disk("vdb", 16, 2<<30)
	vdc := m.disk("vdc", 32, 2<<30)
	m.partition(vdc, 1, 33)
	m.disk("vdd", 48, 800<<20)
	m.disk("vdf", 80, 850<<20)
	vde := m.disk("vde", 64, 2<<30)
	m.write(vde, "ro", "1")
	m.files["/dev/null"] = "/dev/null"
	p := m.probe()
	const template = 128 << 20

	for _, tc := range []struct {
		disk     string
		force    bool
		conflict bool   // 409, else 400
		want     string // "" accepted
	}{
		{"/dev/vdb", false, false, ""},
		{"/dev/vdb/../vdb", false, false, ""},
		{"vdb", false, false, "name a block device under /dev"},
		{"/dev/vdx", false, false, "no disk /dev/vdx on this host; its disks: /dev/vda (4.0 GiB), /dev/vdb (2.0 GiB), /dev/vdc (2.0 GiB), /dev/vdd (0.8 GiB), /dev/vde (2.0 GiB), /dev/vdf (0.8 GiB)"},
		{"/dev/null", false, false, "not a block device"},
		{"/dev/vdb1", false, false, ""}, // no such partition: vdb is blank
		{"/dev/vda2", false, false, "is a partition of vda: give the whole disk, /dev/vda"},
		{"/dev/dm-0", false, false, "virtual device"},
		{"/dev/vdd", false, false, "too small: the layout needs at least 834 MiB"},
		{"/dev/vdf", false, false, "smaller than the 128 MiB of its template: give a disk of at least 898 MiB"},
		{"/dev/vde", false, false, "read-only"},
		{"/dev/vda", true, true, `in use: mounted at /, mounted at /var, mounted at /boot/my esp, vda2 held by dm-0; pick another disk`},
		{"/dev/vdc", false, true, "not blank (it has partitions vdc1): if it is the disk you mean, install again with force=1"},
		{"/dev/vdc", true, false, ""},
	} {
		t.Run(strings.TrimPrefix(tc.disk, "/dev/")+fmt.Sprint(tc.force), func(t *testing.T) {
			got, err := p.check(tc.disk, tc.force, template)
			if tc.disk == "/dev/vdb1" {
				if err == nil || !strings.Contains(err.Error(), "no disk /dev/vdb1") {
					t.Fatalf("got %v, want no such disk", err)
				}
				return
			}
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if want := filepath.Clean(tc.disk); got.path != want || got.size != 2<<30 {
					t.Errorf("target %+v, want %s of 2 GiB", got, want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			if errors.Is(err, errInstallConflict) != tc.conflict {
				t.Errorf("conflict = %v, want %v: %v", !tc.conflict, tc.conflict, err)
			}
		})
	}
}

// TestInstallBlankCheck: bytes at either end of a disk make it not blank.
func TestInstallBlankCheck(t *testing.T) {
	m := newFakeMachine(t)
	m.disk("vdb", 16, 2<<30)
	p := m.probe()
	for _, off := range []int64{0, 1<<20 - 1, 2<<30 - 1<<20, 2<<30 - 1} {
		f, err := os.OpenFile(m.files["/dev/vdb"], os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteAt([]byte{1}, off)
		_, err = p.check("/dev/vdb", false, 128<<20)
		where := "first"
		if off >= 1<<30 {
			where = "last"
		}
		if err == nil || !errors.Is(err, errInstallConflict) || !strings.Contains(err.Error(), "data in its "+where+" MiB") {
			t.Errorf("a byte at %d: %v, want a not-blank conflict naming the %s MiB", off, err, where)
		}
		if _, err := p.check("/dev/vdb", true, 128<<20); err != nil {
			t.Errorf("a byte at %d, forced: %v", off, err)
		}
		f.WriteAt([]byte{0}, off)
		f.Close()
	}
	// A byte just inside the checked ends is not looked at.
	f, _ := os.OpenFile(m.files["/dev/vdb"], os.O_RDWR, 0)
	f.WriteAt([]byte{1}, 1<<20)
	f.Close()
	if _, err := p.check("/dev/vdb", false, 128<<20); err != nil {
		t.Errorf("data past the first MiB only: %v", err)
	}
}

func TestInstallQuery(t *testing.T) {
	for _, tc := range []struct {
		query string
		want  string
	}{
		{"disk=/dev/vdb&force=1&cmdline=console%3DttyS0", ""},
		{"force=1", "no disk given"},
		{"disk=/dev/vdb&force=yes", "use force=1"},
		{"disk=/dev/vdb&cmdline=quiet%0Ainitrd%3D/evil", "printable ASCII"},
		{"disk=/dev/vdb&cmdline=" + strings.Repeat("x", maxCmdline+1), "longer than"},
	} {
		q, err := url.ParseQuery(tc.query)
		if err != nil {
			t.Fatal(err)
		}
		req, err := parseInstallQuery(q)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.query, err)
		case tc.want == "" && (req.disk != "/dev/vdb" || !req.force || req.cmdline != "console=ttyS0"):
			t.Errorf("%s: parsed %+v", tc.query, req)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want an error containing %q", tc.query, err, tc.want)
		}
	}
}

func TestPartitionDevice(t *testing.T) {
	for disk, want := range map[string]string{"/dev/vdb": "/dev/vdb4", "/dev/nvme0n1": "/dev/nvme0n1p4", "/dev/sda": "/dev/sda4"} {
		if got := partitionDevice(disk, 4); got != want {
			t.Errorf("partitionDevice(%s, 4) = %s, want %s", disk, got, want)
		}
	}
}
