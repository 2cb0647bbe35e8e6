package boot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/plinth-os/plinth/image"
	"github.com/plinth-os/plinth/init/kmod"
)

const (
	newRoot     = "/newroot"
	systemImage = "/system.img" // where the image builder puts it in the initramfs
	stage2      = "/sbin/init"  // argv[0] of stage 2, its path in the system image
	// binaryDir is where the running system finds its layer-0 binary
	// (plinth-host): a directory of the initramfs bound over the system
	// image's empty placeholder. See bindBinary.
	binaryDir  = image.HostBinaryDir
	binaryPath = image.HostBinaryPath
	// platformBinary is the CLI and the platform's services, in the system
	// image (a link to binaryPath in an image built with one binary).
	platformBinary = image.PlatformBinaryPath
	// binaryStage is that directory in the initramfs.
	binaryStage = "/.plinth-bin"
)

// netbootModules are what stage 1 loads when the system image is in the
// initramfs: a loop device and squashfs to mount it.
var netbootModules = []string{"loop", "squashfs"}

// stage1 turns the initramfs into the real root; stage 2 then runs in this
// same process (see Main). A real root (not rootfs) is also what
// libcontainer's pivot_root needs.
func stage1() {
	must(mount("devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"))
	must(mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""))
	must(mount("sysfs", "/sys", "sysfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""))
	openConsoles()
	cl := readCmdline()
	applyPanicPolicy(cl, nil)
	phase("stage1: started")

	// The initramfs has the modules of both kinds of boot: a disk slot's
	// needs dm-verity and the drivers of the disk it is on, which are
	// loaded for the disk controllers the machine has.
	slot := cl[paramSlot]
	modDir := filepath.Join("/lib/modules", kernelRelease())
	all, err := kmod.ReadList(modDir)
	must(err)
	var mods []kmod.Module
	for _, m := range all {
		if !m.OnDemand {
			mods = append(mods, m)
		}
	}
	if slot == "" {
		mods, _, _ = kmod.Split(mods, netbootModules...)
	}
	start := time.Now()
	must(kmod.LoadAll(modDir, mods))
	phase("stage1: %d modules loaded in %.3fs", len(mods), time.Since(start).Seconds())

	if slot != "" {
		hw := startColdplug(modDir, all)
		must(mountSlot(slot, newRoot))
		hw.stop()
	} else {
		loop, err := attachLoop(systemImage)
		must(err)
		must(mount(loop.Name(), newRoot, "squashfs", unix.MS_RDONLY|unix.MS_NODEV, ""))
		loop.Close() // the mount holds the device now; autoclear frees it on unmount
		phase("stage1: system image mounted from %s", loop.Name())
	}
	for _, m := range []struct{ dir, mode string }{{"run", "0755"}, {"tmp", "1777"}, {"var", "0755"}} {
		must(unix.Mount("tmpfs", filepath.Join(newRoot, m.dir), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode="+m.mode))
	}
	must(bindBinary("/init", newRoot+binaryDir))

	for _, dir := range []string{"/dev", "/proc", "/sys"} {
		if err := unix.Mount(dir, newRoot+dir, "", unix.MS_MOVE, ""); err != nil {
			must(fmt.Errorf("move %s into new root: %w", dir, err))
		}
	}
	freeInitramfs()
	must(switchRoot(newRoot))
}

// bindBinary makes this process's binary, the initramfs's /init, the
// system's layer-0 binary without a second copy of it (the largest file of
// the boot) in the system image: it links /init into a directory of its
// own in the initramfs and binds that directory over the image's empty
// dstDir. A directory, not the file: tools that look the binary up by
// the directory it is in must find it there, not the placeholder under
// the bind. libcontainer is one: it seals the binary for each container
// start with an overlayfs of that directory, and otherwise copies all of
// it into memory every time.
func bindBinary(src, dstDir string) error {
	if err := os.MkdirAll(binaryStage, 0o755); err != nil {
		return fmt.Errorf("binary directory: %w", err)
	}
	link := filepath.Join(binaryStage, filepath.Base(binaryPath))
	if err := os.Link(src, link); err != nil {
		// Only this same file may be there already.
		a, errA := os.Stat(src)
		b, errB := os.Stat(link)
		if errA != nil || errB != nil || !os.SameFile(a, b) {
			return fmt.Errorf("link %s into %s: %w", src, binaryStage, err)
		}
	}
	if err := unix.Mount(binaryStage, dstDir, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s over %s: %w", binaryStage, dstDir, err)
	}
	if err := unix.Mount("", dstDir, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID, ""); err != nil {
		return fmt.Errorf("make %s read-only: %w", dstDir, err)
	}
	return nil
}

// attachLoop binds a free loop device to the image file, read-only, and
// returns it open: with autoclear, closing it before something else (a
// mount) holds it would detach it again. The loop keeps the image file
// open, so the initramfs copy can be unlinked afterwards.
func attachLoop(image string) (*os.File, error) {
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open loop-control: %w", err)
	}
	defer ctl.Close()
	n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
	if err != nil {
		return nil, fmt.Errorf("find free loop device: %w", err)
	}
	dev := fmt.Sprintf("/dev/loop%d", n)
	var lf *os.File
	// devtmpfs creates the node asynchronously after the device appears.
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if lf, err = os.OpenFile(dev, os.O_RDONLY, 0); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dev, err)
	}
	img, err := os.Open(image)
	if err != nil {
		lf.Close()
		return nil, fmt.Errorf("open system image: %w", err)
	}
	defer img.Close()
	cfg := unix.LoopConfig{Fd: uint32(img.Fd())}
	cfg.Info.Flags = unix.LO_FLAGS_READ_ONLY | unix.LO_FLAGS_AUTOCLEAR
	copy(cfg.Info.File_name[:], image)
	if err := unix.IoctlLoopConfigure(int(lf.Fd()), &cfg); err != nil {
		lf.Close()
		return nil, fmt.Errorf("configure %s for %s: %w", dev, image, err)
	}
	return lf, nil
}

