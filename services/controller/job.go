package controller

import (
	"strconv"

	"github.com/plinth-os/plinth/host/job"
)

// JobID is the ID of the controller's job on each controller host.
const JobID = "plinth-controller"

// JobSpec is the job that runs a controller voter on a host: the
// platform binary on the system rootfs, host network, restarted always
// and brought back at boot, with its data directory on the host's data
// partition (dataDir on the host, DefaultConfig().DataDir in the job) and
// a host certificate from hostd. expect is how many voters a first start
// waits for.
func JobSpec(binary string, expect int, dataDir string) job.Spec {
	dir := DefaultConfig().DataDir
	return job.Spec{
		ID:          JobID,
		Rootfs:      job.SystemRootfs,
		Cmd:         []string{binary, "controller", "run", "--expect", strconv.Itoa(expect)},
		Network:     job.NetworkHost,
		Restart:     job.Restart{Policy: job.RestartAlways},
		Resurrect:   true,
		Credentials: true,
		Volumes:     []job.Volume{{Source: dataDir, Target: dir}},
		Tags:        map[string]string{FormationTag: "controller"},
	}
}
