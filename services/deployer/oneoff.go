package deployer

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/services/controller"
)

// HostAPI is what one-off jobs use of a host's API; *host.Client has it.
type HostAPI interface {
	CreateJob(ctx context.Context, spec job.Spec) (job.Job, error)
	WaitJob(ctx context.Context, id string) (job.Job, error)
	JobLogs(ctx context.Context, id string, opts job.LogOptions, emit func(job.LogLine) error) error
	RemoveJob(ctx context.Context, id string, force bool) error
}

var _ HostAPI = (*host.Client)(nil)

// PickHost returns an alive, uncordoned host for a one-off job, at
// random so that one-off jobs spread.
func PickHost(hosts []controller.Host) (controller.Host, error) {
	ok := slices.DeleteFunc(slices.Clone(hosts), func(h controller.Host) bool {
		return h.Status != controller.HostAlive || h.Cordoned || h.API == ""
	})
	if len(ok) == 0 {
		return controller.Host{}, errors.New("no alive, uncordoned host to run it on (plinth status)")
	}
	return ok[rand.IntN(len(ok))], nil
}

// RunJob runs spec (restart never) on h to its end, passing each line of
// its output to emit as it comes, removes it, and returns how it exited.
// Ending ctx kills it.
func RunJob(ctx context.Context, h HostAPI, spec job.Spec, emit func(job.LogLine)) (job.Job, error) {
	return RunJobThen(ctx, h, spec, emit, nil)
}

// RunJobThen is RunJob that calls then, when it is set, with the ended
// job before it removes it (to read what the job left).
func RunJobThen(ctx context.Context, h HostAPI, spec job.Spec, emit func(job.LogLine), then func(job.Job) error) (job.Job, error) {
	spec.Restart = job.Restart{Policy: job.RestartNever}
	if _, err := h.CreateJob(ctx, spec); err != nil {
		return job.Job{}, fmt.Errorf("start %s: %w", spec.ID, err)
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		h.RemoveJob(rctx, spec.ID, true)
	}()
	// Follow the output while it runs; once it ended, read what the
	// follower had not passed on yet from the whole log.
	seen := 0
	lctx, stopLogs := context.WithCancel(ctx)
	followed := make(chan struct{})
	go func() {
		defer close(followed)
		h.JobLogs(lctx, spec.ID, job.LogOptions{Follow: true}, func(l job.LogLine) error {
			emit(l)
			seen++
			return nil
		})
	}()
	j, err := h.WaitJob(ctx, spec.ID)
	stopLogs()
	<-followed
	if err != nil {
		return j, fmt.Errorf("wait for %s: %w", spec.ID, err)
	}
	n := 0
	h.JobLogs(ctx, spec.ID, job.LogOptions{}, func(l job.LogLine) error {
		if n++; n > seen {
			emit(l)
		}
		return nil
	})
	if then != nil {
		return j, then(j)
	}
	return j, nil
}

// ExitCode is how a one-off job's exit is said to a shell: its code, or
// 128+signal's conventional 137 when killed.
func ExitCode(j job.Job) int {
	switch e := j.Status.Exit; {
	case e == nil:
		return 1
	case e.Signal != "" || e.OOMKilled:
		return 137
	default:
		return e.Code
	}
}

// releaseCommand runs the release's release command on a host; a
// failure ends the deploy before any new instance starts.
func (r *run) releaseCommand(ctx context.Context, rel *controller.Release) error {
	hosts, _, err := r.d.cfg.Controller.Hosts(ctx, controller.QueryOptions{})
	if err != nil {
		return fmt.Errorf("release command: read hosts: %w", err)
	}
	h, err := PickHost(hosts)
	if err != nil {
		return failed("release command: %v", err)
	}
	if err := r.say(ctx, "release command on %s: %s", h.Hostname, strings.Join(rel.ReleaseCommand, " ")); err != nil {
		return err
	}
	spec := controller.OneOffJob(rel, fmt.Sprintf("%s.release.v%d", rel.App, rel.Version), "release", rel.ReleaseCommand)
	rctx, cancel := context.WithTimeout(ctx, r.d.cfg.ReleaseTimeout)
	defer cancel()
	var tail []string
	j, err := RunJob(rctx, r.d.cfg.Dial(h.API), spec, func(l job.LogLine) {
		tail = append(tail, l.Text)
		if len(tail) > 5 {
			tail = tail[1:]
		}
	})
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case rctx.Err() != nil:
		return failed("release command did not end within %s", r.d.cfg.ReleaseTimeout)
	case err != nil:
		return failed("release command: %v", err)
	case ExitCode(j) != 0:
		return failed("release command exited %d: %s", ExitCode(j), strings.Join(tail, " | "))
	}
	return r.say(ctx, "%s (exit 0)", releaseDone)
}
