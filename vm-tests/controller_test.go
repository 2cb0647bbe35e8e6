//go:build vmtest

package vmtest

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/services/controller"
)

// TestControllerOnThreeVMs: three VMs with the role "controller" run the
// controller as jobs (system rootfs, host network, credentials from
// hostd), which bootstrap one raft cluster: every controller reports the
// same leader and three healthy voters, the three node IDs.
func TestControllerOnThreeVMs(t *testing.T) {
	if controller.DefaultAPIPort != ControllerAPIPort {
		t.Fatalf("harness forwards port %d, the controller listens on %d", ControllerAPIPort, controller.DefaultAPIPort)
	}
	kernel, initrd := plinthImage(t)
	bundlePath, creds, err := ClusterFiles(t.TempDir(), "vmtest")
	if err != nil {
		t.Fatal(err)
	}
	seg := NewSegment(t)
	var cfgs []Config
	for i := range 3 {
		cfgs = append(cfgs, ClusterNode(i, 3, kernel, initrd, seg, bundlePath, controller.RoleController))
	}
	vms := StartN(t, cfgs...)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ids := map[string]bool{}
	ctrls := make([]*controller.Client, len(vms))
	hosts := make([]*host.Client, len(vms))
	for i, vm := range vms {
		if _, err := vm.WaitFor(ctx, "plinth: ready in "); err != nil {
			t.Fatalf("%s: %v\n%s", vm.Name(), err, vm.ConsoleTail(30))
		}
		hc, err := HostClient(vm, creds)
		if err != nil {
			t.Fatal(err)
		}
		hosts[i] = hc
		info, err := hc.Host(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ids[info.ID] = true
		// What bootstrap starts on each controller host.
		spec := controller.JobSpec("/usr/bin/plinth", 3, controller.DefaultConfig().DataDir)
		if _, err := createJobRetrying(ctx, hc, spec); err != nil {
			t.Fatalf("%s: create the controller job: %v\n%s", vm.Name(), err, vm.ConsoleTail(30))
		}
		ctrls[i] = controller.NewClientTransport([]string{vm.HostAddr(ControllerAPIPort)},
			&http.Transport{TLSClientConfig: creds.TLS(), DialContext: vm.DialContext})
	}
	start := time.Now()
	for {
		problem := ""
		leader := ""
		for i, c := range ctrls {
			call, cancelCall := context.WithTimeout(ctx, 10*time.Second)
			st, err := c.Status(call)
			cancelCall()
			switch {
			case err != nil:
				problem = fmt.Sprintf("%s: %v", vms[i].Name(), err)
			case !st.Healthy() || len(st.Voters) != 3:
				problem = fmt.Sprintf("%s: leader %q, voters %+v", vms[i].Name(), st.Leader, st.Voters)
			case leader != "" && st.Leader != leader:
				problem = fmt.Sprintf("%s sees leader %s, another sees %s", vms[i].Name(), st.Leader, leader)
			default:
				leader = st.Leader
				for _, v := range st.Voters {
					if !ids[v.ID] {
						problem = fmt.Sprintf("voter %s is none of the three hosts", v.ID)
					}
				}
			}
			if problem != "" {
				break
			}
		}
		if problem == "" {
			t.Logf("one leader (%s) and three healthy voters %.1fs after the jobs were created", leader, time.Since(start).Seconds())
			return
		}
		if ctx.Err() != nil {
			for i, vm := range vms {
				t.Logf("%s console:\n%s", vm.Name(), vm.ConsoleTail(40))
				lctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				if j, err := hosts[i].Job(lctx, controller.JobID); err == nil {
					t.Logf("%s: controller job %s, pid %d, restarts %d, exit %+v %s", vm.Name(), j.Status.State, j.Status.Pid, j.Status.Restarts, j.Status.Exit, j.Status.Error)
				}
				hosts[i].JobLogs(lctx, controller.JobID, job.LogOptions{Tail: 30}, func(l job.LogLine) error {
					t.Logf("%s controller: %s", vm.Name(), l.Text)
					return nil
				})
				cancel()
			}
			t.Fatalf("controller never healthy: %s", problem)
		}
		time.Sleep(time.Second)
	}
}

// createJobRetrying creates a job, retrying while the host answers 503
// (not ready for it yet, just after boot).
func createJobRetrying(ctx context.Context, c *host.Client, spec job.Spec) (job.Job, error) {
	for {
		j, err := c.CreateJob(ctx, spec)
		if apiErr, ok := err.(*host.APIError); ok && apiErr.StatusCode == http.StatusServiceUnavailable && ctx.Err() == nil {
			time.Sleep(time.Second)
			continue
		}
		return j, err
	}
}
