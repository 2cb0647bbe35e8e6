package bootstrap

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/services/builder"
	"github.com/plinth-os/plinth/services/controller"
	"github.com/plinth-os/plinth/services/discovery"
	"github.com/plinth-os/plinth/services/registry"
	"github.com/plinth-os/plinth/services/router"
	"github.com/plinth-os/plinth/services/scheduler"
)

// BootstrappedKey is the controller setting the last step writes: a
// cluster that has it is bootstrapped, and a second bootstrap is refused.
const BootstrappedKey = "plinth.bootstrapped"

// Platform is how the platform's actions reach the cluster: through one
// host's API (its members name the others) with the cluster's
// credentials.
type Platform struct {
	// Seed is a host of the cluster.
	Seed *host.Client
	// TLS carries the credentials for every host and the controller.
	TLS *tls.Config
	// Binary is the plinth binary's path inside platform jobs.
	Binary string
	// Poll is how often the waiting actions look again.
	Poll time.Duration
	// Dial returns a client of the host API at addr; nil: host.NewClient.
	Dial func(addr string, tlsConfig *tls.Config) *host.Client
	// By names who runs the bootstrap, in the setting it leaves.
	By string
}

// Actions are the platform's step kinds, by name.
func (p *Platform) Actions() map[string]Action {
	return map[string]Action{
		"wait-hosts":         &action{[]string{"count", "timeout"}, []string{"hosts", "controller_hosts"}, p.waitHosts},
		"check-voters":       &action{[]string{"hosts"}, []string{"expect"}, checkVoters},
		"start-jobs":         &action{[]string{"hosts", "job", "expect"}, []string{"jobs"}, p.startJobs},
		"wait-controller":    &action{[]string{"expect", "timeout"}, []string{"leader"}, p.waitController},
		"register-formation": &action{[]string{"name", "job", "role", "expect"}, []string{"formation"}, p.registerFormation},
		"register-service":   &action{[]string{"name", "job", "count"}, []string{"formation"}, p.registerService},
		"wait-formations":    &action{[]string{"names", "timeout"}, []string{"placements"}, p.waitFormations},
		"mark-bootstrapped":  &action{[]string{}, []string{"at"}, p.markBootstrapped},
	}
}

// action is an Action made of functions.
type action struct {
	inputs, outputs []string
	run             func(ctx context.Context, in map[string]string, log func(string, ...any)) (Result, error)
}

func (a *action) Inputs() []string  { return a.inputs }
func (a *action) Outputs() []string { return a.outputs }
func (a *action) Run(ctx context.Context, in map[string]string, log func(string, ...any)) (Result, error) {
	return a.run(ctx, in, log)
}

func (p *Platform) dial(addr string) *host.Client {
	if p.Dial != nil {
		return p.Dial(addr, p.TLS)
	}
	return host.NewClient(addr, p.TLS)
}

func (p *Platform) controller() *controller.Client {
	return controller.NewHostClient(p.Seed, p.TLS)
}

// members lists the seed's members, saying what to check when the seed
// does not answer.
func (p *Platform) members(ctx context.Context) ([]host.Member, error) {
	ms, err := p.Seed.Members(ctx)
	if err != nil {
		return nil, fmt.Errorf("the host API does not answer (%w): check the address, that hostd runs there, and the credentials", err)
	}
	return ms, nil
}