// freeInitramfs deletes what of the initramfs can be freed: the stage-1
// modules. /init (running as PID 1) and the system image (backing the loop
// device) stay in memory for the life of the machine, linked or not, and
// walking and unlinking everything cost ~0.1 s under TCG for no memory.
func freeInitramfs() {
	os.RemoveAll("/lib")
}

// switchRoot makes dir the root of the mount namespace: move its mount over
// "/" and chroot into it (pivot_root cannot be used on rootfs).
func switchRoot(dir string) error {
	if err := unix.Chdir(dir); err != nil {
		return fmt.Errorf("chdir %s: %w", dir, err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move %s to /: %w", dir, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	return unix.Chdir("/")
}

// execUptime returns when the kernel executed /init, in seconds since
// boot, from its log (which keeps the record under quiet too), or 0 if
// the record is not there.
func execUptime() float64 {
	f, err := os.OpenFile("/dev/kmsg", os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return 0
	}
	defer f.Close()
	// Each read returns one record, "prio,seq,usec,flags;text"; the
	// end of the log is EAGAIN.
	buf := make([]byte, 8192)
	for {
		n, err := f.Read(buf)
		if err != nil {
			if errors.Is(err, unix.EPIPE) {
				continue // overwritten while being read
			}
			return 0
		}
		head, text, ok := strings.Cut(string(buf[:n]), ";")
		if !ok || !strings.HasPrefix(text, "Run /init as init process") {
			continue
		}
		if f := strings.Split(head, ","); len(f) >= 3 {
			usec, _ := strconv.ParseUint(f[2], 10, 64)
			return float64(usec) / 1e6
		}
	}
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

// must turns an error on the boot path into a crash (see panic.go): print,
// sync, reboot or hold. Boot cannot continue without the step that failed.
func must(err error) {
	if err != nil {
		panic(err)
	}
}
