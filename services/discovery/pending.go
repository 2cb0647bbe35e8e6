package discovery

import (
	"time"

	"github.com/plinth-os/plinth/host/job"
)

// Mirrors of what host/job is getting; they go when it lands.
type execResult struct {
	ExitCode int
	Output   string
}

type jobService struct {
	Name  string
	Port  int
	Proto string
	Check *jobCheck
}

type jobCheck struct {
	Type     string
	Path     string
	Status   int
	Command  []string
	Interval job.Duration
	Timeout  job.Duration
}

const (
	defaultCheckInterval = 10 * time.Second
	defaultCheckTimeout  = 2 * time.Second
)

func servicesOf(j job.Job) []jobService { return nil }
