package dhcp

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// BenchmarkBind compares the time from client start to a bound lease of this
// client (DefaultConfig, no lease on disk) and of Debian's busybox udhcpc,
// against dnsmasq on the same veth segment. Both are started the same way,
// under `ip netns exec`, so each total includes starting a process: for
// netd's client that is this test binary (about 10 MB of Go), for udhcpc a
// static busybox, and the difference between the two dominates the
// totals. The exchange alone is also compared: for netd from Run's start
// to OnBound, for udhcpc from its script's "deconfig" call (made as it
// starts) to its "bound" call.
//
//	go test -run '^$' -bench BenchmarkBind ./netd/dhcp/
func BenchmarkBind(b *testing.B) {
	needRoot(b)
	if _, err := exec.LookPath("busybox"); err != nil {
		b.Fatal("busybox is not installed: run scripts/deps.sh (Debian package busybox-static)")
	}
	seg := newSegment(b, dnsmasqNet)
	startDnsmasq(b, seg, netip.MustParseAddr("198.51.100.100"), netip.MustParseAddr("198.51.100.150"),
		dnsmasqNet.Addr(), netip.MustParseAddr("198.51.100.53"), "http://198.51.100.1/plinth.toml")

	// A new client's first lease waits for dnsmasq's 3 s ping check of the
	// address; the rounds measure the clients, not that.
	bindNetd(b, seg)
	bindUdhcpc(b, seg, false)

	const minRounds = 5
	var netd, run, udhcpc, exchange []time.Duration
	round := func() {
		total, inProcess := bindNetd(b, seg)
		netd, run = append(netd, total), append(run, inProcess)
		// udhcpc twice: its total with /bin/true as the script, as
		// before; its exchange with a script that records the time,
		// whose two runs of sh and date would inflate the total.
		total, _ = bindUdhcpc(b, seg, false)
		_, inProcess = bindUdhcpc(b, seg, true)
		udhcpc, exchange = append(udhcpc, total), append(exchange, inProcess)
	}
	for b.Loop() {
		round()
	}
	// b.Loop stops at -benchtime, which may come before enough rounds.
	for len(netd) < minRounds {
		round()
	}
	n, u := median(netd), median(udhcpc)
	ne, ue := median(run), median(exchange)
	fmt.Printf("bench dhcp-bind: netd=%.3fs udhcpc=%.3fs ratio=%.2f (process start to lease)\n", n.Seconds(), u.Seconds(), n.Seconds()/u.Seconds())
	fmt.Printf("bench dhcp-exchange: netd=%.4fs udhcpc=%.4fs ratio=%.2f (the client's exchange alone)\n", ne.Seconds(), ue.Seconds(), ne.Seconds()/ue.Seconds())
	b.ReportMetric(n.Seconds(), "netd-s")
	b.ReportMetric(ne.Seconds(), "netd-run-s")
	b.ReportMetric(u.Seconds(), "udhcpc-s")
	b.ReportMetric(ue.Seconds(), "udhcpc-run-s")
	b.ReportMetric(float64(len(netd)), "rounds")
}

// bindNetd returns the time from starting the client helper to its first
// OnBound, and the part of it from Run's start.
func bindNetd(b *testing.B, seg *segment) (total, run time.Duration) {
	b.Helper()
	start := time.Now()
	c := startClient(b, seg, clientHelperConfig{})
	bound := c.next(b, "bound", 30*time.Second)
	total = time.Since(start)
	run = bound.At.Sub(c.seen[0].At)
	c.stop(b)
	return total, run
}

// bindUdhcpc returns the time from starting udhcpc to its exit with a
// lease and, when timed, the part of it from its script's deconfig call
// to its bound call (the script records when each ran).
func bindUdhcpc(b *testing.B, seg *segment, timed bool) (total, exchange time.Duration) {
	b.Helper()
	dir := b.TempDir()
	events := filepath.Join(dir, "events")
	script := "/bin/true"
	if timed {
		script = filepath.Join(dir, "script")
		if err := os.WriteFile(script, []byte("#!/bin/sh\necho \"$1 $(date +%s%N)\" >> "+events+"\n"), 0o755); err != nil {
			b.Fatal(err)
		}
	}
	start := time.Now()
	p := startProc(b, seg.clientNS, nil, "busybox", "udhcpc", "-i", clientIf, "-f", "-q", "-n", "-s", script)
	p.wait(b, 30*time.Second)
	total = time.Since(start)
	if !p.cmd.ProcessState.Success() {
		b.Fatalf("udhcpc got no lease: %s\n%s", p.cmd.ProcessState, p.stderr.String())
	}
	if !timed {
		return total, 0
	}
	data, err := os.ReadFile(events)
	if err != nil {
		b.Fatal(err)
	}
	at := map[string]int64{}
	for line := range strings.Lines(string(data)) {
		var event string
		var ns int64
		if _, err := fmt.Sscan(line, &event, &ns); err != nil {
			b.Fatalf("udhcpc script event %q: %v", line, err)
		}
		at[event] = ns
	}
	if at["deconfig"] == 0 || at["bound"] == 0 {
		b.Fatalf("udhcpc's script was not called for deconfig and bound: %q", data)
	}
	return total, time.Duration(at["bound"] - at["deconfig"])
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
