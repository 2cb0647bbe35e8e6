package image

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"

	"github.com/plinth-os/plinth/init/kmod"
)

// markOnDemand marks the modules of mods that atBoot (names, with their
// dependencies) does not need as loaded on demand: for a device, or by
// name. Names the kernel has built in are not in mods and need nothing.
func markOnDemand(mods []moduleFile, atBoot []string) []moduleFile {
	plain := make([]kmod.Module, len(mods))
	for i, m := range mods {
		plain[i] = m.Module
	}
	first, _, _ := kmod.Split(plain, atBoot...)
	boot := map[string]bool{}
	for _, m := range first {
		boot[m.Name] = true
	}
	out := slices.Clone(mods)
	for i := range out {
		out[i].OnDemand = !boot[out[i].Name]
	}
	return out
}

// pickFirmware returns the system image's entries for the firmware files
// mods name that dir has (as named, or compressed with xz: stored
// decompressed, the system image is compressed as a whole), and, by
// module, the files dir lacks. Without a dir, every named file is missing.
func pickFirmware(dir string, mods []moduleFile) ([]entry, map[string][]string, error) {
	var es []entry
	missing := map[string][]string{}
	seen := map[string]bool{}
	for _, m := range mods {
		for _, name := range m.firmware {
			if seen[name] {
				continue
			}
			found := ""
			for _, n := range []string{name, name + ".xz"} {
				if dir == "" {
					break
				}
				p := filepath.Join(dir, n)
				if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
					found = n
					es = append(es, entry{Name: "lib/firmware/" + name, Mode: 0o644, Src: p})
					break
				} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
					return nil, nil, fmt.Errorf("firmware %s: %w", p, err)
				}
			}
			if found == "" {
				missing[m.Name] = append(missing[m.Name], name)
				continue
			}
			seen[name] = true
		}
	}
	sort.Slice(es, func(i, j int) bool { return es[i].Name < es[j].Name })
	if len(missing) == 0 {
		missing = nil
	}
	return es, missing, nil
}
