package controller

import (
	"fmt"
	"strconv"
	"time"

	memdb "github.com/hashicorp/go-memdb"

	"github.com/plinth-os/plinth/host/job"
)

// Deploy moves an app from one release to another: the deployer starts
// the new release's instances, waits for their health, and stops the old
// ones, recording each step here. One runs per app at a time.
type Deploy struct {
	// ID is "<app>/<to>": a release is deployed once.
	ID   string `json:"id"`
	App  string `json:"app"`
	From int    `json:"from"` // 0: the app's first deploy
	To   int    `json:"to"`
	// Strategy is StrategyRolling (one new instance at a time) or
	// StrategyAllAtOnce.
	Strategy string `json:"strategy"`
	// HealthTimeout bounds the wait for a batch of new instances to
	// pass their health checks.
	HealthTimeout job.Duration `json:"health_timeout"`
	// State is DeployRunning, DeployDone or DeployFailed.
	State string `json:"state"`
	// Reason says why a failed deploy failed.
	Reason string `json:"reason,omitempty"`
	// Log is the deploy's steps, one line each, the newest last.
	Log     []DeployStep `json:"log,omitempty"`
	Started time.Time    `json:"started"`
	Ended   time.Time    `json:"ended,omitzero"`
	Meta
}

// DeployStep is one line of a deploy's log.
type DeployStep struct {
	Time time.Time `json:"time"`
	Text string    `json:"text"`
}

func (d *Deploy) key() string { return d.ID }

// DeployID names the deploy of release to of app.
func DeployID(app string, to int) string { return app + "/" + strconv.Itoa(to) }

// Deploy states.
const (
	DeployRunning = "running"
	DeployDone    = "done"
	// DeployFailed: the deploy stopped and the release it started from
	// serves again.
	DeployFailed = "failed"
)

// Health timeouts of deploys.
const (
	DefaultHealthTimeout = time.Minute
	maxHealthTimeout     = 30 * time.Minute
	// maxDeployLog bounds a deploy's log: older lines are dropped.
	maxDeployLog = 200
)

// runningDeploy is app's deploy in progress, or nil.
func runningDeploy(txn *memdb.Txn, app string) (*Deploy, error) {
	it, err := txn.Get("deploys", "app", app)
	if err != nil {
		return nil, err
	}
	for raw := it.Next(); raw != nil; raw = it.Next() {
		if d := raw.(*Deploy); d.State == DeployRunning {
			return d, nil
		}
	}
	return nil, nil
}

func checkDeployUpdate(d *Deploy) error {
	switch d.State {
	case DeployRunning, DeployDone, DeployFailed:
	default:
		return fmt.Errorf("%w: deploy %s: state %q: use %s, %s or %s", ErrInvalid, d.ID, d.State, DeployRunning, DeployDone, DeployFailed)
	}
	if len(d.Log) > maxDeployLog {
		d.Log = d.Log[len(d.Log)-maxDeployLog:]
	}
	return nil
}

// applyDeploy records the deployer's progress on a deploy (compare and
// set: one deployer writes it at a time). A deploy that ends done makes
// its release the app's serving one in the same write.
func applyDeploy(txn *memdb.Txn, index uint64, c *command, events *eventLog) error {
	d := c.Deploy
	raw, err := txn.First("deploys", "id", d.ID)
	if err != nil {
		return err
	}
	if raw == nil {
		return fmt.Errorf("%w: deploy %s", ErrNotFound, d.ID)
	}
	old := raw.(*Deploy)
	if old.State != DeployRunning {
		return fmt.Errorf("%w: deploy %s has ended (%s)", ErrConflict, d.ID, old.State)
	}
	// The request's own fields are what the deployer may change.
	next := *old
	next.State, next.Reason, next.Log, next.Ended = d.State, d.Reason, d.Log, d.Ended
	if next.State != DeployRunning && next.Ended.IsZero() {
		next.Ended = c.Time
	}
	if err := put(txn, "deploys", &next, index, c.CAS); err != nil {
		return err
	}
	switch next.State {
	case DeployDone:
		raw, err := txn.First("apps", "id", next.App)
		if err != nil {
			return err
		}
		if raw == nil {
			return fmt.Errorf("%w: app %s was destroyed", ErrNotFound, next.App)
		}
		app := *raw.(*App)
		app.Release = next.To
		if err := put(txn, "apps", &app, index, nil); err != nil {
			return err
		}
		events.add(txn, index, c.Time, "deploy-done", next.App, fmt.Sprintf("%s: v%d deployed", next.App, next.To))
	case DeployFailed:
		events.add(txn, index, c.Time, "deploy-failed", next.App, fmt.Sprintf("%s: deploy of v%d failed, v%d serves: %s", next.App, next.To, next.From, next.Reason))
	}
	return nil
}
