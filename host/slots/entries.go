package slots

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// Boot entries follow the Boot Loader Specification, type #1: one file
// per slot in loader/entries on the ESP, named plinth-<slot>.conf when
// committed and plinth-<slot>+<left>[-<done>].conf while on trial.
// systemd-boot does the counting: at each boot of a counting entry it
// moves one try from left to done, and sorts an entry with none left
// after all the others, so the machine falls back by itself. Entries
// share a sort-key and sort by their version field, newest first; plinth
// writes a generation there (one more than any entry's), not the image
// version, so that an allowed downgrade is still the newest install.

// EntriesDir is where the entries live on the ESP.
const EntriesDir = "loader/entries"

var entryName = regexp.MustCompile(`^plinth-([ab])(?:\+(\d+)(?:-(\d+))?)?\.conf$`)

// Entry is one slot's boot entry.
type Entry struct {
	Slot       string // "a" or "b"
	File       string // its file name in EntriesDir
	Counting   bool   // on trial: boot counting is on
	TriesLeft  int
	TriesDone  int
	Generation uint64
	Title      string
	Options    string // the kernel command line
}

// Failed reports whether the entry used up its tries: the boot loader
// no longer picks it while another entry is good.
func (e Entry) Failed() bool { return e.Counting && e.TriesLeft == 0 }

// fileName is the entry's file name for its counting state.
func (e Entry) fileName() string {
	switch {
	case !e.Counting:
		return fmt.Sprintf("plinth-%s.conf", e.Slot)
	case e.TriesDone == 0:
		return fmt.Sprintf("plinth-%s+%d.conf", e.Slot, e.TriesLeft)
	default:
		return fmt.Sprintf("plinth-%s+%d-%d.conf", e.Slot, e.TriesLeft, e.TriesDone)
	}
}

// format is the entry's content.
func (e Entry) format() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "title %s\n", e.Title)
	fmt.Fprintf(&b, "version %d\n", e.Generation)
	fmt.Fprintf(&b, "sort-key plinth\n")
	fmt.Fprintf(&b, "linux /%s\n", slotFile(e.Slot, "vmlinuz"))
	fmt.Fprintf(&b, "initrd /%s\n", slotFile(e.Slot, "initrd.img"))
	fmt.Fprintf(&b, "options %s\n", e.Options)
	return b.Bytes()
}

// slotFile is where a slot's boot file lives on the ESP.
func slotFile(slot, name string) string { return "plinth/" + slot + "/" + name }

// parseEntry reads an entry file's name and content.
func parseEntry(name string, data []byte) (Entry, error) {
	m := entryName.FindStringSubmatch(name)
	if m == nil {
		return Entry{}, fmt.Errorf("%s is not a plinth entry name", name)
	}
	e := Entry{Slot: m[1], File: name}
	if m[2] != "" {
		e.Counting = true
		e.TriesLeft, _ = strconv.Atoi(m[2])
		if m[3] != "" {
			e.TriesDone, _ = strconv.Atoi(m[3])
		}
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		key, val, _ := strings.Cut(strings.TrimSpace(sc.Text()), " ")
		val = strings.TrimSpace(val)
		switch key {
		case "title":
			e.Title = val
		case "version":
			g, err := strconv.ParseUint(val, 10, 64)
			if err != nil {
				return Entry{}, fmt.Errorf("%s: version %q is not a generation number", name, val)
			}
			e.Generation = g
		case "options":
			e.Options = val
		}
	}
	return e, sc.Err()
}

// readEntries returns the plinth entries on the ESP mounted at esp, by
// slot. Two files for one slot (a crash between writing one and removing
// the other) are both returned; the caller removes the stale one.
func readEntries(esp string) (map[string][]Entry, error) {
	dir := filepath.Join(esp, EntriesDir)
	names, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("boot entries: %w", err)
	}
	out := map[string][]Entry{}
	for _, n := range names {
		if !entryName.MatchString(n.Name()) {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, n.Name()))
		if err != nil {
			return nil, fmt.Errorf("boot entry %s: %w", n.Name(), err)
		}
		e, err := parseEntry(n.Name(), data)
		if err != nil {
			return nil, err
		}
		out[e.Slot] = append(out[e.Slot], e)
	}
	return out, nil
}

// withSlot returns a kernel command line with plinth.slot set to slot
// and everything else kept.
func withSlot(options, slot string) string {
	var out []string
	for _, f := range strings.Fields(options) {
		if !strings.HasPrefix(f, SlotParam+"=") {
			out = append(out, f)
		}
	}
	return strings.Join(append(out, SlotParam+"="+slot), " ")
}
