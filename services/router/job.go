package router

import (
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/services/controller"
)

// JobID is the ID of the router's job on every host.
const JobID = "plinth-router"

// JobSpec is the job that runs a host's router: the platform binary on
// the system rootfs with the host's network (so every address of every
// host serves every route), restarted always and brought back at boot,
// with a host certificate from hostd (its API and the controller's),
// tagged as the "router" formation's.
func JobSpec(binary string) job.Spec {
	return job.Spec{
		ID:          JobID,
		Rootfs:      job.SystemRootfs,
		Cmd:         []string{binary, "router", "run"},
		Network:     job.NetworkHost,
		Restart:     job.Restart{Policy: job.RestartAlways},
		Resurrect:   true,
		Credentials: true,
		Tags:        map[string]string{controller.FormationTag: "router"},
	}
}
