package registry

import (
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/services/controller"
)

// JobID is the ID of the registry's job on every host.
const JobID = "plinth-registry"

// JobSpec is the job that runs a host's registry: the platform binary on
// the system rootfs, host network, its blobs on the host's data
// partition, with a host certificate from hostd, tagged as the
// "registry" formation's.
func JobSpec(binary string) job.Spec {
	dir := DefaultConfig().Dir
	return job.Spec{
		ID:          JobID,
		Rootfs:      job.SystemRootfs,
		Cmd:         []string{binary, "registry", "run"},
		Network:     job.NetworkHost,
		Restart:     job.Restart{Policy: job.RestartAlways},
		Resurrect:   true,
		Credentials: true,
		Volumes:     []job.Volume{{Source: dir, Target: dir}},
		Tags:        map[string]string{controller.FormationTag: "registry"},
	}
}
