package controller

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	memdb "github.com/hashicorp/go-memdb"
)

// Build is one run of an app's build: the builder takes a pushed commit,
// builds it on a cluster host and, when that succeeds, makes a release of
// it and deploys it. One runs per app at a time.
type Build struct {
	// ID is "<app>/<number>", numbered from 1 per app.
	ID     string `json:"id"`
	App    string `json:"app"`
	Number int    `json:"number"`
	// Commit is the pushed commit and Ref the branch it was pushed to.
	Commit string `json:"commit"`
	Ref    string `json:"ref"`
	// State is BuildRunning, BuildSucceeded or BuildFailed.
	State string `json:"state"`
	// Reason says why a failed build failed.
	Reason string `json:"reason,omitempty"`
	// Host is the host the build step ran on (none without one).
	Host string `json:"host,omitempty"`
	// Release is the release made of the build, 0 until it is made.
	Release int `json:"release,omitempty"`
	// Log is the end of the build's output (MaxBuildLog bytes).
	Log     string    `json:"log,omitempty"`
	Started time.Time `json:"started"`
	// Deadline is when a running build counts as abandoned: a push can
	// start the next build then even if this one never ended.
	Deadline time.Time `json:"deadline"`
	Ended    time.Time `json:"ended,omitzero"`
	Meta
}

func (b *Build) key() string { return b.ID }

// Build states.
const (
	BuildRunning   = "running"
	BuildSucceeded = "succeeded"
	BuildFailed    = "failed"
)

// Bounds of builds.
const (
	// MaxBuildLog is how much of a build's output is kept, its end.
	MaxBuildLog = 32 << 10
	// keepBuilds is how many builds an app keeps; older ones go as new
	// ones start.
	keepBuilds = 20
	// maxBuildDeadline bounds how long a build may hold its app.
	maxBuildDeadline = 6 * time.Hour
)

var buildIDRe = regexp.MustCompile(`^([a-z0-9][a-z0-9-]*)/([1-9][0-9]*)$`)

// BuildID names build number n of app.
func BuildID(app string, n int) string { return app + "/" + strconv.Itoa(n) }

// checkBuild checks a build the API is asked to write: a new one (no ID,
// through POST /v1/apps/{name}/builds) or the builder's progress on one.
func checkBuild(o object) error {
	b := o.(*Build)
	switch {
	case b.ID != "" && !buildIDRe.MatchString(b.ID):
		return fmt.Errorf("%w: build id %q: want <app>/<number>", ErrInvalid, b.ID)
	case b.State != BuildRunning && b.State != BuildSucceeded && b.State != BuildFailed:
		return fmt.Errorf("%w: build state %q: use %s, %s or %s", ErrInvalid, b.State, BuildRunning, BuildSucceeded, BuildFailed)
	case b.Deadline.IsZero():
		return fmt.Errorf("%w: a build needs a deadline: when it counts as abandoned", ErrInvalid)
	case b.Commit != "" && !isHex(b.Commit):
		return fmt.Errorf("%w: commit %q: want a hex object name", ErrInvalid, b.Commit)
	}
	b.Log = LogTail(b.Log, MaxBuildLog)
	return nil
}

// LogTail is the end of log in at most n bytes, from a line's start when
// one begins in them.
func LogTail(log string, n int) string {
	if len(log) <= n {
		return log
	}
	log = log[len(log)-n:]
	if i := strings.IndexByte(log, '\n'); i >= 0 {
		return log[i+1:]
	}
	return log
}

func isHex(s string) bool {
	for _, c := range s {
		if !strings.ContainsRune("0123456789abcdef", c) {
			return false
		}
	}
	return len(s) >= 4
}

// admitBuild numbers a new build and refuses it while another build of
// the app runs; for a build that exists, it takes only the builder's
// progress (state, reason, host, release, log, deadline).
func admitBuild(txn *memdb.Txn, index uint64, t time.Time, o object) error {
	b := o.(*Build)
	if b.ID != "" {
		raw, err := txn.First("builds", "id", b.ID)
		if err != nil {
			return err
		}
		if raw == nil {
			return fmt.Errorf("%w: build %s (a build starts with POST /v1/apps/{app}/builds)", ErrNotFound, b.ID)
		}
		old := raw.(*Build)
		if old.State != BuildRunning {
			return fmt.Errorf("%w: build %s has ended (%s)", ErrConflict, b.ID, old.State)
		}
		next := *old
		next.State, next.Reason, next.Host, next.Release, next.Log = b.State, b.Reason, b.Host, b.Release, b.Log
		next.Deadline = minTime(b.Deadline, old.Started.Add(maxBuildDeadline))
		if next.State != BuildRunning && next.Ended.IsZero() {
			next.Ended = t
		}
		*b = next
		return nil
	}
	raw, err := txn.First("apps", "id", b.App)
	if err != nil {
		return err
	}
	if raw == nil {
		return fmt.Errorf("%w: app %s: create it first (plinth apps create %s)", ErrNotFound, b.App, b.App)
	}
	builds, err := appBuilds(txn, b.App)
	if err != nil {
		return err
	}
	last := 0
	for _, o := range builds {
		last = max(last, o.Number)
		if o.State != BuildRunning {
			continue
		}
		if t.Before(o.Deadline) {
			return fmt.Errorf("%w: build %d of %s is running (commit %.12s, started %s): one build per app at a time; wait for it (plinth builds -a %s) and push again",
				ErrConflict, o.Number, b.App, o.Commit, o.Started.UTC().Format(time.RFC3339), b.App)
		}
		// Its builder went away without ending it.
		ended := *o
		ended.State, ended.Reason, ended.Ended = BuildFailed, "abandoned: its builder did not end it by its deadline", t
		if err := put(txn, "builds", &ended, index, nil); err != nil {
			return err
		}
	}
	b.Number = last + 1
	b.ID = BuildID(b.App, b.Number)
	b.State, b.Reason, b.Release, b.Ended = BuildRunning, "", 0, time.Time{}
	b.Started = t
	b.Deadline = minTime(b.Deadline, t.Add(maxBuildDeadline))
	// Keep the newest builds, this one among them.
	slices.SortFunc(builds, func(x, y *Build) int { return x.Number - y.Number })
	for _, o := range builds[:max(0, len(builds)-(keepBuilds-1))] {
		if err := remove(txn, "builds", o.ID, index, nil); err != nil {
			return err
		}
	}
	return nil
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// appBuilds is every build of app.
func appBuilds(txn *memdb.Txn, app string) ([]*Build, error) {
	it, err := txn.Get("builds", "app", app)
	if err != nil {
		return nil, err
	}
	var out []*Build
	for raw := it.Next(); raw != nil; raw = it.Next() {
		out = append(out, raw.(*Build))
	}
	return out, nil
}
