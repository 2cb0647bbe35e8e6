// Package appspec reads and writes what an app's developer declares: a
// Procfile (process types and their commands, and the release command)
// and plinth.toml (the app's name, its processes with ports, health
// checks, resources and scale, its config, routes and deploy strategy).
// Errors name the file and line.
//
// It is pure: the CLI reads the files and applies what they say through
// the controller's API.
package appspec

import (
	"bufio"
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/services/controller"
)

// ReleaseProcess is the Procfile's name for the release command.
const ReleaseProcess = "release"

// Procfile is a parsed Procfile: a command per process type, in the
// file's order.
type Procfile struct {
	Types    []string
	Commands map[string][]string
	// Release is the release command, if the file names one.
	Release []string
}

var procfileLine = regexp.MustCompile(`^([A-Za-z0-9_-]+)\s*:\s*(.*)$`)

// ParseProcfile reads a Procfile: "type: command" lines, blank lines and
// # comments. file names it in errors.
func ParseProcfile(file string, data []byte) (*Procfile, error) {
	p := &Procfile{Commands: map[string][]string{}}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		m := procfileLine.FindStringSubmatch(line)
		if m == nil {
			return nil, fmt.Errorf("%s:%d: want \"type: command\", such as \"web: ./server\"", file, n)
		}
		typ, cmd := m[1], strings.TrimSpace(m[2])
		if cmd == "" {
			return nil, fmt.Errorf("%s:%d: %s: no command", file, n, typ)
		}
		args, err := Command(cmd)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %s: %v", file, n, typ, err)
		}
		if typ == ReleaseProcess {
			if p.Release != nil {
				return nil, fmt.Errorf("%s:%d: release is named twice", file, n)
			}
			p.Release = args
			continue
		}
		if err := controller.CheckProcessName(typ); err != nil {
			return nil, fmt.Errorf("%s:%d: %v", file, n, err)
		}
		if _, ok := p.Commands[typ]; ok {
			return nil, fmt.Errorf("%s:%d: process type %s is named twice", file, n, typ)
		}
		p.Types = append(p.Types, typ)
		p.Commands[typ] = args
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if len(p.Types) == 0 {
		return nil, fmt.Errorf("%s: no process types: add a line such as \"web: ./server\"", file)
	}
	return p, nil
}

