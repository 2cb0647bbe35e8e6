package host

import (
	"context"
	"slices"
	"strings"

	"github.com/plinth-os/plinth/host/job"
)

// announceJobs logs one line whenever every job the host brings back at
// boot (Resurrect: the platform's own jobs and the scheduler's) runs,
// and the set is not the one it last announced. On a machine hostd's log
// is the console, where this line says the host's platform is up.
func (d *Daemon) announceJobs(ctx context.Context) {
	events, stop := d.jobs.Subscribe()
	defer stop()
	var last string
	check := func() {
		var ids []string
		for _, j := range d.jobs.List() {
			if !j.Spec.Resurrect {
				continue
			}
			if j.Status.State != job.StateRunning {
				return
			}
			ids = append(ids, j.Spec.ID)
		}
		slices.Sort(ids)
		if set := strings.Join(ids, ","); len(ids) > 0 && set != last {
			d.log.Info("platform jobs up", "count", len(ids), "jobs", set)
			last = set
		}
	}
	check()
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-events:
			if !ok {
				return
			}
			check()
		}
	}
}
