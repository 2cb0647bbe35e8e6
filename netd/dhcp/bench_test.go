package dhcp

import (
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"testing"
	"time"
)

// BenchmarkBind compares the time from client start to a bound lease of this
// client (DefaultConfig, no lease on disk) and of Debian's busybox udhcpc,
// against dnsmasq on the same veth segment. Both are started the same way,
// under `ip netns exec`, so each time includes starting a process; udhcpc's
// ends when it exits after binding (-q), which adds running /bin/true.
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
	bindUdhcpc(b, seg)

	const minRounds = 5
	var netd, run, udhcpc []time.Duration
	round := func() {
		total, inProcess := bindNetd(b, seg)
		netd, run = append(netd, total), append(run, inProcess)
		udhcpc = append(udhcpc, bindUdhcpc(b, seg))
	}
	for b.Loop() {
		round()
	}
	// b.Loop stops at -benchtime, which may come before enough rounds.
	for len(netd) < minRounds {
		round()
	}
	n, u := median(netd), median(udhcpc)
	fmt.Printf("bench dhcp-bind: netd=%.3fs udhcpc=%.3fs ratio=%.2f\n", n.Seconds(), u.Seconds(), n.Seconds()/u.Seconds())
	b.ReportMetric(n.Seconds(), "netd-s")
	b.ReportMetric(median(run).Seconds(), "netd-run-s")
	b.ReportMetric(u.Seconds(), "udhcpc-s")
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

// bindUdhcpc returns the time from starting udhcpc to its exit with a lease.
func bindUdhcpc(b *testing.B, seg *segment) time.Duration {
	b.Helper()
	start := time.Now()
	p := startProc(b, seg.clientNS, nil, "busybox", "udhcpc", "-i", clientIf, "-f", "-q", "-n", "-s", "/bin/true")
	p.wait(b, 30*time.Second)
	took := time.Since(start)
	if !p.cmd.ProcessState.Success() {
		b.Fatalf("udhcpc got no lease: %s\n%s", p.cmd.ProcessState, p.stderr.String())
	}
	return took
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
