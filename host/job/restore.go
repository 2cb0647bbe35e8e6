package job

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/plinth-os/plinth/host/container"
)

// Restore brings back the jobs in the store, once, before the API serves:
//
//   - a job whose container still runs (hostd alone restarted) is adopted:
//     same process, its output pipes reopened through /proc;
//   - a job that was running but whose container is gone in the same boot
//     exited while hostd was away, with an unknown status; its restart
//     policy applies;
//   - after a reboot, a job marked resurrect (and not stopped on request)
//     starts again, without waiting for anything but this host;
//   - a job waiting to restart keeps waiting.
//
// Container state that no job owns (a crash during Create) is removed.
func (m *Manager) Restore() error {
	jobs, err := m.store.all()
	if err != nil {
		return fmt.Errorf("read job store: %w", err)
	}
	live, err := m.rt.List()
	if err != nil {
		return fmt.Errorf("list containers: %w", err)
	}
	for _, j := range jobs {
		e := newEntry(j)
		if e.log, err = openLog(m.logDir(j.Spec.ID)); err != nil {
			return fmt.Errorf("job %s: log: %w", j.Spec.ID, err)
		}
		m.mu.Lock()
		m.jobs[j.Spec.ID] = e
		m.mu.Unlock()
		if j.Spec.Network == NetworkBridge {
			// Its network, ports included (their proxies ended with the
			// last hostd), may not be ready yet.
			m.wg.Go(func() {
				select {
				case <-m.networkReady:
				case <-m.closing:
					return
				}
				if err := m.attachNetwork(e); err != nil {
					m.log.Warn("publish the ports of a restored job", "job", j.Spec.ID, "err", err)
				}
				m.restoreOne(e, live)
			})
			continue
		}
		m.restoreOne(e, live)
	}
	for _, id := range live {
		m.mu.Lock()
		_, owned := m.jobs[id]
		m.mu.Unlock()
		if !owned {
			if c, err := m.rt.Adopt(id); err == nil {
				c.Destroy()
			}
		}
	}
	return nil
}

// restoreOne applies the table of Restore to one job.
func (m *Manager) restoreOne(e *entry, live []string) {
	j := e.job
	sameBoot := j.Status.BootID == m.bootID
	switch {
	case sameBoot && j.Status.State == StateRunning && slices.Contains(live, j.Spec.ID):
		if err := m.adopt(e); err != nil {
			m.log.Warn("adopt job; treating it as exited", "job", j.Spec.ID, "err", err)
			m.restoreExited(e, container.Exit{Code: -1, Unknown: true})
		}
	case sameBoot && j.Status.State == StateRunning:
		m.restoreExited(e, container.Exit{Code: -1, Unknown: true})
	case sameBoot && j.Status.State == StateBackoff:
		m.restoreExited(e, *orUnknown(j.Status.Exit))
	case !sameBoot && (j.Status.State == StateRunning || j.Status.State == StateBackoff):
		m.afterReboot(e)
	}
	if !e.supervised {
		// Nothing runs it: Stop and Remove must not wait for a
		// supervisor to end.
		close(e.done)
	}
}

func orUnknown(e *container.Exit) *container.Exit {
	if e == nil {
		return &container.Exit{Code: -1, Unknown: true}
	}
	return e
}

// adopt takes over a container started by an earlier hostd.
func (m *Manager) adopt(e *entry) error {
	c, err := m.rt.Adopt(e.job.Spec.ID)
	if err != nil {
		return err
	}
	stdout, err1 := os.Open(fmt.Sprintf("/proc/%d/fd/%d", c.Pid(), stdoutFD))
	stderr, err2 := os.Open(fmt.Sprintf("/proc/%d/fd/%d", c.Pid(), stderrFD))
	if err1 != nil || err2 != nil {
		// The job closed its copies of the read ends; its output since
		// the last hostd is lost, but it keeps running.
		m.log.Warn("reopen job output; its further output is not logged", "job", e.job.Spec.ID)
	} else {
		m.readOutput(e, stdout, stderr)
	}
	m.mu.Lock()
	e.c = c
	e.job.Status.Pid = c.Pid()
	m.mu.Unlock()
	m.log.Info("adopted job", "job", e.job.Spec.ID, "pid", c.Pid())
	m.supervise(e, true)
	return nil
}

// restoreExited records that e's run ended while no hostd watched and
// restarts it if its policy says so.
func (m *Manager) restoreExited(e *entry, exit container.Exit) {
	m.mu.Lock()
	st := &e.job.Status
	st.Pid, st.Exit = 0, &exit
	if st.ExitedAt.IsZero() || st.State == StateRunning {
		st.ExitedAt = time.Now().UTC()
	}
	restart := e.job.Spec.restarts(exit)
	st.State = StateExited
	m.mu.Unlock()
	if restart {
		m.startRestored(e, "restarted")
		return
	}
	m.persist(e)
}

// afterReboot starts a resurrect job again; others are recorded as
// ended by the reboot.
func (m *Manager) afterReboot(e *entry) {
	if e.job.Spec.Resurrect {
		m.startRestored(e, "started")
		return
	}
	m.mu.Lock()
	e.job.Status.State, e.job.Status.Pid = StateExited, 0
	e.job.Status.Exit = &container.Exit{Code: -1, Unknown: true}
	m.mu.Unlock()
	m.persist(e)
}

// startRestored starts a restored job and supervises it. A start that
// failed for a passing reason (ErrUnavailable: after boot, the overlay
// module or the container network may not be there yet) is tried again,
// in the background with a growing delay, until it works, the job is
// stopped or removed, or the manager closes; any other failure is
// recorded as the job's end.
func (m *Manager) startRestored(e *entry, event string) {
	err := m.start(e)
	if err == nil {
		m.started(e, event)
		return
	}
	m.log.Warn("start restored job", "job", e.job.Spec.ID, "err", err)
	m.mu.Lock()
	e.job.Status.State = StateExited
	m.mu.Unlock()
	m.persist(e)
	if !errors.Is(err, ErrUnavailable) {
		return
	}
	m.wg.Go(func() {
		for backoff := firstBackoff; ; backoff = min(2*backoff, maxRestoreRetry) {
			select {
			case <-e.stop:
				return
			case <-e.gone:
				return
			case <-m.closing:
				return
			case <-time.After(backoff):
			}
			err := m.start(e)
			if err == nil {
				m.started(e, event)
				return
			}
			if !errors.Is(err, ErrUnavailable) {
				m.log.Warn("start restored job", "job", e.job.Spec.ID, "err", err)
				return
			}
		}
	})
}

// maxRestoreRetry bounds the delay between starts of a restored job that
// cannot start yet.
const maxRestoreRetry = 30 * time.Second

// started records and announces a restored job's start and supervises it.
func (m *Manager) started(e *entry, event string) {
	m.persist(e)
	m.publish(Event{Type: event, Job: e.job.Spec.ID, Pid: e.job.Status.Pid})
	m.supervise(e, false)
}
