package scheduler

import (
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/services/controller"
)

// JobID is the ID of the scheduler's job on each host that runs one.
const JobID = "plinth-scheduler"

// JobSpec is the job that runs a scheduler: the platform binary on the
// system rootfs with the host's network (it calls every host's API),
// restarted always and brought back at boot, with a host certificate
// from hostd, tagged as the "scheduler" formation's.
func JobSpec(binary string) job.Spec {
	return job.Spec{
		ID:          JobID,
		Rootfs:      job.SystemRootfs,
		Cmd:         []string{binary, "scheduler", "run"},
		Network:     job.NetworkHost,
		Restart:     job.Restart{Policy: job.RestartAlways},
		Resurrect:   true,
		Credentials: true,
		Tags:        map[string]string{controller.FormationTag: "scheduler"},
	}
}
