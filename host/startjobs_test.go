package host

import (
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host/job"
)

// A configured start job runs once: one that succeeded is left alone
// when hostd starts again, one that failed is created again.
func TestStartJobsRunUntilTheySucceed(t *testing.T) {
	if DefaultConfig().Init == "" {
		t.Skip("needs tini (apt-get install tini)")
	}
	root := busyboxRoot(t)
	ok := job.Spec{ID: fmt.Sprintf("start-ok-%d", os.Getpid()), Rootfs: root, Cmd: []string{"true"}}
	bad := job.Spec{ID: fmt.Sprintf("start-bad-%d", os.Getpid()), Rootfs: root, Cmd: []string{"sh", "-c", "exit 3"}}
	cfg := loopbackConfig(t, "127.0.0.1", "alpha", 0)
	cfg.Bundle, cfg.StartJobs = newBundle(t), []job.Spec{ok, bad}

	ended := func(d *Daemon) map[string]job.Job {
		t.Helper()
		out := map[string]job.Job{}
		waitFor(t, "both start jobs ended", 20*time.Second, func() error {
			for _, s := range []job.Spec{ok, bad} {
				j, err := d.jobs.Get(s.ID)
				if err != nil {
					return err
				}
				if j.Status.State != job.StateExited {
					return errors.New(s.ID + " is " + j.Status.State)
				}
				out[s.ID] = j
			}
			return nil
		})
		return out
	}
	d, stop := runHostStop(t, cfg)
	first := ended(d)
	if c := first[bad.ID].Status.Exit; c == nil || c.Code != 3 {
		t.Fatalf("%s: exit %+v, want 3", bad.ID, c)
	}
	stop()

	d, _ = runHostStop(t, cfg)
	var again map[string]job.Job
	waitFor(t, "the failed start job started again", 20*time.Second, func() error {
		again = ended(d)
		if !again[bad.ID].Status.StartedAt.After(first[bad.ID].Status.StartedAt) {
			return errors.New("not started again yet")
		}
		return nil
	})
	if !again[ok.ID].Status.StartedAt.Equal(first[ok.ID].Status.StartedAt) {
		t.Errorf("%s succeeded, yet ran again at %s", ok.ID, again[ok.ID].Status.StartedAt)
	}
	for _, s := range []job.Spec{ok, bad} {
		d.jobs.Remove(t.Context(), s.ID, true)
	}
}
