package kmod

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
)

// AliasName is the file name of the alias table inside a module directory:
// which module drives which device, written by the image builder from the
// modules' .modinfo "alias=" fields (the .deb ships no modules.alias, depmod
// writes that at install).
const AliasName = "plinth-modules.alias"

// Alias says that devices whose modalias matches Pattern (a glob, as in the
// kernel's MODULE_DEVICE_TABLE aliases) are driven by Module.
type Alias struct {
	Pattern string
	Module  string
}

// FormatAliases writes aliases, one per line: "pattern module".
func FormatAliases(w io.Writer, aliases []Alias) error {
	for _, a := range aliases {
		if _, err := fmt.Fprintf(w, "%s %s\n", a.Pattern, a.Module); err != nil {
			return err
		}
	}
	return nil
}

// Aliases is a parsed alias table, indexed for matching: the patterns are
// grouped by the literal text before their first wildcard, so a lookup
// tries only the few patterns that can match (a hardware set has
// thousands, a machine a hundred devices, and PID 1 matches them all
// on the boot path).
type Aliases struct {
	byPrefix map[string][]Alias // literal prefix, cut at prefixLen
	short    []Alias            // patterns whose literal prefix is shorter
	buses    map[string]bool    // the text before the first ':' or wildcard
}

// prefixLen is how much literal prefix the index keys on: "pci:v0000" is
// enough to tell PCI vendors apart, "usb:v" USB devices from classes.
const prefixLen = 9

// ParseAliases reads a table written by FormatAliases.
func ParseAliases(r io.Reader) (*Aliases, error) {
	a := newAliases()
	sc := bufio.NewScanner(r)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		f := strings.Fields(text)
		if len(f) != 2 {
			return nil, fmt.Errorf("module alias line %d: want \"pattern module\", got %q", line, text)
		}
		if _, err := path.Match(f[0], ""); err != nil {
			return nil, fmt.Errorf("module alias line %d: pattern %q: %w", line, f[0], err)
		}
		a.add(Alias{Pattern: f[0], Module: f[1]})
	}
	return a, sc.Err()
}

func newAliases() *Aliases {
	return &Aliases{byPrefix: map[string][]Alias{}, buses: map[string]bool{}}
}

func (a *Aliases) add(al Alias) {
	if i := strings.IndexAny(al.Pattern, ":*?[\\"); i > 0 {
		a.buses[al.Pattern[:i]] = true
	}
	lit := al.Pattern
	if i := strings.IndexAny(lit, "*?[\\"); i >= 0 {
		lit = lit[:i]
	}
	if len(lit) < prefixLen {
		a.short = append(a.short, al)
		return
	}
	key := lit[:prefixLen]
	a.byPrefix[key] = append(a.byPrefix[key], al)
}

// ReadAliases reads dir/AliasName. An image without one (built before
// coldplug) has an empty table.
func ReadAliases(dir string) (*Aliases, error) {
	f, err := os.Open(filepath.Join(dir, AliasName))
	if os.IsNotExist(err) {
		return newAliases(), nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ParseAliases(f)
}

// Match returns the modules whose aliases match modalias, each once.
func (a *Aliases) Match(modalias string) []string {
	var mods []string
	try := func(als []Alias) {
		for _, al := range als {
			// Modaliases have no '/', which path.Match's '*' would not cross.
			if ok, _ := path.Match(al.Pattern, modalias); ok && !slices.Contains(mods, al.Module) {
				mods = append(mods, al.Module)
			}
		}
	}
	if len(modalias) >= prefixLen {
		try(a.byPrefix[modalias[:prefixLen]])
	}
	try(a.short)
	return mods
}

// Bus reports whether some alias is for devices whose modalias starts
// with bus and a colon ("pci", "usb", "acpi"): the bus's name in sysfs,
// for all buses drivers match on.
func (a *Aliases) Bus(bus string) bool { return a.buses[bus] }

// Len is the number of aliases in the table.
func (a *Aliases) Len() int {
	n := len(a.short)
	for _, als := range a.byPrefix {
		n += len(als)
	}
	return n
}
