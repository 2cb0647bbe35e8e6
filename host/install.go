package host

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/plinth-os/plinth/host/mountinfo"
	"github.com/plinth-os/plinth/host/slots"
	"github.com/plinth-os/plinth/image"
	"github.com/plinth-os/plinth/image/disk"
)

// A running host installs plinth onto one of its own disks: the operator
// sends the signed bundle (POST /v1/host/install) to a host booted from
// the network, and hostd writes the disk layout of image/disk onto the
// disk named: the ESP with the boot loader its own image carries, slot A
// holding the bundle's image, and the data partition from the ext4
// template its image carries (a plinth host has no mkfs), which PID 1
// grows to the partition at the first boot from the disk. Everything is
// checked before a byte is written: the bundle as an upgrade's is, and
// the disk, which must be a whole, unused disk and, unless forced, a
// blank one.

// InstallResult is the answer to POST /v1/host/install.
type InstallResult struct {
	Disk       string             `json:"disk"`
	Version    string             `json:"version"`
	SizeBytes  int64              `json:"size_bytes"`
	Partitions []InstallPartition `json:"partitions"`
}

// InstallPartition is one partition an install wrote.
type InstallPartition struct {
	Name      string `json:"name"`
	Device    string `json:"device"`
	SizeBytes int64  `json:"size_bytes"`
	GUID      string `json:"guid"`
}

// maxCmdline bounds the kernel command line of an install's boot
// entries; the kernel takes 2048 bytes on x86, and the slot parameter is
// added to it.
const maxCmdline = 1024

// blankCheck is how much of each end of a disk must be zeros for it to
// count as blank: the GPT and its backup, MBRs and most filesystem and
// RAID superblocks live there.
const blankCheck = 1 << 20

var (
	// errInstallConflict marks refusals about the state of the host or
	// the disk (409), not the request.
	errInstallConflict = errors.New("conflict")
	// errInstallFailed marks failures after writing began (500).
	errInstallFailed = errors.New("install failed")
)

// installer is hostd's side of installs.
type installer struct {
	mu      sync.Mutex // one install at a time
	disks   diskProbe
	trusted []ed25519.PublicKey
	// loader and template are the boot loader and the data template
	// that the running image carries.
	loader, template string
	// seed makes each install's disk.Spec.Seed, so that two disks
	// installed into one machine differ in every GUID and UUID.
	seed func() string
}

// installRequest is the query of POST /v1/host/install.
type installRequest struct {
	disk    string
	force   bool
	cmdline string
}

