package placement

import (
	"fmt"
	"slices"
	"strconv"
)

// shortfall reports missing instances of f, unless f already has a
// Shortfall: its missing instances come before its drain moves, and the
// first reason explains the rest.
func (p *planner) shortfall(f *formation, missing int, reason string) {
	if slices.ContainsFunc(p.decision.Shortfalls, func(s Shortfall) bool { return s.Formation == f.Name }) {
		return
	}
	p.decision.Shortfalls = append(p.decision.Shortfalls, Shortfall{Formation: f.Name, Missing: missing, Reason: reason})
}

// why says what keeps f off every host, most specific first: no alive
// host matches, every one that does is cordoned, or none of those has
// the memory or CPUs free.
func (p *planner) why(f *formation) string {
	alive := 0
	var open []*host
	for _, h := range p.hosts {
		if f.matches[h.idx] && h.Status == Alive {
			alive++
			if !h.cordoned() {
				open = append(open, h)
			}
		}
	}
	switch {
	case alive == 0 && f.constraints == "":
		return "no host is alive"
	case alive == 0:
		return "no alive host matches " + f.constraints
	case len(open) > 0:
		return resourceReason(f, open)
	case alive == 1 && f.constraints == "":
		return "the only alive host is cordoned"
	case alive == 1:
		return "the only alive host that matches " + f.constraints + " is cordoned"
	case f.constraints == "":
		return fmt.Sprintf("all %d alive hosts are cordoned", alive)
	default:
		return fmt.Sprintf("all %d alive hosts that match %s are cordoned", alive, f.constraints)
	}
}

// resourceReason says what f needs that none of hosts has free, naming
// the host with the most free.
func resourceReason(f *formation, hosts []*host) string {
	var memMost, cpuMost *host // the most free of those too small
	memFits, cpuFits := false, false
	for _, h := range hosts {
		if h.memFits(f) {
			memFits = true
		} else if memMost == nil || h.memFree() > memMost.memFree() {
			memMost = h
		}
		if h.cpuFits(f) {
			cpuFits = true
		} else if cpuMost == nil || h.cpuFree() > cpuMost.cpuFree() {
			cpuMost = h
		}
	}
	mem, cpu := formatBytes(f.MemoryBytes)+" of memory", formatCPUs(f.milliCPUs)
	switch {
	case !memFits && !cpuFits:
		return fmt.Sprintf("needs %s and %s; the most free on an eligible host is %s (%s) and %s (%s)",
			mem, cpu, formatBytes(memMost.memFree()), memMost.ID, formatCPUs(cpuMost.cpuFree()), cpuMost.ID)
	case !memFits:
		return fmt.Sprintf("needs %s; the most free on an eligible host is %s (%s)", mem, formatBytes(memMost.memFree()), memMost.ID)
	case !cpuFits:
		return fmt.Sprintf("needs %s; the most free on an eligible host is %s (%s)", cpu, formatCPUs(cpuMost.cpuFree()), cpuMost.ID)
	default:
		return fmt.Sprintf("needs %s and %s; no eligible host has both free", mem, cpu)
	}
}

func formatBytes(n int64) string {
	n = max(n, 0)
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	default:
		return fmt.Sprintf("%d B", n)
	}
}

func formatCPUs(milli int64) string {
	milli = max(milli, 0)
	if milli == 1000 {
		return "1 CPU"
	}
	return strconv.FormatFloat(float64(milli)/1000, 'f', -1, 64) + " CPUs"
}
