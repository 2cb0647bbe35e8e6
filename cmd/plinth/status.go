package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/plinth-os/plinth/bootstrap"
	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/labels"
	"github.com/plinth-os/plinth/host/slots"
	"github.com/plinth-os/plinth/services/controller"
	"github.com/plinth-os/plinth/services/scheduler"
)

// platformStatus is `plinth status`: the whole platform on one screen.
type platformStatus struct {
	Healthy bool `json:"healthy"`
	// Problems make the platform unhealthy; Warnings do not.
	Problems   []string           `json:"problems"`
	Warnings   []string           `json:"warnings"`
	Controller controllerSummary  `json:"controller"`
	Scheduler  *controller.Lease  `json:"scheduler"`
	Hosts      []hostSummary      `json:"hosts"`
	Formations []formationSummary `json:"formations"`
}

type controllerSummary struct {
	Leader string             `json:"leader"`
	Term   uint64             `json:"term"`
	Voters []controller.Voter `json:"voters"`
}

type hostSummary struct {
	controller.Host
	Jobs int `json:"jobs"`
	// MemoryAvailableBytes is what the host said; 0 when it did not answer.
	MemoryAvailableBytes int64  `json:"memory_available_bytes"`
	Error                string `json:"error,omitempty"`
	// Slots are a disk-installed host's slots and upgrade state, as the
	// host said.
	Slots *host.SlotsInfo `json:"slots,omitempty"`
}

type formationSummary struct {
	Name    string `json:"name"`
	Omni    bool   `json:"omni"`
	Desired int    `json:"desired"`
	Running int    `json:"running"`
	Reason  string `json:"reason,omitempty"`
}

// clockSlack is how far the controller leader's clock, which dates the
// scheduler's lease, may be from this one's before a lease that ran out
// counts as gone.
const clockSlack = 5 * time.Second

// errUnhealthy makes `plinth status` exit 1 after printing.
var errUnhealthy = errors.New("the platform is not healthy")

func statusCommand() *cobra.Command {
	f := &clusterFlags{}
	cmd := &cobra.Command{
		Use:   "status",
		Short: "The platform on one screen; exits 1 when it is not healthy",
		Long: "status shows the controller's leader and voters, the active scheduler, every host\n" +
			"(address, Serf status, cordon, jobs, available memory) and every formation (desired\n" +
			"and running instances), problems first. The platform is healthy when the controller\n" +
			"has a leader, a scheduler is active and every formation runs in full; a failed host\n" +
			"or voter alone is a warning. Exit status 1 means not healthy, so scripts can wait on it.",
		Args:          cobra.NoArgs,
		SilenceErrors: true,
		RunE: func(*cobra.Command, []string) error {
			var st platformStatus
			err := withTimeout(20*time.Second, func(ctx context.Context) error {
				creds, err := f.credentials()
				if err != nil {
					return err
				}
				c, err := f.controllerClient(ctx)
				if err != nil {
					return err
				}
				st = gatherStatus(ctx, c, creds.TLS())
				return nil
			})
			if err != nil {
				fmt.Fprintln(os.Stderr, "plinth status:", err)
				return err
			}
			if f.asJSON {
				if err := printJSON(st); err != nil {
					return err
				}
			} else {
				printPlatformStatus(st)
			}
			if !st.Healthy {
				return errUnhealthy
			}
			return nil
		},
	}
	f.register(cmd, true)
	return cmd
}