// Command splits a command line as a shell would split plain words and
// quotes. A line that needs a shell (variables, pipes, redirections, &&
// or ;) runs under /bin/sh -c.
func Command(s string) ([]string, error) {
	if strings.ContainsAny(s, "$|&;<>`*?(){}") {
		return []string{"/bin/sh", "-c", s}, nil
	}
	var args []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\'' || c == '"':
			end := strings.IndexByte(s[i+1:], c)
			if end < 0 {
				return nil, fmt.Errorf("unclosed %c quote", c)
			}
			cur.WriteString(s[i+1 : i+1+end])
			i += end + 1
			inWord = true
		case c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
			inWord = true
		case c == ' ' || c == '\t':
			if inWord {
				args = append(args, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		args = append(args, cur.String())
	}
	if len(args) == 0 {
		return nil, errors.New("no command")
	}
	return args, nil
}

// File is plinth.toml: one app, declared.
type File struct {
	App string `toml:"app"`
	// Release is the release command.
	Release   command             `toml:"release,omitempty"`
	Processes map[string]*Process `toml:"processes,omitempty"`
	Config    map[string]string   `toml:"config,omitempty"`
	Routes    []Route             `toml:"routes,omitempty"`
	Deploy    Deploy              `toml:"deploy,omitempty"`
	// Build says how a pushed tree becomes the app's image (git push).
	Build *Build `toml:"build,omitempty"`
}

// Build is plinth.toml's [build].
type Build struct {
	// Base is the image the build runs on and the release is made on:
	// REPO:TAG or REPO@sha256:… in the cluster's registry.
	Base string `toml:"base"`
	// Command runs on Base with the tree at /app and the app's build
	// cache at /cache; what it writes becomes the image's top layer.
	// Without one, the tree is added to Base as it is.
	Command command `toml:"command,omitempty"`
	// Timeout bounds the command; default DefaultBuildTimeout.
	Timeout duration `toml:"timeout,omitempty"`
	// Memory ("1G") and CPUs limit the build; defaults
	// DefaultBuildMemory and no CPU limit.
	Memory string  `toml:"memory,omitempty"`
	CPUs   float64 `toml:"cpus,omitempty"`
}

// Build defaults and bounds.
const (
	DefaultBuildTimeout = 15 * time.Minute
	MaxBuildTimeout     = 2 * time.Hour
	DefaultBuildMemory  = 1 << 30
)

// Process is one process type in plinth.toml.
type Process struct {
	Cmd   command `toml:"cmd,omitempty"`
	Port  int     `toml:"port,omitempty"`
	Proto string  `toml:"proto,omitempty"`
	// Scale is how many instances run; absent, the app's current
	// scale (or one web, no other).
	Scale *int   `toml:"scale,omitempty"`
	Check *Check `toml:"check,omitempty"`
	// Memory ("256M", "1G") and CPUs (1.5) limit each instance.
	Memory string  `toml:"memory,omitempty"`
	CPUs   float64 `toml:"cpus,omitempty"`
}

// Check is a process's health check in plinth.toml.
type Check struct {
	Type     string   `toml:"type"`
	Path     string   `toml:"path,omitempty"`
	Status   int      `toml:"status,omitempty"`
	Command  command  `toml:"command,omitempty"`
	Interval duration `toml:"interval,omitempty"`
	Timeout  duration `toml:"timeout,omitempty"`
}

// Route is a route to one of the app's processes in plinth.toml.
type Route struct {
	// Type is http, tcp or udp.
	Type    string `toml:"type"`
	Process string `toml:"process,omitempty"` // default web
	Domain  string `toml:"domain,omitempty"`
	Path    string `toml:"path,omitempty"`
	Port    int    `toml:"port,omitempty"`
	PortEnd int    `toml:"port_end,omitempty"`
	Sticky  bool   `toml:"sticky,omitempty"`
}

// Deploy is how the app's deploys run.
type Deploy struct {
	Strategy      string   `toml:"strategy,omitempty"`
	HealthTimeout duration `toml:"health_timeout,omitempty"`
}

// command is a command given as a string (split as Command splits) or
// an array of arguments.
type command []string

func (c *command) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case string:
		args, err := Command(v)
		if err != nil {
			return err
		}
		*c = args
		return nil
	case []any:
		for _, a := range v {
			s, ok := a.(string)
			if !ok {
				return errors.New("want a string or an array of strings")
			}
			*c = append(*c, s)
		}
		return nil
	}
	return errors.New("want a string or an array of strings")
}

// duration is a time.Duration written "30s".
type duration struct{ time.Duration }

func (d *duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("want a duration such as 30s")
	}
	d.Duration = v
	return nil
}

