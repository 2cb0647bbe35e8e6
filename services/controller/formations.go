package controller

import (
	"fmt"
	"slices"
	"strings"

	"github.com/plinth-os/plinth/host/container"
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/host/labels"
)

func (f *Formation) key() string { return f.Name }

// FormationTag is the job tag naming the formation a job belongs to: how
// a scheduler recognises, and adopts, the jobs it finds on hosts.
const FormationTag = "plinth.formation"

// ConstraintKeys are what a formation's constraints match on every host:
// its roles, and what it advertises. Any other key is a label's.
var ConstraintKeys = labels.Reserved

// maxJobPrefix leaves room for "-<n>" in a count formation's job IDs.
const maxJobPrefix = 58

func checkFormation(o object) error {
	f := o.(*Formation)
	if !validName(f.Name, 48) {
		return fmt.Errorf("%w: formation name %q: use 1 to 48 of a-z, 0-9, '.', '-', starting with a letter or digit", ErrInvalid, f.Name)
	}
	switch {
	case f.Count < 0:
		return fmt.Errorf("%w: formation %s: count %d is negative", ErrInvalid, f.Name, f.Count)
	case f.Omni && f.Count != 0:
		return fmt.Errorf("%w: formation %s: give count or omni, not both", ErrInvalid, f.Name)
	}
	for k, v := range f.Constraints {
		if k == "" || v == "" {
			return fmt.Errorf("%w: formation %s: constraint %q=%q: give a tag and a value, such as role=controller", ErrInvalid, f.Name, k, v)
		}
		if slices.Contains(ConstraintKeys, k) {
			continue
		}
		// Any other key is a label's: one no host can have matches none.
		if err := labels.CheckKey(k); err != nil {
			return fmt.Errorf("%w: formation %s: constraint %q matches no host: hosts are matched by %s, or by a label key: %v", ErrInvalid, f.Name, k, strings.Join(ConstraintKeys, ", "), err)
		}
		if err := labels.CheckValue(v); err != nil {
			return fmt.Errorf("%w: formation %s: constraint %s matches no host: %v", ErrInvalid, f.Name, k, err)
		}
	}
	if f.Job.ID == "" {
		f.Job.ID = f.Name
	}
	if !f.Omni && len(f.Job.ID) > maxJobPrefix {
		return fmt.Errorf("%w: formation %s: job id %q is over %d characters, which leaves no room for the instance number", ErrInvalid, f.Name, f.Job.ID, maxJobPrefix)
	}
	if !container.ValidID(f.Job.ID) {
		return fmt.Errorf("%w: formation %s: job id %q: use 1 to 64 of a-z, 0-9, '_', '.', '-', starting with a letter or digit", ErrInvalid, f.Name, f.Job.ID)
	}
	switch f.Job.Restart.Policy {
	case "":
		f.Job.Restart.Policy = job.RestartAlways
	case job.RestartAlways:
	default:
		return fmt.Errorf("%w: formation %s: restart policy %q: a formation keeps its jobs running, so it is %q (run one-off jobs through a host's API)", ErrInvalid, f.Name, f.Job.Restart.Policy, job.RestartAlways)
	}
	spec := f.Job
	if spec.Image != "" && len(spec.Cmd) == 0 {
		// The host fills the command in from the image's entrypoint.
		spec.Cmd = []string{"(the image's)"}
	}
	if err := spec.Check(); err != nil {
		return fmt.Errorf("%w: formation %s: job: %v", ErrInvalid, f.Name, err)
	}
	return nil
}

// keepFormationStatus carries the scheduler's status over a write of the
// formation through the API, which does not know it.
func keepFormationStatus(old, obj object) {
	obj.(*Formation).Status = old.(*Formation).Status
}

// validName reports whether s is 1 to max of a-z, 0-9, '.', '-',
// starting with a letter or digit.
func validName(s string, max int) bool {
	if s == "" || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9':
		case i > 0 && (c == '.' || c == '-'):
		default:
			return false
		}
	}
	return true
}