// gatherStatus reads everything status shows; what it cannot read is a
// problem in the result, not an error.
func gatherStatus(ctx context.Context, c *controller.Client, tlsConfig *tls.Config) platformStatus {
	st := platformStatus{Problems: []string{}, Warnings: []string{}, Hosts: []hostSummary{}, Formations: []formationSummary{}}
	problem := func(format string, args ...any) { st.Problems = append(st.Problems, fmt.Sprintf(format, args...)) }
	warn := func(format string, args ...any) { st.Warnings = append(st.Warnings, fmt.Sprintf(format, args...)) }

	cs, err := c.Status(ctx)
	if err != nil {
		problem("controller: %v", err)
		st.Healthy = false
		return st
	}
	st.Controller = controllerSummary{Leader: cs.Leader, Term: cs.Term, Voters: cs.Voters}
	if cs.Leader == "" {
		problem("controller: no leader (quorum lost, or an election under way)")
	}
	for _, v := range cs.Voters {
		if !v.Healthy {
			warn("controller voter %s (%s) is not healthy: %s", v.ID, v.Hostname, cmp.Or(v.Error, v.Serf))
		}
	}
	if cs.Leader == "" {
		return st
	}

	// A platform whose bootstrap has not finished is not healthy yet,
	// however well its first formations run.
	if _, _, err := c.Setting(ctx, bootstrap.BootstrappedKey, controller.QueryOptions{}); controller.IsNotFound(err) {
		problem("bootstrap has not finished (see plinth cluster bootstrap, or the plinth-bootstrap job's logs)")
	} else if err != nil {
		problem("read the bootstrap setting: %v", err)
	}
	leases, _, err := c.Leases(ctx, controller.QueryOptions{})
	if err != nil {
		problem("read leases: %v", err)
	}
	for _, l := range leases {
		if l.Name == scheduler.LeaseName {
			st.Scheduler = &l
		}
	}
	switch {
	case err != nil:
	case st.Scheduler == nil:
		problem("scheduler: none is active")
	case time.Since(st.Scheduler.Expires) > clockSlack:
		problem("scheduler: %s's lease ran out at %s and nobody took it", st.Scheduler.Holder, st.Scheduler.Expires.Local().Format(time.TimeOnly))
		st.Scheduler = nil
	}

	hosts, _, err := c.Hosts(ctx, controller.QueryOptions{})
	if err != nil {
		problem("read hosts: %v", err)
	}
	placements, _, err := c.Placements(ctx, controller.QueryOptions{})
	if err != nil {
		problem("read placements: %v", err)
	}
	jobs := map[string]int{}
	for _, p := range placements {
		jobs[p.Host]++
	}
	st.Hosts = make([]hostSummary, len(hosts))
	var wg sync.WaitGroup
	for i, h := range hosts {
		st.Hosts[i] = hostSummary{Host: h, Jobs: jobs[h.ID]}
		if h.Status != controller.HostAlive {
			continue
		}
		wg.Go(func() {
			hctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			info, err := host.NewClient(h.API, tlsConfig).Host(hctx)
			if err != nil {
				st.Hosts[i].Error = err.Error()
				return
			}
			st.Hosts[i].MemoryAvailableBytes = info.MemoryAvailableBytes
			if len(info.Slots.Slots) > 0 {
				st.Hosts[i].Slots = &info.Slots
			}
		})
	}
	wg.Wait()
	for _, h := range st.Hosts {
		switch {
		case h.Status != controller.HostAlive && h.Status != controller.HostLeft:
			warn("host %s (%s) is %s", h.ID, h.Hostname, h.Status)
		case h.Error != "":
			warn("host %s (%s) does not answer: %s", h.ID, h.Hostname, h.Error)
		}
	}

	fs, _, err := c.Formations(ctx, controller.QueryOptions{})
	if err != nil {
		problem("read formations: %v", err)
	}
	for _, f := range fs {
		s := formationSummary{Name: f.Name, Omni: f.Omni, Desired: f.Status.Desired, Running: f.Status.Running, Reason: f.Status.Reason}
		if !f.Omni {
			s.Desired = f.Count
		}
		st.Formations = append(st.Formations, s)
		switch {
		case st.Scheduler == nil:
		case f.Status.Token != st.Scheduler.Token:
			problem("formation %s: not checked yet by the active scheduler", f.Name)
		case s.Running < s.Desired || s.Reason != "":
			problem("formation %s: %d of %d running%s", f.Name, s.Running, s.Desired, reasonSuffix(s.Reason))
		}
	}
	// Unhealthy first, then by name.
	slices.SortStableFunc(st.Formations, func(a, b formationSummary) int {
		return cmp.Or(cmp.Compare(b.Desired-b.Running, a.Desired-a.Running), strings.Compare(a.Name, b.Name))
	})
	slices.SortStableFunc(st.Hosts, func(a, b hostSummary) int {
		return cmp.Or(cmp.Compare(hostRank(a), hostRank(b)), strings.Compare(a.Hostname, b.Hostname), strings.Compare(a.ID, b.ID))
	})
	st.Healthy = len(st.Problems) == 0
	return st
}

func reasonSuffix(r string) string {
	if r == "" {
		return ""
	}
	return ": " + r
}

// hostRank sorts hosts with trouble first, and gone ones last.
func hostRank(h hostSummary) int {
	switch {
	case h.Status == controller.HostLeft:
		return 3
	case h.Status != controller.HostAlive || h.Error != "":
		return 0
	case h.Cordoned:
		return 1
	}
	return 2
}

func printPlatformStatus(st platformStatus) {
	if st.Healthy {
		fmt.Println("platform: healthy")
	} else {
		fmt.Println("platform: NOT HEALTHY")
	}
	for _, p := range st.Problems {
		fmt.Println("  problem:", p)
	}
	for _, w := range st.Warnings {
		fmt.Println("  warning:", w)
	}
	fmt.Printf("\ncontroller: leader %s, term %d, %d voters\n", cmp.Or(st.Controller.Leader, "none"), st.Controller.Term, len(st.Controller.Voters))
	if st.Scheduler != nil {
		fmt.Printf("scheduler:  active %s (token %d)\n", st.Scheduler.Holder, st.Scheduler.Token)
	} else {
		fmt.Println("scheduler:  none active")
	}
	fmt.Println()
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "HOST\tNAME\tADDRESS\tSTATUS\tSCHEDULING\tJOBS\tMEM AVAIL\tVERSION\tSLOTS\tUPGRADE\tLABELS")
	for _, h := range st.Hosts {
		mem := "-"
		if h.MemoryAvailableBytes > 0 {
			mem = fmt.Sprintf("%.1f GiB", float64(h.MemoryAvailableBytes)/(1<<30))
		}
		slotList, upgrade := "-", "-"
		if h.Slots != nil {
			slotList = slots.Line(h.Slots.Slots)
			upgrade, _, _ = strings.Cut(h.Slots.Upgrade, ":")
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n", h.ID, h.Hostname, h.API, h.Status, hostFlags(h.Host), h.Jobs, mem,
			h.Version, slotList, upgrade, cmp.Or(labels.Encode(h.Labels), "-"))
	}
	w.Flush()
	fmt.Println()
	w = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "FORMATION\tKIND\tRUNNING\tREASON")
	for _, f := range st.Formations {
		kind := "count"
		if f.Omni {
			kind = "omni"
		}
		fmt.Fprintf(w, "%s\t%s\t%d/%d\t%s\n", f.Name, kind, f.Running, f.Desired, f.Reason)
	}
	w.Flush()
}