func (d duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

func (d duration) IsZero() bool { return d.Duration == 0 }

// ParseFile reads plinth.toml; file names it in errors, with the line.
func ParseFile(file string, data []byte) (*File, error) {
	var f File
	md, err := toml.Decode(string(data), &f)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("%s:%d: %s", file, pe.Position.Line, pe.Message)
		}
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if keys := md.Undecoded(); len(keys) > 0 {
		k := keys[0]
		return nil, fmt.Errorf("%s:%d: %s: unknown key (see docs/apps.md for plinth.toml)", file, lineOf(data, k[:len(k)-1], k[len(k)-1]), k)
	}
	if err := f.check(); err != nil {
		var fe *fieldError
		if errors.As(err, &fe) {
			return nil, fmt.Errorf("%s:%d: %s: %s", file, lineOf(data, fe.table, fe.key), strings.Join(append(slices.Clone(fe.table), fe.key), "."), fe.msg)
		}
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return &f, nil
}

// fieldError is a bad value at table.key.
type fieldError struct {
	table []string
	key   string
	msg   string
}

func (e *fieldError) Error() string { return e.key + ": " + e.msg }

func bad(table []string, key, format string, args ...any) error {
	return &fieldError{table: table, key: key, msg: fmt.Sprintf(format, args...)}
}

func (f *File) check() error {
	if f.App != "" && (len(f.App) > controller.MaxAppName || !dnsLabel.MatchString(f.App)) {
		return bad(nil, "app", "use 1 to %d of a-z, 0-9 and '-', starting and ending with a letter or digit", controller.MaxAppName)
	}
	for _, typ := range slices.Sorted(maps.Keys(f.Processes)) {
		p := f.Processes[typ]
		at := []string{"processes", typ}
		if err := controller.CheckProcessName(typ); err != nil {
			return bad([]string{"processes"}, typ, "%v", err)
		}
		if p.Port < 0 || p.Port > 65535 {
			return bad(at, "port", "give 1 to 65535")
		}
		if p.Proto != "" && p.Proto != "tcp" && p.Proto != "udp" {
			return bad(at, "proto", "use tcp or udp")
		}
		if p.Scale != nil && (*p.Scale < 0 || *p.Scale > 100) {
			return bad(at, "scale", "give 0 to 100")
		}
		if p.Memory != "" {
			if _, err := ParseBytes(p.Memory); err != nil {
				return bad(at, "memory", "%v", err)
			}
		}
		if p.CPUs < 0 {
			return bad(at, "cpus", "cannot be negative")
		}
		if p.Check != nil {
			if p.Port == 0 {
				return bad(at, "check", "a health check needs the process's port")
			}
			switch p.Check.Type {
			case job.CheckHTTP, job.CheckTCP:
			case job.CheckCommand:
				if len(p.Check.Command) == 0 {
					return bad(append(at, "check"), "command", "give the command a command check runs")
				}
			default:
				return bad(append(at, "check"), "type", "use http, tcp or command")
			}
		}
	}
	for k, v := range f.Config {
		if err := controller.CheckConfigVar(k, v); err != nil {
			return bad([]string{"config"}, k, "%v", err)
		}
	}
	for i, r := range f.Routes {
		at := []string{"routes"}
		proc := cmp.Or(r.Process, controller.WebProcess)
		if _, ok := f.Processes[proc]; !ok && len(f.Processes) > 0 {
			return bad(at, "process", "route %d: no process %q in [processes]", i+1, proc)
		}
		switch r.Type {
		case controller.RouteHTTP:
			if r.Domain == "" {
				return bad(at, "domain", "route %d: an http route needs a domain", i+1)
			}
		case controller.RouteTCP, controller.RouteUDP:
			if r.Domain != "" || r.Path != "" {
				return bad(at, "domain", "route %d: a %s route has a port, not a domain", i+1, r.Type)
			}
		default:
			return bad(at, "type", "route %d: use http, tcp or udp", i+1)
		}
	}
	switch f.Deploy.Strategy {
	case "", controller.StrategyRolling, controller.StrategyAllAtOnce:
	default:
		return bad([]string{"deploy"}, "strategy", "use %s or %s", controller.StrategyRolling, controller.StrategyAllAtOnce)
	}
	if b := f.Build; b != nil {
		at := []string{"build"}
		switch {
		case b.Base == "":
			return bad(at, "base", "give the image to build on, as REPO:TAG in the cluster's registry (push one with plinth deploy, skopeo or docker)")
		case registryHost(b.Base):
			return bad(at, "base", "%q: name an image in the cluster's registry (REPO:TAG or REPO@sha256:…), without a registry host", b.Base)
		case b.Timeout.Duration < 0 || b.Timeout.Duration > MaxBuildTimeout:
			return bad(at, "timeout", "give up to %s", MaxBuildTimeout)
		case b.CPUs < 0:
			return bad(at, "cpus", "cannot be negative")
		}
		if b.Memory != "" {
			if _, err := ParseBytes(b.Memory); err != nil {
				return bad(at, "memory", "%v", err)
			}
		}
	}
	return nil
}

// registryHost reports whether ref starts with a registry's host, as
// "docker.io/library/busybox" or "localhost:5000/app" do.
func registryHost(ref string) bool {
	first, _, more := strings.Cut(ref, "/")
	return more && (strings.ContainsAny(first, ".:") || first == "localhost")
}

// ParseTree reads an app's declaration from the files of a source tree:
// plinth.toml and the Procfile, either of which may be nil (absent); nil
// when both are.
func ParseTree(file, procfile []byte) (*File, error) {
	var decl *File
	if file != nil {
		var err error
		if decl, err = ParseFile("plinth.toml", file); err != nil {
			return nil, err
		}
	}
	if procfile != nil {
		p, err := ParseProcfile("Procfile", procfile)
		if err != nil {
			return nil, err
		}
		if decl == nil {
			decl = &File{}
		}
		decl.WithProcfile(p)
	}
	return decl, nil
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)

// lineOf finds the line of key in table (a [a.b] header, or dotted
// keys at the top), or the table's header line; 0 if neither is found.
func lineOf(data []byte, table []string, key string) int {
	header := "[" + strings.Join(table, ".") + "]"
	arrayHeader := "[[" + strings.Join(table, ".") + "]]"
	inTable := len(table) == 0
	headerLine := 0
	keyRE := regexp.MustCompile(`^"?` + regexp.QuoteMeta(key) + `"?\s*=`)
	dotted := regexp.MustCompile(`^` + regexp.QuoteMeta(strings.Join(append(slices.Clone(table), key), ".")) + `\s*=`)
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "[") {
			inTable = line == header || line == arrayHeader
			if inTable && headerLine == 0 {
				headerLine = n
			}
			continue
		}
		if (inTable && keyRE.MatchString(line)) || dotted.MatchString(line) {
			return n
		}
	}
	return headerLine
}

