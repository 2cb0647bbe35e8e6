package vmtest

import (
	"bytes"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/cavaliergopher/cpio"
)

// BusyboxUptimeMarker starts the line that the default BusyboxInit script
// prints: "busybox: uptime <seconds>", seconds being the first field of
// /proc/uptime.
const BusyboxUptimeMarker = "busybox: uptime "

// BusyboxInit describes a busybox-only initramfs: /init is a busybox shell
// script that mounts /proc, loads Modules, runs Script and then powers the
// machine off. It is the smallest useful guest, and the baseline that boot
// benchmarks compare plinth against.
type BusyboxInit struct {
	// Busybox is the statically linked busybox binary copied to /bin/busybox.
	// Default: /bin/busybox (Debian package busybox-static).
	Busybox string

	// Modules are kernel module files (.ko, uncompressed) copied to
	// /lib/modules and loaded with insmod in this order, so list
	// dependencies first.
	Modules []string

	// Script is shell run by /init after the prelude; busybox applets are
	// callable by name. Default: print BusyboxUptimeMarker and the uptime.
	// /init powers off with "poweroff -f" when Script returns.
	Script string
}

// defaultBusyboxScript reads the uptime as early as possible: it is the boot
// time of the baseline.
const defaultBusyboxScript = `read up idle < /proc/uptime
echo "` + BusyboxUptimeMarker + `$up"
`

// BusyboxInitrd writes the default busybox initramfs (print the uptime, power
// off) to path.
func BusyboxInitrd(path string) error {
	return BusyboxInit{}.WriteInitrd(path)
}

// WriteInitrd writes b as an uncompressed newc cpio archive to path. The
// bytes depend only on b and the input files: entries are sorted and all
// mtimes are 0. The archive has no /dev: the kernel's built-in initramfs
// already provides /dev/console, which /init needs for its output.
func (b BusyboxInit) WriteInitrd(path string) error {
	files, err := b.files()
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := writeCpio(&buf, files); err != nil {
		return fmt.Errorf("write busybox initrd %s: %w", path, err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write busybox initrd: %w", err)
	}
	return nil
}

// cpioFile is one archive entry: its type and permission bits and, for a
// regular file, its contents.
type cpioFile struct {
	mode cpio.FileMode
	data []byte
}

func (b BusyboxInit) files() (map[string]cpioFile, error) {
	bin := b.Busybox
	if bin == "" {
		bin = "/bin/busybox"
	}
	busybox, err := os.ReadFile(bin)
	if err != nil {
		return nil, fmt.Errorf("read busybox (install busybox-static): %w", err)
	}
	files := map[string]cpioFile{
		"bin":         {mode: cpio.TypeDir | 0o755},
		"bin/busybox": {mode: cpio.TypeReg | 0o755, data: busybox},
		"proc":        {mode: cpio.TypeDir | 0o555},
		"sys":         {mode: cpio.TypeDir | 0o555},
		"tmp":         {mode: cpio.TypeDir | 0o1777},
	}

	var init strings.Builder
	// /proc first: with no /proc/self/exe, busybox cannot run its applets
	// by name.
	init.WriteString("#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc\nexport PATH=/bin\n")
	if len(b.Modules) > 0 {
		files["lib"] = cpioFile{mode: cpio.TypeDir | 0o755}
		files["lib/modules"] = cpioFile{mode: cpio.TypeDir | 0o755}
	}
	for _, m := range b.Modules {
		data, err := os.ReadFile(m)
		if err != nil {
			return nil, fmt.Errorf("read kernel module: %w", err)
		}
		name := "lib/modules/" + filepath.Base(m)
		if _, dup := files[name]; dup {
			return nil, fmt.Errorf("kernel module %s listed twice", filepath.Base(m))
		}
		files[name] = cpioFile{mode: cpio.TypeReg | 0o644, data: data}
		fmt.Fprintf(&init, "insmod /%s\n", name)
	}
	script := b.Script
	if script == "" {
		script = defaultBusyboxScript
	}
	init.WriteString(script)
	init.WriteString("\npoweroff -f\n")
	files["init"] = cpioFile{mode: cpio.TypeReg | 0o755, data: []byte(init.String())}
	return files, nil
}

func writeCpio(buf *bytes.Buffer, files map[string]cpioFile) error {
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	// Sorted order also puts every directory before its contents.
	sort.Strings(names)
	w := cpio.NewWriter(buf)
	for _, name := range names {
		if dir := path.Dir(name); dir != "." {
			if _, ok := files[dir]; !ok {
				return fmt.Errorf("%s: parent directory %s missing", name, dir)
			}
		}
		f := files[name]
		hdr := &cpio.Header{
			Name:    name,
			Mode:    f.mode,
			Size:    int64(len(f.data)),
			ModTime: time.Unix(0, 0),
			Links:   1,
		}
		if f.mode&cpio.ModeType == cpio.TypeDir {
			hdr.Links = 2
		}
		if err := w.WriteHeader(hdr); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if _, err := w.Write(f.data); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return w.Close()
}
