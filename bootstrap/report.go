package bootstrap

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// A step's status in a Report.
const (
	StatusDone        = "done"
	StatusAlreadyDone = "already done" // the action found its work done
	StatusFailed      = "failed"
	StatusSkipped     = "skipped" // an earlier step failed
)

// Report says what a run did, a StepReport per step it ran or skipped, in
// the order they ran.
type Report struct {
	Steps []StepReport
}

// StepReport is what became of one step.
type StepReport struct {
	ID, Action string
	Status     string // one of the Status constants
	Duration   time.Duration
	Outputs    map[string]string // when done or already done
	// Err is why the step failed. It does not repeat the step's ID;
	// the error Run returns does.
	Err error
}

// writeStep writes the report line of s, then its outputs in the order the
// action declares them (outputs), one a line.
func writeStep(w io.Writer, s StepReport, outputs []string) {
	fmt.Fprintf(w, "step %s (%s): ", s.ID, s.Action)
	switch s.Status {
	case StatusFailed:
		fmt.Fprintf(w, "FAILED after %s: %v\n", round(s.Duration), s.Err)
		return
	case StatusSkipped:
		fmt.Fprintln(w, "skipped")
		return
	}
	fmt.Fprintf(w, "%s in %s\n", s.Status, round(s.Duration))
	for _, o := range outputs {
		v := s.Outputs[o]
		// A value on several lines would break the report's layout.
		if strings.ContainsAny(v, "\r\n") {
			v = strconv.Quote(v)
		}
		fmt.Fprintf(w, "  %s = %s\n", o, v)
	}
}

// round keeps the digits of d that a reader cares about: 1.32s, 12ms.
func round(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(time.Millisecond)
	default:
		return d.Round(time.Microsecond)
	}
}