// ParseBytes reads a size such as 512M, 1G or 1048576.
func ParseBytes(s string) (int64, error) {
	mult := int64(1)
	num := strings.TrimSuffix(strings.ToUpper(s), "B")
	switch {
	case strings.HasSuffix(num, "K"):
		mult, num = 1<<10, strings.TrimSuffix(num, "K")
	case strings.HasSuffix(num, "M"):
		mult, num = 1<<20, strings.TrimSuffix(num, "M")
	case strings.HasSuffix(num, "G"):
		mult, num = 1<<30, strings.TrimSuffix(num, "G")
	}
	v, err := strconv.ParseInt(num, 10, 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("size %q: want a number with K, M or G, such as 256M", s)
	}
	return v * mult, nil
}

// DefaultWebPort is the port of a web process that names none, given to
// it as $PORT.
const DefaultWebPort = 8080

// Processes are the release processes the file declares, or nil when it
// declares none. A web process without a port listens on
// DefaultWebPort.
func (f *File) ReleaseProcesses() map[string]controller.Process {
	if len(f.Processes) == 0 {
		return nil
	}
	out := map[string]controller.Process{}
	for typ, p := range f.Processes {
		cp := controller.Process{Cmd: p.Cmd, Port: p.Port, Proto: p.Proto}
		if typ == controller.WebProcess && cp.Port == 0 {
			cp.Port = DefaultWebPort
		}
		if p.Memory != "" {
			cp.Resources.MemoryBytes, _ = ParseBytes(p.Memory)
		}
		cp.Resources.CPUQuota = p.CPUs
		if c := p.Check; c != nil {
			cp.Check = &job.Check{Type: c.Type, Path: c.Path, Status: c.Status, Command: c.Command,
				Interval: job.Duration{Duration: c.Interval.Duration}, Timeout: job.Duration{Duration: c.Timeout.Duration}}
		}
		out[typ] = cp
	}
	return out
}

// WithProcfile gives the file the Procfile's commands: process types
// the file does not declare are added, and the file's processes without
// a command take the Procfile's.
func (f *File) WithProcfile(p *Procfile) {
	if f.Processes == nil {
		f.Processes = map[string]*Process{}
	}
	for _, typ := range p.Types {
		proc, ok := f.Processes[typ]
		if !ok {
			proc = &Process{}
			f.Processes[typ] = proc
		}
		if len(proc.Cmd) == 0 {
			proc.Cmd = p.Commands[typ]
		}
	}
	if len(f.Release) == 0 {
		f.Release = p.Release
	}
}

// Export writes what runs as plinth.toml: app, its serving release's
// processes at scale, config, routes and strategy.
func Export(app controller.App, r controller.Release, routes []controller.Route) ([]byte, error) {
	f := File{App: app.Name, Release: r.ReleaseCommand, Config: r.Config, Processes: map[string]*Process{}}
	for typ, p := range r.Processes {
		n := app.ScaleOf(typ)
		proc := &Process{Cmd: p.Cmd, Port: p.Port, Proto: p.Proto, Scale: &n, CPUs: p.Resources.CPUQuota}
		if p.Resources.MemoryBytes > 0 {
			proc.Memory = strconv.FormatInt(p.Resources.MemoryBytes>>20, 10) + "M"
		}
		if c := p.Check; c != nil {
			proc.Check = &Check{Type: c.Type, Path: c.Path, Status: c.Status, Command: c.Command,
				Interval: duration{c.Interval.Duration}, Timeout: duration{c.Timeout.Duration}}
		}
		f.Processes[typ] = proc
	}
	for _, rt := range routes {
		proc := ""
		for typ := range r.Processes {
			if controller.ServiceName(app.Name, typ) == rt.Service {
				proc = typ
			}
		}
		if proc == "" {
			continue
		}
		if proc == controller.WebProcess {
			proc = ""
		}
		f.Routes = append(f.Routes, Route{Type: rt.Type, Process: proc, Domain: rt.Domain, Path: rt.Path, Port: rt.Port, PortEnd: rt.PortEnd, Sticky: rt.Sticky})
	}
	if app.Strategy != "" {
		f.Deploy.Strategy = app.Strategy
	}
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(f); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
