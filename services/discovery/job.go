package discovery

import (
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/services/controller"
)

// JobID is the ID of the discovery agent's job on every host.
const JobID = "plinth-discovery"

// JobSpec is the job that runs the discovery agent on a host: the
// platform binary on the system rootfs with the host's network (it
// checks instances where they are, and serves DNS on the host's port
// 53), restarted always and brought back at boot, with a host
// certificate from hostd. Its resolvers for other names are the ones
// hostd gives the job in /etc/resolv.conf (the host's, after the agent
// itself, which it skips).
func JobSpec(binary string) job.Spec {
	return job.Spec{
		ID:          JobID,
		Rootfs:      job.SystemRootfs,
		Cmd:         []string{binary, "discovery", "run", "--resolv-conf", "/etc/resolv.conf"},
		Network:     job.NetworkHost,
		Restart:     job.Restart{Policy: job.RestartAlways},
		Resurrect:   true,
		Credentials: true,
		Tags:        map[string]string{controller.FormationTag: "discovery"},
	}
}