// until calls f every p.Poll until it is done, fails, or timeout ends;
// then the error says what it was still waiting for.
func (p *Platform) until(ctx context.Context, timeout string, f func(ctx context.Context) (done bool, waiting string, err error)) error {
	d, err := time.ParseDuration(timeout)
	if err != nil || d <= 0 {
		return fmt.Errorf("timeout %q: want a duration such as 5m", timeout)
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	poll := p.Poll
	if poll <= 0 {
		poll = time.Second
	}
	for {
		done, waiting, err := f(ctx)
		if err != nil || done {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("gave up after %s: %s", d, waiting)
		case <-time.After(poll):
		}
	}
}

// waitHosts waits until count hosts are alive; it gives their IDs and
// those of the controller hosts among them, sorted.
func (p *Platform) waitHosts(ctx context.Context, in map[string]string, log func(string, ...any)) (Result, error) {
	want, err := strconv.Atoi(in["count"])
	if err != nil || want < 1 {
		return Result{}, fmt.Errorf("count %q: want a number of hosts, 1 or more", in["count"])
	}
	var alive []host.Member
	err = p.until(ctx, in["timeout"], func(ctx context.Context) (bool, string, error) {
		ms, err := p.members(ctx)
		if err != nil {
			return false, "", err
		}
		alive = alive[:0]
		for _, m := range ms {
			if m.Status == host.StatusAlive {
				alive = append(alive, m)
			}
		}
		return len(alive) >= want, fmt.Sprintf("%d of %d hosts are alive", len(alive), want), nil
	})
	if err != nil {
		return Result{}, err
	}
	var all, voters []string
	for _, m := range alive {
		all = append(all, m.ID)
		if controller.IsControllerHost(m) {
			voters = append(voters, m.ID)
		}
	}
	slices.Sort(all)
	slices.Sort(voters)
	log("%d hosts alive, %d with the %s role", len(all), len(voters), controller.RoleController)
	// Waits and checks report "done": they change nothing, but they did
	// their job now.
	return Result{Outputs: map[string]string{"hosts": strings.Join(all, ","), "controller_hosts": strings.Join(voters, ",")}, Changed: true}, nil
}

// checkVoters refuses a number of controller hosts raft cannot use well.
func checkVoters(_ context.Context, in map[string]string, _ func(string, ...any)) (Result, error) {
	n := len(split(in["hosts"]))
	switch n {
	case 1, 3, 5:
	case 0:
		return Result{}, fmt.Errorf("no alive host has the %q role: add roles = [\"controller\"] to 1, 3 or 5 machine configs", controller.RoleController)
	default:
		return Result{}, fmt.Errorf("%d hosts have the %q role: use 1, 3 or 5 (an even number of voters tolerates no more failures than one fewer)", n, controller.RoleController)
	}
	return Result{Outputs: map[string]string{"expect": strconv.Itoa(n)}, Changed: true}, nil
}

// platformJob is the spec of a platform job by name: what bootstrap
// starts and what its formations run.
func (p *Platform) platformJob(name, expect string) (job.Spec, error) {
	switch name {
	case "controller":
		n, err := strconv.Atoi(expect)
		if err != nil || n < 1 {
			return job.Spec{}, fmt.Errorf("expect %q: want the number of controller hosts", expect)
		}
		return controller.JobSpec(p.Binary, n, controller.DefaultConfig().DataDir), nil
	case "discovery":
		return discovery.JobSpec(p.Binary), nil
	case "scheduler":
		return scheduler.JobSpec(p.Binary), nil
	case "router":
		return router.JobSpec(p.Binary), nil
	case "registry":
		return registry.JobSpec(p.Binary), nil
	case "builder":
		return builder.JobSpec(p.Binary), nil
	}
	return job.Spec{}, fmt.Errorf("job %q: the platform's jobs are controller, discovery, scheduler, router, registry and builder", name)
}

// startJobs starts a platform job on each of the hosts (node IDs) that
// does not have it yet, on all of them at once: a container start takes
// seconds on a slow machine.
func (p *Platform) startJobs(ctx context.Context, in map[string]string, log func(string, ...any)) (Result, error) {
	spec, err := p.platformJob(in["job"], in["expect"])
	if err != nil {
		return Result{}, err
	}
	ms, err := p.members(ctx)
	if err != nil {
		return Result{}, err
	}
	byID := map[string]host.Member{}
	for _, m := range ms {
		byID[m.ID] = m
	}
	ids := split(in["hosts"])
	var jobs []string
	for _, id := range ids {
		if m, ok := byID[id]; !ok || m.Status != host.StatusAlive {
			return Result{}, fmt.Errorf("host %s is not an alive member: see plinth members", id)
		}
		jobs = append(jobs, controller.PlacementID(id, spec.ID))
	}
	started := make([]bool, len(ids))
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		m := byID[id]
		wg.Go(func() { started[i], errs[i] = p.startJob(ctx, m, spec, log) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return Result{}, err
	}
	return Result{Outputs: map[string]string{"jobs": strings.Join(jobs, ",")}, Changed: slices.Contains(started, true)}, nil
}

// startJob starts spec on m unless it has it; it reports whether it did.
func (p *Platform) startJob(ctx context.Context, m host.Member, spec job.Spec, log func(string, ...any)) (bool, error) {
	c := p.dial(m.API)
	if j, err := c.Job(ctx, spec.ID); err == nil {
		log("%s (%s): %s already there (pid %d)", m.ID, m.Hostname, spec.ID, j.Status.Pid)
		return false, nil
	} else if e := (*host.APIError)(nil); !errors.As(err, &e) || e.StatusCode != http.StatusNotFound {
		return false, fmt.Errorf("host %s (%s): %w", m.ID, m.Hostname, err)
	}
	j, err := c.CreateJob(ctx, spec)
	if err != nil {
		return false, fmt.Errorf("host %s (%s): start %s: %w", m.ID, m.Hostname, spec.ID, err)
	}
	log("%s (%s): started %s (pid %d)", m.ID, m.Hostname, spec.ID, j.Status.Pid)
	return true, nil
}

// waitController waits until the controller has a leader and expect
// healthy voters.
func (p *Platform) waitController(ctx context.Context, in map[string]string, log func(string, ...any)) (Result, error) {
	want, err := strconv.Atoi(in["expect"])
	if err != nil {
		return Result{}, fmt.Errorf("expect %q: want the number of voters", in["expect"])
	}
	c := p.controller()
	var leader string
	err = p.until(ctx, in["timeout"], func(ctx context.Context) (bool, string, error) {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		st, err := c.Status(cctx)
		if err != nil {
			return false, fmt.Sprintf("the controller does not answer: %v", err), nil
		}
		healthy := 0
		for _, v := range st.Voters {
			if v.Healthy {
				healthy++
			}
		}
		leader = st.Leader
		return st.Leader != "" && healthy >= want, fmt.Sprintf("leader %q, %d of %d voters healthy", st.Leader, healthy, want), nil
	})
	if err != nil {
		return Result{}, err
	}
	log("leader %s", leader)
	return Result{Outputs: map[string]string{"leader": leader}, Changed: true}, nil
}

// registerFormation writes an omni formation for a platform job (on the
// hosts with role, when given), unless it exists.
func (p *Platform) registerFormation(ctx context.Context, in map[string]string, log func(string, ...any)) (Result, error) {
	spec, err := p.platformJob(in["job"], in["expect"])
	if err != nil {
		return Result{}, err
	}
	f := controller.Formation{Name: in["name"], Omni: true, Job: spec}
	if in["role"] != "" {
		f.Constraints = map[string]string{"role": in["role"]}
	}
	return p.putFormation(ctx, f, log)
}

// putFormation writes f unless a formation of its name exists.
func (p *Platform) putFormation(ctx context.Context, f controller.Formation, log func(string, ...any)) (Result, error) {
	c := p.controller()
	zero := uint64(0)
	if _, err := c.PutFormation(ctx, f, &zero); controller.IsConflict(err) {
		log("formation %s exists", f.Name)
		return Result{Outputs: map[string]string{"formation": f.Name}}, nil
	} else if err != nil {
		return Result{}, fmt.Errorf("register formation %s: %w", f.Name, err)
	}
	return Result{Outputs: map[string]string{"formation": f.Name}, Changed: true}, nil
}

// registerService registers the formation of a platform job that runs
// count instances wherever the scheduler places them, unless it exists.
func (p *Platform) registerService(ctx context.Context, in map[string]string, log func(string, ...any)) (Result, error) {
	n, err := strconv.Atoi(in["count"])
	if err != nil || n < 1 {
		return Result{}, fmt.Errorf("count %q: want how many instances run", in["count"])
	}
	spec, err := p.platformJob(in["job"], "")
	if err != nil {
		return Result{}, err
	}
	return p.putFormation(ctx, controller.Formation{Name: in["name"], Count: n, Job: spec}, log)
}

// waitFormations waits until the scheduler runs every named formation
// in full: adopted, or started.
func (p *Platform) waitFormations(ctx context.Context, in map[string]string, log func(string, ...any)) (Result, error) {
	names := split(in["names"])
	c := p.controller()
	var placed int
	err := p.until(ctx, in["timeout"], func(ctx context.Context) (bool, string, error) {
		// Consistent: a follower may not have applied the formations
		// registered just before through the leader.
		fs, _, err := c.Formations(ctx, controller.QueryOptions{Consistent: true})
		if err != nil {
			return false, fmt.Sprintf("the controller does not answer: %v", err), nil
		}
		byName := map[string]controller.Formation{}
		for _, f := range fs {
			byName[f.Name] = f
		}
		placed = 0
		for _, n := range names {
			f, ok := byName[n]
			if !ok {
				return false, "", fmt.Errorf("formation %s does not exist", n)
			}
			if f.Status.Desired == 0 || f.Status.Running < f.Status.Desired || f.Status.Token == 0 {
				return false, fmt.Sprintf("formation %s: %d of %d running %s", n, f.Status.Running, f.Status.Desired, f.Status.Reason), nil
			}
			placed += f.Status.Running
		}
		return true, "", nil
	})
	if err != nil {
		return Result{}, err
	}
	log("%d instances of %s running", placed, strings.Join(names, ", "))
	return Result{Outputs: map[string]string{"placements": strconv.Itoa(placed)}, Changed: true}, nil
}

// Bootstrapped returns the setting of a bootstrapped cluster.
func Bootstrapped(ctx context.Context, c *controller.Client) (controller.Setting, bool, error) {
	s, _, err := c.Setting(ctx, BootstrappedKey, controller.QueryOptions{})
	if controller.IsNotFound(err) {
		return s, false, nil
	}
	return s, err == nil, err
}

func (p *Platform) markBootstrapped(ctx context.Context, _ map[string]string, log func(string, ...any)) (Result, error) {
	c := p.controller()
	if s, ok, err := Bootstrapped(ctx, c); err != nil {
		return Result{}, err
	} else if ok {
		return Result{Outputs: map[string]string{"at": s.Value}}, nil
	}
	at := time.Now().UTC().Format(time.RFC3339) + " by " + p.By
	zero := uint64(0)
	if _, err := c.PutSetting(ctx, BootstrappedKey, at, &zero); err != nil && !controller.IsConflict(err) {
		return Result{}, fmt.Errorf("record the bootstrap: %w", err)
	}
	log("bootstrapped at %s", at)
	return Result{Outputs: map[string]string{"at": at}, Changed: true}, nil
}

func split(list string) []string {
	var out []string
	for s := range strings.SplitSeq(list, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}