func parseInstallQuery(q map[string][]string) (installRequest, error) {
	get := func(k string) string {
		if v := q[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	req := installRequest{disk: get("disk"), cmdline: get("cmdline")}
	if req.disk == "" {
		return req, fmt.Errorf("no disk given: name the disk to install to, disk=/dev/vdb")
	}
	switch f := get("force"); f {
	case "", "0":
	case "1":
		req.force = true
	default:
		return req, fmt.Errorf("force=%q: use force=1 to overwrite a disk that is not blank", f)
	}
	if len(req.cmdline) > maxCmdline {
		return req, fmt.Errorf("cmdline of %d bytes is longer than %d", len(req.cmdline), maxCmdline)
	}
	for _, r := range req.cmdline {
		if r < 0x20 || r > 0x7e {
			return req, fmt.Errorf("cmdline has the character %q: give printable ASCII only", r)
		}
	}
	return req, nil
}

// install checks the request, the disk and the bundle read from r, and
// writes the disk.
func (in *installer) install(r *http.Request) (InstallResult, error) {
	if !in.mu.TryLock() {
		return InstallResult{}, fmt.Errorf("%w: another install is under way on this host; wait for it to finish", errInstallConflict)
	}
	defer in.mu.Unlock()
	req, err := parseInstallQuery(r.URL.Query())
	if err != nil {
		return InstallResult{}, err
	}
	if len(in.trusted) == 0 {
		return InstallResult{}, fmt.Errorf("%w: %v", errInstallConflict, image.ErrNoTrust)
	}
	loader, err := os.ReadFile(in.loader)
	if err != nil {
		return InstallResult{}, fmt.Errorf("%w: this host's image has no boot loader to install (%v): install from a host running an image built with systemd-boot-efi", errInstallConflict, err)
	}
	tmpl, err := os.Stat(in.template)
	if err != nil {
		return InstallResult{}, fmt.Errorf("%w: this host's image has no data partition template (%v): install from a host running a newer image, or write `make disk`'s image instead", errInstallConflict, err)
	}
	target, err := in.disks.check(req.disk, req.force, tmpl.Size())
	if err != nil {
		return InstallResult{}, err
	}

	limit := int64(MaxBundle)
	if _, avail := memInfo(); avail > 0 {
		limit = min(limit, avail/2)
	}
	if r.ContentLength > limit {
		return InstallResult{}, fmt.Errorf("bundle of %d bytes is larger than this host accepts (%d)", r.ContentLength, limit)
	}
	b, err := image.ReadBundle(r.Body, limit, func(man, sig []byte) error {
		m, err := image.VerifyManifest(man, sig, in.trusted)
		if err != nil {
			return err
		}
		return m.CheckArch(machine())
	})
	if err != nil {
		return InstallResult{}, err
	}
	m, err := b.Verify(in.trusted, machine())
	if err != nil {
		return InstallResult{}, err
	}
	spec, err := slots.NewDiskSpec(b, m, loader, req.cmdline, "")
	if err != nil {
		return InstallResult{}, err
	}
	spec.FormatData = false
	spec.DataTemplate = in.template
	spec.Seed = in.seed()
	spec.Time = time.Now()
	parts, err := disk.Write(target.path, spec)
	if err != nil {
		return InstallResult{}, fmt.Errorf("%w: %v; the disk may be partly written: install again with force=1", errInstallFailed, err)
	}
	res := InstallResult{Disk: target.path, Version: m.Version, SizeBytes: target.size}
	for _, p := range parts {
		res.Partitions = append(res.Partitions, InstallPartition{
			Name: p.Name, Device: partitionDevice(target.path, p.Index), SizeBytes: p.Size, GUID: p.GUID,
		})
	}
	return res, nil
}

// partitionDevice names partition i of disk as the kernel does: a p
// between a name ending in a digit and the number (nvme0n1p1).
func partitionDevice(disk string, i int) string {
	if c := disk[len(disk)-1]; c >= '0' && c <= '9' {
		return disk + "p" + strconv.Itoa(i)
	}
	return disk + strconv.Itoa(i)
}

// diskProbe looks at the machine's block devices through sysfs and the
// mount table; tests give it fakes of both.
type diskProbe struct {
	sys       string // sysfs: "/sys"
	mountinfo string // "/proc/self/mountinfo"
	// devNum returns the device number of the block device node path.
	devNum func(path string) (uint64, error)
	// open opens a block device for reading.
	open func(path string) (*os.File, error)
}

var errNotBlock = errors.New("not a block device")

func systemDisks() diskProbe {
	return diskProbe{
		sys:       "/sys",
		mountinfo: mountinfo.Self,
		devNum: func(path string) (uint64, error) {
			var st unix.Stat_t
			if err := unix.Stat(path, &st); err != nil {
				return 0, &fs.PathError{Op: "stat", Path: path, Err: err}
			}
			if st.Mode&unix.S_IFMT != unix.S_IFBLK {
				return 0, errNotBlock
			}
			return st.Rdev, nil
		},
		open: os.Open,
	}
}

// installTarget is a disk that passed the checks.
type installTarget struct {
	path string
	name string // the kernel's: vdb
	size int64
}

// check says whether path may be installed to: a whole physical disk,
// writable, large enough for the layout with a data partition that holds
// the template (400 otherwise), holding nothing mounted or in use, and
// blank unless force (409 otherwise).
func (p diskProbe) check(path string, force bool, template int64) (installTarget, error) {
	clean := filepath.Clean(path)
	if !strings.HasPrefix(clean, "/dev/") {
		return installTarget{}, fmt.Errorf("disk %q: name a block device under /dev, such as /dev/vdb", path)
	}
	rdev, err := p.devNum(clean)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return installTarget{}, fmt.Errorf("no disk %s on this host; its disks: %s", clean, p.listDisks())
	case errors.Is(err, errNotBlock):
		return installTarget{}, fmt.Errorf("%s is not a block device; this host's disks: %s", clean, p.listDisks())
	case err != nil:
		return installTarget{}, err
	}
	dir, err := filepath.EvalSymlinks(filepath.Join(p.sys, "dev/block", fmt.Sprintf("%d:%d", unix.Major(rdev), unix.Minor(rdev))))
	if err != nil {
		return installTarget{}, fmt.Errorf("%s: no such device in sysfs: %w", clean, err)
	}
	t := installTarget{path: clean, name: filepath.Base(dir)}
	if exists(filepath.Join(dir, "partition")) {
		return t, fmt.Errorf("%s is a partition of %s: give the whole disk, /dev/%s", clean, filepath.Base(filepath.Dir(dir)), filepath.Base(filepath.Dir(dir)))
	}
	if !exists(filepath.Join(dir, "device")) {
		return t, fmt.Errorf("%s is a virtual device (loop, device-mapper, RAID or RAM disk): give a physical disk; this host's disks: %s", clean, p.listDisks())
	}
	if readSys(dir, "ro") == "1" {
		return t, fmt.Errorf("%s is read-only", clean)
	}
	sectors, err := strconv.ParseInt(readSys(dir, "size"), 10, 64)
	if err != nil {
		return t, fmt.Errorf("%s: size in sysfs: %w", clean, err)
	}
	t.size = sectors * 512
	parts, err := disk.Layout(t.size, disk.Spec{})
	if err != nil {
		return t, fmt.Errorf("%s: %w", clean, err)
	}
	if data := parts[len(parts)-1]; data.Size < template {
		return t, fmt.Errorf("%s: the data partition would be %d MiB, smaller than the %d MiB of its template: give a disk of at least %d MiB",
			clean, data.Size>>20, template>>20, (data.Start+template+1<<20)>>20)
	}

	if uses := p.uses(t.name, dir); len(uses) > 0 {
		return t, fmt.Errorf("%w: %s is in use: %s; pick another disk", errInstallConflict, clean, strings.Join(uses, ", "))
	}
	if force {
		return t, nil
	}
	if why, err := p.notBlank(clean, dir, t.size); err != nil {
		return t, err
	} else if why != "" {
		return t, fmt.Errorf("%w: %s is not blank (%s): if it is the disk you mean, install again with force=1 (plinth host install --force)", errInstallConflict, clean, why)
	}
	return t, nil
}

// uses lists what holds the disk name (sysfs directory dir) busy: the
// filesystems mounted from it, directly or through device-mapper, RAID
// and loop devices, and the devices stacked on it or its partitions.
func (p diskProbe) uses(name, dir string) []string {
	var uses []string
	mounts, _ := mountinfo.Read(p.mountinfo)
	for _, m := range mounts {
		dev, err := filepath.EvalSymlinks(filepath.Join(p.sys, "dev/block", m.Dev))
		if err != nil {
			continue // not a block device: tmpfs, proc, overlay...
		}
		if slices.Contains(p.disksUnder(dev, 0), name) {
			if use := "mounted at " + m.Target; !slices.Contains(uses, use) {
				uses = append(uses, use)
			}
		}
	}
	for _, d := range append([]string{dir}, p.partitions(dir)...) {
		holders, _ := os.ReadDir(filepath.Join(d, "holders"))
		for _, h := range holders {
			uses = append(uses, filepath.Base(d)+" held by "+h.Name())
		}
	}
	return uses
}

// disksUnder returns the whole disks that the block device with sysfs
// directory dev is made of: itself, the disk of a partition, the slaves
// of a device-mapper or RAID device, the disk holding a loop device's
// backing file.
func (p diskProbe) disksUnder(dev string, depth int) []string {
	if depth > 8 {
		return nil
	}
	if exists(filepath.Join(dev, "partition")) {
		return []string{filepath.Base(filepath.Dir(dev))}
	}
	var out []string
	slaves, _ := os.ReadDir(filepath.Join(dev, "slaves"))
	for _, s := range slaves {
		if d, err := filepath.EvalSymlinks(filepath.Join(dev, "slaves", s.Name())); err == nil {
			out = append(out, p.disksUnder(d, depth+1)...)
		}
	}
	if file := readSys(dev, "loop/backing_file"); file != "" {
		var st unix.Stat_t
		if unix.Stat(file, &st) == nil {
			id := fmt.Sprintf("%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev))
			if d, err := filepath.EvalSymlinks(filepath.Join(p.sys, "dev/block", id)); err == nil {
				out = append(out, p.disksUnder(d, depth+1)...)
			}
		}
	}
	if len(slaves) == 0 {
		out = append(out, filepath.Base(dev))
	}
	return out
}

// partitions returns the sysfs directories of the disk's partitions.
func (p diskProbe) partitions(dir string) []string {
	entries, _ := os.ReadDir(dir)
	var parts []string
	for _, e := range entries {
		if exists(filepath.Join(dir, e.Name(), "partition")) {
			parts = append(parts, filepath.Join(dir, e.Name()))
		}
	}
	return parts
}

// notBlank says why the disk is not blank, or "": it has partitions, or
// bytes other than zero in its first or last MiB.
func (p diskProbe) notBlank(path, dir string, size int64) (string, error) {
	if parts := p.partitions(dir); len(parts) > 0 {
		names := make([]string, len(parts))
		for i, d := range parts {
			names[i] = filepath.Base(d)
		}
		return "it has partitions " + strings.Join(names, ", "), nil
	}
	f, err := p.open(path)
	if err != nil {
		return "", fmt.Errorf("%w: open %s: %v", errInstallConflict, path, err)
	}
	defer f.Close()
	buf := make([]byte, min(blankCheck, size))
	zero := make([]byte, len(buf))
	for _, at := range []struct {
		where string
		off   int64
	}{{"first", 0}, {"last", size - int64(len(buf))}} {
		if _, err := f.ReadAt(buf, at.off); err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("%w: read %s: %v", errInstallConflict, path, err)
		}
		if !bytes.Equal(buf, zero) {
			return "data in its " + at.where + " MiB", nil
		}
	}
	return "", nil
}

// listDisks names the machine's physical disks with their sizes, for
// messages.
func (p diskProbe) listDisks() string {
	entries, _ := os.ReadDir(filepath.Join(p.sys, "block"))
	var disks []string
	for _, e := range entries {
		dir := filepath.Join(p.sys, "block", e.Name())
		if !exists(filepath.Join(dir, "device")) {
			continue
		}
		sectors, _ := strconv.ParseInt(readSys(dir, "size"), 10, 64)
		disks = append(disks, fmt.Sprintf("/dev/%s (%.1f GiB)", e.Name(), float64(sectors*512)/(1<<30)))
	}
	if len(disks) == 0 {
		return "none"
	}
	return strings.Join(disks, ", ")
}

func readSys(dir, name string) string {
	data, _ := os.ReadFile(filepath.Join(dir, name))
	return strings.TrimSpace(string(data))
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// installRoute serves POST /v1/host/install: the body is the bundle;
// disk=/dev/X names the disk, force=1 overwrites one that is not blank,
// cmdline=... is the kernel command line of the boot entries.
func (d *Daemon) installRoute(mux *http.ServeMux) {
	in := &installer{
		disks:    systemDisks(),
		loader:   image.BootLoaderPath,
		template: image.DataTemplatePath,
		seed: func() string {
			return fmt.Sprintf("install %s %d", d.id, time.Now().UnixNano())
		},
	}
	if d.upgrades != nil {
		in.trusted = d.upgrades.trusted
	}
	mux.HandleFunc("POST /v1/host/install", func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		res, err := in.install(r)
		switch {
		case errors.Is(err, errInstallConflict):
			writeJSON(w, http.StatusConflict, apiError{strings.TrimPrefix(err.Error(), errInstallConflict.Error()+": ")})
			return
		case errors.Is(err, errInstallFailed):
			d.log.Error("install to disk failed", "err", err)
			writeJSON(w, http.StatusInternalServerError, apiError{err.Error()})
			return
		case err != nil:
			writeJSON(w, http.StatusBadRequest, apiError{"install refused, nothing written: " + err.Error()})
			return
		}
		d.log.Info("installed to disk", "disk", res.Disk, "version", res.Version, "seconds", time.Since(start).Seconds())
		writeJSON(w, http.StatusOK, res)
	})
}
