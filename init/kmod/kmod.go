// Package kmod loads kernel modules at boot and defines the module list that
// the image builder writes next to them.
//
// The list replaces modules.dep: the builder resolves dependencies once, at
// build time, and writes the modules in load order with their dependencies, so
// init needs neither depmod output nor ELF parsing on the slow boot path.
// kmod does not choose which modules an image carries; that is the image
// builder's job.
package kmod

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// ListName is the file name of the module list inside a module directory.
const ListName = "plinth-modules.list"

// Module is one loadable kernel module.
type Module struct {
	Name string   // module name, e.g. "virtio_net"
	Path string   // file path relative to the module directory
	Deps []string // names of modules that must be loaded first
	// OnDemand modules are loaded only for a device that needs them
	// (see Aliases) or by name, not with the rest at boot: drivers, and
	// what only drivers need.
	OnDemand bool
}

// onDemandMark is the list's fourth field for an OnDemand module.
const onDemandMark = "demand"

// FormatList writes mods, one per line: "name path dep,dep", and
// "demand" after an OnDemand module's.
func FormatList(w io.Writer, mods []Module) error {
	for _, m := range mods {
		deps := strings.Join(m.Deps, ",")
		if deps == "" {
			deps = "-"
		}
		line := m.Name + " " + m.Path + " " + deps
		if m.OnDemand {
			line += " " + onDemandMark
		}
		if _, err := fmt.Fprintln(w, line); err != nil {
			return err
		}
	}
	return nil
}

// ParseList reads a list written by FormatList. Every dependency must appear
// on an earlier line, which is what makes the list a valid load order.
func ParseList(r io.Reader) ([]Module, error) {
	var mods []Module
	seen := map[string]bool{}
	sc := bufio.NewScanner(r)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		f := strings.Fields(text)
		if len(f) != 3 && (len(f) != 4 || f[3] != onDemandMark) {
			return nil, fmt.Errorf("module list line %d: want \"name path deps\" and optionally %q, got %q", line, onDemandMark, text)
		}
		m := Module{Name: f[0], Path: f[1], OnDemand: len(f) == 4}
		if f[2] != "-" {
			m.Deps = strings.Split(f[2], ",")
		}
		for _, d := range m.Deps {
			if !seen[d] {
				return nil, fmt.Errorf("module list line %d: %s depends on %s, which is not listed before it", line, m.Name, d)
			}
		}
		seen[m.Name] = true
		mods = append(mods, m)
	}
	return mods, sc.Err()
}

// ReadList reads dir/ListName.
func ReadList(dir string) ([]Module, error) {
	f, err := os.Open(filepath.Join(dir, ListName))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ParseList(f)
}

