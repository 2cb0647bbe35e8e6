package image

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/ulikunitz/xz"

	"github.com/plinth-os/plinth/init/kmod"
)

// moduleFile is a module found in a kernel tree.
type moduleFile struct {
	kmod.Module
	src      string   // absolute path of the .ko, .ko.xz or .ko.zst file
	aliases  []string // devices it drives (modalias patterns)
	firmware []string // files it may load from /lib/firmware
}

// indexModules maps module name → file for every module under dir/kernel.
// Module names use '_' where file names may use '-', as the kernel does.
func indexModules(dir string) (map[string]string, error) {
	idx := map[string]string{}
	err := filepath.WalkDir(filepath.Join(dir, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		name := d.Name()
		for _, ext := range []string{".ko", ".ko.xz", ".ko.zst"} {
			if strings.HasSuffix(name, ext) {
				idx[kmod.Name(strings.TrimSuffix(name, ext))] = p
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index modules in %s: %w", dir, err)
	}
	return idx, nil
}

// resolveModules returns the named modules and everything they depend on, in
// load order (dependencies first; ties broken by name so the order is stable).
// Dependencies come from each module's .modinfo "depends=" field, so no
// modules.dep (which the .deb does not ship) is needed. Names the kernel
// has built in (modules.builtin) need no file and are left out.
func resolveModules(dir string, names []string) ([]moduleFile, error) {
	idx, err := indexModules(dir)
	if err != nil {
		return nil, err
	}
	builtin, err := builtinModules(dir)
	if err != nil {
		return nil, err
	}
	var (
		order []moduleFile
		state = map[string]int{} // 1 = visiting, 2 = done
		visit func(name, wantedBy string) error
	)
	visit = func(name, wantedBy string) error {
		switch state[name] {
		case 1:
			return fmt.Errorf("module dependency cycle at %s", name)
		case 2:
			return nil
		}
		src, ok := idx[name]
		if !ok {
			if wantedBy != "" {
				return fmt.Errorf("module %s (needed by %s) not found in %s", name, wantedBy, dir)
			}
			return fmt.Errorf("module %s not found in %s (is it built in? check boot/config-*)", name, dir)
		}
		state[name] = 1
		data, err := readDecompressed(src)
		if err != nil {
			return err
		}
		info, err := readModinfo(data)
		if err != nil {
			return fmt.Errorf("read .modinfo of %s: %w", src, err)
		}
		deps := info.depends
		sort.Strings(deps)
		for _, d := range deps {
			if err := visit(d, name); err != nil {
				return err
			}
		}
		state[name] = 2
		rel, _ := filepath.Rel(dir, src)
		rel = strings.TrimSuffix(strings.TrimSuffix(rel, ".xz"), ".zst")
		order = append(order, moduleFile{Module: kmod.Module{Name: name, Path: rel, Deps: deps}, src: src,
			aliases: info.aliases, firmware: info.firmware})
		return nil
	}
	sorted := make([]string, len(names))
	for i, n := range names {
		sorted[i] = kmod.Name(n)
	}
	sort.Strings(sorted)
	for _, n := range sorted {
		if builtin[n] {
			continue
		}
		if err := visit(n, ""); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// readDecompressed returns a file's bytes, decompressing .xz and .zst
// (kernel modules may ship compressed; finit_module(2) without
// MODULE_INIT_COMPRESSED_FILE wants a plain ELF). zstd goes through the zstd
// command: the Go decoders' package initialisation costs ~30 ms at every
// start of the plinth binary under TCG, PID 1's boot included, for a format
// the pinned kernel does not use.
func readDecompressed(path string) ([]byte, error) {
	if strings.HasSuffix(path, ".zst") {
		data, err := exec.Command("zstd", "-dcq", path).Output()
		if err != nil {
			return nil, fmt.Errorf("decompress %s with zstd (Debian package zstd): %w", path, err)
		}
		return data, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r io.Reader = f
	if strings.HasSuffix(path, ".xz") {
		if r, err = xz.NewReader(f); err != nil {
			return nil, fmt.Errorf("decompress %s: %w", path, err)
		}
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return data, nil
}

// builtinModules reads modules.builtin: the modules the kernel has built
// in, by name.
func builtinModules(dir string) (map[string]bool, error) {
	data, err := os.ReadFile(filepath.Join(dir, "modules.builtin"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("built-in modules: %w", err)
	}
	b := map[string]bool{}
	for _, line := range strings.Fields(string(data)) {
		b[kmod.Name(line)] = true
	}
	return b, nil
}

// modinfo is what the image needs of a module's .modinfo.
type modinfo struct {
	depends  []string
	aliases  []string
	firmware []string
}

// readModinfo parses an ELF module's .modinfo section (NUL-separated
// key=value strings).
func readModinfo(data []byte) (modinfo, error) {
	var mi modinfo
	ef, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return mi, err
	}
	sec := ef.Section(".modinfo")
	if sec == nil {
		return mi, fmt.Errorf("no .modinfo section")
	}
	info, err := sec.Data()
	if err != nil {
		return mi, err
	}
	for _, kv := range bytes.Split(info, []byte{0}) {
		k, v, ok := strings.Cut(string(kv), "=")
		switch {
		case !ok || v == "":
		case k == "depends":
			for _, d := range strings.Split(v, ",") {
				mi.depends = append(mi.depends, kmod.Name(d))
			}
		case k == "alias":
			mi.aliases = append(mi.aliases, v)
		case k == "firmware":
			mi.firmware = append(mi.firmware, v)
		}
	}
	return mi, nil
}
