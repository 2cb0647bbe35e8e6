package job

import (
	"cmp"
	"fmt"
	"strings"
	"time"
)

// Service is a network service a job offers, with the health check that
// tells whether it answers. Layer 0 only keeps it with the job and
// returns it: the platform's discovery agent reads it through the host
// API, runs the check and publishes the service.
type Service struct {
	// Name is a DNS label: 1 to 63 of a-z, 0-9 and '-', not starting or
	// ending with '-'; unique within the job.
	Name string `json:"name"`
	// Port is the port the job listens on, in its own network namespace
	// (a bridge job's address, or the host's).
	Port int `json:"port"`
	// Proto is "tcp" (default) or "udp".
	Proto string `json:"proto,omitempty"`
	// Check, if set, is how the service's health is checked.
	Check *Check `json:"check,omitempty"`
}

// Check is a service's health check.
type Check struct {
	// Type is CheckTCP (the port accepts a connection), CheckHTTP (GET
	// Path answers Status) or CheckCommand (Command, run inside the job,
	// exits 0).
	Type string `json:"type"`
	// Path is what an HTTP check asks for; default "/".
	Path string `json:"path,omitempty"`
	// Status is the status an HTTP check expects; default 200.
	Status int `json:"status,omitempty"`
	// Command is what a command check runs inside the job, with its
	// environment, user and working directory.
	Command []string `json:"command,omitempty"`
	// Interval is the time between checks; default DefaultCheckInterval.
	Interval Duration `json:"interval,omitzero"`
	// Timeout bounds one check; default DefaultCheckTimeout, or Interval
	// when that is shorter.
	Timeout Duration `json:"timeout,omitzero"`
}

// Check types.
const (
	CheckTCP     = "tcp"
	CheckHTTP    = "http"
	CheckCommand = "command"
)

// Check defaults, filled by Check.WithDefaults.
const (
	DefaultCheckInterval = 5 * time.Second
	DefaultCheckTimeout  = 2 * time.Second
	DefaultCheckPath     = "/"
	DefaultCheckStatus   = 200
)

// WithDefaults returns s with the defaults filled in: proto tcp and its
// check's defaults.
func (s Service) WithDefaults() Service {
	s.Proto = cmp.Or(s.Proto, "tcp")
	if s.Check != nil {
		c := s.Check.WithDefaults()
		s.Check = &c
	}
	return s
}

// WithDefaults returns c with the defaults of its type filled in.
func (c Check) WithDefaults() Check {
	if c.Interval.Duration == 0 {
		c.Interval.Duration = DefaultCheckInterval
	}
	if c.Timeout.Duration == 0 {
		c.Timeout.Duration = min(DefaultCheckTimeout, c.Interval.Duration)
	}
	if c.Type == CheckHTTP {
		c.Path = cmp.Or(c.Path, DefaultCheckPath)
		c.Status = cmp.Or(c.Status, DefaultCheckStatus)
	}
	return c
}

// CheckServices reports the first problem with a job's services, for a
// job on network.
func CheckServices(services []Service, network string) error {
	if len(services) > 0 && network != NetworkHost && network != NetworkBridge {
		return fmt.Errorf("services need a network to be reached on: set network to %q or %q", NetworkHost, NetworkBridge)
	}
	names := map[string]bool{}
	for _, s := range services {
		if !isDNSLabel(s.Name) {
			return fmt.Errorf("service name %q: use 1 to 63 of a-z, 0-9 and '-', not starting or ending with '-'", s.Name)
		}
		if names[s.Name] {
			return fmt.Errorf("service %s is declared twice; give each service its own name", s.Name)
		}
		names[s.Name] = true
		if s.Port < 1 || s.Port > 65535 {
			return fmt.Errorf("service %s: port %d: use 1 to 65535", s.Name, s.Port)
		}
		proto := cmp.Or(s.Proto, "tcp")
		if proto != "tcp" && proto != "udp" {
			return fmt.Errorf("service %s: proto %q: use tcp or udp", s.Name, s.Proto)
		}
		if s.Check != nil {
			if err := s.Check.check(proto); err != nil {
				return fmt.Errorf("service %s: check: %v", s.Name, err)
			}
		}
	}
	return nil
}

// check reports the first problem with c, for a service on proto.
func (c *Check) check(proto string) error {
	switch c.Type {
	case CheckTCP, CheckHTTP:
		if proto != "tcp" {
			return fmt.Errorf("%s checks need a tcp service; use a command check for a %s one", c.Type, proto)
		}
	case CheckCommand:
		if len(c.Command) == 0 || c.Command[0] == "" {
			return fmt.Errorf("command is empty: give the command to run inside the job")
		}
	default:
		return fmt.Errorf("type %q: use %q, %q or %q", c.Type, CheckTCP, CheckHTTP, CheckCommand)
	}
	switch {
	case c.Type != CheckHTTP && (c.Path != "" || c.Status != 0):
		return fmt.Errorf("path and status are for http checks only")
	case c.Type != CheckCommand && len(c.Command) > 0:
		return fmt.Errorf("command is for command checks only")
	case c.Path != "" && !strings.HasPrefix(c.Path, "/"):
		return fmt.Errorf("path %q: start it with '/'", c.Path)
	case c.Status != 0 && (c.Status < 100 || c.Status > 599):
		return fmt.Errorf("status %d: use an HTTP status, 100 to 599", c.Status)
	case c.Interval.Duration < 0 || c.Timeout.Duration < 0:
		return fmt.Errorf("interval and timeout cannot be negative")
	}
	if d := c.WithDefaults(); d.Timeout.Duration > d.Interval.Duration {
		return fmt.Errorf("timeout %v is longer than the interval %v; shorten the timeout or lengthen the interval", d.Timeout.Duration, d.Interval.Duration)
	}
	return nil
}

// isDNSLabel reports whether s is 1 to 63 of a-z, 0-9 and '-', neither
// starting nor ending with '-'.
func isDNSLabel(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
