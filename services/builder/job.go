package builder

import (
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/services/controller"
)

// JobID is the ID of the builder's job.
const JobID = "plinth-builder"

// JobSpec is the job that runs the builder: the platform binary on the
// system rootfs, host network, its repositories on the host's data
// partition, a host certificate from hostd that also names ServerName,
// and its service for the routers, tagged as the "builder" formation's.
func JobSpec(binary string) job.Spec {
	dir := DefaultConfig().Dir
	return job.Spec{
		ID:              JobID,
		Rootfs:          job.SystemRootfs,
		Cmd:             []string{binary, "builder", "run"},
		Network:         job.NetworkHost,
		Restart:         job.Restart{Policy: job.RestartAlways},
		Resurrect:       true,
		Credentials:     true,
		CredentialNames: []string{ServerName},
		Volumes:         []job.Volume{{Source: dir, Target: dir}},
		Services:        []job.Service{{Name: ServiceName, Port: Port, Check: &job.Check{Type: job.CheckTCP}}},
		Tags:            map[string]string{controller.FormationTag: "builder"},
	}
}