// LoadAll loads mods from dir with finit_module(2). A module starts loading
// as soon as its dependencies are in, so independent chains load in
// parallel. A module the kernel already has (built in or loaded) counts as
// loaded. It returns the first error per failing module, joined; modules that
// depend on a failed one are not attempted.
func LoadAll(dir string, mods []Module) error {
	done := make(map[string]chan struct{}, len(mods))
	failed := make(map[string]bool)
	for _, m := range mods {
		done[m.Name] = make(chan struct{})
	}
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	for _, m := range mods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(done[m.Name])
			for _, d := range m.Deps {
				if ch, ok := done[d]; ok {
					<-ch
				}
				mu.Lock()
				depFailed := failed[d]
				mu.Unlock()
				if depFailed {
					mu.Lock()
					failed[m.Name] = true
					mu.Unlock()
					return
				}
			}
			if err := Load(filepath.Join(dir, m.Path)); err != nil {
				mu.Lock()
				failed[m.Name] = true
				errs = append(errs, fmt.Errorf("load module %s: %w", m.Name, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Queue loads modules one after another, on the goroutine that runs it: for
// loading in the background. It takes them in list order, except that
// modules named in Hurry, with their dependencies, go ahead of the rest,
// earlier calls' before later ones'. Like LoadAll it skips modules whose
// dependencies failed.
type Queue struct {
	dir string

	mu      sync.Mutex
	waiting []Module       // in list order, which is a load order
	rank    map[string]int // hurried modules: the Hurry call that asked first
	calls   int
	failed  map[string]bool
	all     map[string]Module
}

// NewQueue returns a queue of mods, to be loaded from dir by Run.
func NewQueue(dir string, mods []Module) *Queue {
	q := &Queue{dir: dir, waiting: slices.Clone(mods), rank: map[string]int{}, failed: map[string]bool{}, all: map[string]Module{}}
	for _, m := range mods {
		q.all[m.Name] = m
	}
	return q
}

// Hurry puts the named modules and their dependencies ahead of the modules
// not hurried yet, and returns the call's rank (1 for the first call), which
// Run hands its callback for each module this call hurried. Names the queue
// does not hold are ignored: they may be loaded already, or not be in the
// image.
func (q *Queue) Hurry(names ...string) (rank int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.calls++
	var mark func(string)
	mark = func(name string) {
		m, ok := q.all[name]
		if _, ranked := q.rank[name]; ranked || !ok {
			return
		}
		q.rank[name] = q.calls
		for _, d := range m.Deps {
			mark(d)
		}
	}
	for _, name := range names {
		mark(name)
	}
	return q.calls
}

// Len is the number of modules waiting.
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.waiting)
}

// next takes the module to load now off the queue: the first in list order
// of the earliest hurried, or else the first. hurry is the rank of the
// Hurry call that asked for it, 0 for none.
func (q *Queue) next() (m Module, hurry int, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.waiting) == 0 {
		return Module{}, 0, false
	}
	pick := 0
	for i, m := range q.waiting {
		r, ok := q.rank[m.Name]
		if !ok {
			continue
		}
		if best, bestOK := q.rank[q.waiting[pick].Name]; !bestOK || r < best {
			pick = i
		}
	}
	m = q.waiting[pick]
	q.waiting = slices.Delete(q.waiting, pick, pick+1)
	return m, q.rank[m.Name], true
}

// Run loads every module of the queue, including those hurried while it
// runs, and returns the errors of those that failed, joined. If before is
// set, Run calls it before each module with the rank of the Hurry call that
// asked for the module (0 for none): to hold back what may wait.
func (q *Queue) Run(before func(hurry int)) error {
	var errs []error
	for {
		m, hurry, ok := q.next()
		if !ok {
			return errors.Join(errs...)
		}
		if before != nil {
			before(hurry)
		}
		if slices.ContainsFunc(m.Deps, func(d string) bool { return q.failed[d] }) {
			q.failed[m.Name] = true
			continue
		}
		if err := Load(filepath.Join(q.dir, m.Path)); err != nil {
			q.failed[m.Name] = true
			errs = append(errs, fmt.Errorf("load module %s: %w", m.Name, err))
		}
	}
}

// Name is the kernel's name of a module given by file path or name: no
// directory or .ko suffix, and '_' where file names may use '-'.
func Name(path string) string {
	return strings.ReplaceAll(strings.TrimSuffix(filepath.Base(path), ".ko"), "-", "_")
}

// Params are the parameters a module is loaded with, by module name.
var Params = map[string]string{
	// Without it, loading bonding creates an unconfigured bond0; netd
	// creates the bonds the machine config asks for.
	"bonding": "max_bonds=0",
}

// Load loads one uncompressed module file, with its Params.
func Load(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	err = unix.FinitModule(int(f.Fd()), Params[Name(path)], 0)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}

// Split divides mods into the modules named in want together with everything
// they depend on, and the rest, both in list order. Loading first with
// LoadAll and rest later is a valid order: rest may depend on first, never
// the other way round. Names not in mods are returned as missing.
func Split(mods []Module, want ...string) (first, rest []Module, missing []string) {
	byName := make(map[string]Module, len(mods))
	for _, m := range mods {
		byName[m.Name] = m
	}
	picked := map[string]bool{}
	var pick func(name string)
	pick = func(name string) {
		if picked[name] {
			return
		}
		picked[name] = true
		for _, d := range byName[name].Deps {
			pick(d)
		}
	}
	for _, name := range want {
		if _, ok := byName[name]; !ok {
			missing = append(missing, name)
			continue
		}
		pick(name)
	}
	for _, m := range mods {
		if picked[m.Name] {
			first = append(first, m)
		} else {
			rest = append(rest, m)
		}
	}
	return first, rest, missing
}
