package host

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/net/dns/dnsmessage"

	"github.com/plinth-os/plinth/host/internal/testroot"
	"github.com/plinth-os/plinth/host/job"
)

// TestJobDNS: with --job-dns, a bridge job resolves names through its
// host at the bridge's gateway and a host-network job through 127.0.0.1,
// where a DNS server with the host's network listens on every address
// (here one the test runs in the host's namespace); the host's own
// resolvers follow, less the loopback ones a bridge job cannot reach.
func TestJobDNS(t *testing.T) {
	s := newSegment(t)
	if DefaultConfig().Init == "" {
		t.Skip("needs tini (apt-get install tini)")
	}
	root := testroot.Busybox(t, "sh", "cat", "nslookup")
	b := newBundle(t)
	creds, err := b.IssueClient("admin", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	h := s.addHost(1, s.writeBundle("bundle.toml", b))
	h.hc.Subnet, h.hc.JobDNS = "10.200.1.0/24", true
	// 10.77.0.200 is on the test's segment, where nothing answers.
	h.hc.HostResolvConf = filepath.Join(s.dir, "host-resolv.conf")
	if err := os.WriteFile(h.hc.HostResolvConf, []byte("nameserver 127.0.0.53\nnameserver 10.77.0.200\nsearch example.test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s.start(h)
	c := s.client(h, creds)
	asked := serveDNS(t, h.NS, "probe.plinth.", [4]byte{10, 1, 2, 3})

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	t.Cleanup(func() {
		c.RemoveJob(context.Background(), "bridged", true)
		c.RemoveJob(context.Background(), "hostnet", true)
	})
	waitFor(t, "hostd answers", 30*time.Second, func() error { return c.Health(ctx) })
	script := "cat /etc/resolv.conf; nslookup probe.plinth"
	// Bridge jobs get 503 until the container network is set up.
	for {
		_, err = c.CreateJob(ctx, job.Spec{ID: "bridged", Rootfs: root, Network: job.NetworkBridge, Cmd: []string{"sh", "-c", script}})
		if apiErr, ok := err.(*APIError); !ok || apiErr.StatusCode != http.StatusServiceUnavailable || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("%v\n%s", err, s.logs())
	}
	if _, err := c.CreateJob(ctx, job.Spec{ID: "hostnet", Rootfs: root, Network: job.NetworkHost, Cmd: []string{"sh", "-c", script}}); err != nil {
		t.Fatal(err)
	}
	for id, servers := range map[string]string{
		"bridged": "nameserver 10.200.1.1|nameserver 10.77.0.200|",
		"hostnet": "nameserver 127.0.0.1|nameserver 127.0.0.53|nameserver 10.77.0.200|",
	} {
		j, err := c.WaitJob(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		c.JobLogs(ctx, id, job.LogOptions{Stream: job.Stdout}, func(l job.LogLine) error { out = append(out, l.Text); return nil })
		got := strings.Join(out, "|")
		if j.Status.Exit == nil || j.Status.Exit.Code != 0 || !strings.Contains(got, "|"+servers+"search example.test|") ||
			!strings.Contains(got, "10.1.2.3") {
			t.Errorf("%s: exit %+v, output %s; want %ssearch example.test and probe.plinth answered", id, j.Status.Exit, got, servers)
		}
	}
	from := asked()
	if !slices.ContainsFunc(from, func(a string) bool { return strings.HasPrefix(a, "10.200.1.") }) || !slices.Contains(from, "127.0.0.1") {
		t.Errorf("the DNS server was asked from %v; want the bridge job's address and loopback", from)
	}
}

// serveDNS answers A queries for name with ip on UDP port 53 of every
// address of the network namespace ns, until the test ends. asked
// returns the addresses the queries came from.
func serveDNS(t *testing.T, ns, name string, ip [4]byte) (asked func() []string) {
	t.Helper()
	handle, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer handle.Close()
	// The socket belongs to the namespace of the thread that makes it.
	var pc net.PacketConn
	func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		orig, err := netns.Get()
		if err != nil {
			t.Fatal(err)
		}
		defer orig.Close()
		if err := netns.Set(handle); err != nil {
			t.Fatal(err)
		}
		pc, err = net.ListenPacket("udp4", "0.0.0.0:53")
		if err := netns.Set(orig); err != nil {
			panic(err) // this thread must not go back to the pool in ns
		}
		if err != nil {
			t.Fatal(err)
		}
	}()
	t.Cleanup(func() { pc.Close() })
	var mu sync.Mutex
	var from []string
	go func() {
		buf := make([]byte, 1500)
		for {
			n, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var p dnsmessage.Parser
			hdr, err := p.Start(buf[:n])
			if err != nil {
				continue
			}
			q, err := p.Question()
			if err != nil {
				continue
			}
			mu.Lock()
			from = append(from, addr.(*net.UDPAddr).IP.String())
			mu.Unlock()
			hdr.Response, hdr.Authoritative = true, true
			bld := dnsmessage.NewBuilder(nil, hdr)
			bld.StartQuestions()
			bld.Question(q)
			bld.StartAnswers()
			if q.Type == dnsmessage.TypeA && strings.EqualFold(q.Name.String(), name) {
				bld.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}, dnsmessage.AResource{A: ip})
			}
			if msg, err := bld.Finish(); err == nil {
				pc.WriteTo(msg, addr)
			}
		}
	}()
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(from)
	}
}
