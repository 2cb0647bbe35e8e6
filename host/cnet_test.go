package host

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/plinth-os/plinth/host/cnet"
	"github.com/plinth-os/plinth/host/job"
)

// webRoot is a busybox root filesystem with httpd, nc and a page.
// (Debian's static busybox wget crashes, even on the host.)
func webRoot(t *testing.T, page string) string {
	t.Helper()
	root := busyboxRoot(t)
	for _, a := range []string{"httpd", "nc", "printf"} {
		os.Symlink("busybox", filepath.Join(root, "bin", a))
	}
	os.MkdirAll(filepath.Join(root, "www"), 0o755)
	if err := os.WriteFile(filepath.Join(root, "www", "index.html"), []byte(page), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

// TestContainerNetworkAcrossHosts: two hosts on a bridge, each with its
// container bridge and the VXLAN overlay; a job on one fetches a page
// from a job on the other by its address, and the host port published
// for the page's job answers from the other host's namespace. The page's
// job runs in a user namespace.
func TestContainerNetworkAcrossHosts(t *testing.T) {
	s := newSegment(t)
	if DefaultConfig().Init == "" {
		t.Skip("needs tini (apt-get install tini)")
	}
	root := webRoot(t, "hello from h1\n")
	b := newBundle(t)
	creds, err := b.IssueClient("admin", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	path := s.writeBundle("bundle.toml", b)
	var hosts []*netnsHost
	for n := 1; n <= 2; n++ {
		h := s.addHost(n, path)
		h.hc.Join = []string{"10.77.0.1", "10.77.0.2"}
		h.hc.Subnet = fmt.Sprintf("10.200.%d.0/24", n)
		s.start(h)
		hosts = append(hosts, h)
	}
	c1, c2 := s.client(hosts[0], creds), s.client(hosts[1], creds)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, c := range []*Client{c1, c2} {
		for {
			ms, err := c.Members(ctx)
			if err == nil && len(ms) == 2 && ms[0].Status == StatusAlive && ms[1].Status == StatusAlive && ms[0].Subnet != "" && ms[1].Subnet != "" {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("hosts did not see each other: %v %v\n%s", ms, err, s.logs())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// Jobs outlive hostd by design: remove them before the hosts stop
	// (cleanups run last registered first).
	t.Cleanup(func() {
		c1.RemoveJob(context.Background(), "web", true)
		c2.RemoveJob(context.Background(), "fetch", true)
	})

	// The container network is set up just after hostd is ready; until
	// then bridge jobs get 503. The web job runs in a user namespace: its
	// root still binds port 80 in the namespace the host made for it.
	for d := root; d != "/"; d = filepath.Dir(d) {
		if st, err := os.Stat(d); err == nil && st.Mode().Perm()&0o001 == 0 {
			os.Chmod(d, st.Mode().Perm()|0o005)
		}
	}
	var web job.Job
	for {
		web, err = c1.CreateJob(ctx, job.Spec{ID: "web", Rootfs: root, Network: job.NetworkBridge, UserNamespace: true,
			Ports: []job.Port{{Host: 8080, Container: 80}}, Cmd: []string{"httpd", "-f", "-p", "80", "-h", "/www"}})
		if apiErr, ok := err.(*APIError); !ok || apiErr.StatusCode != http.StatusServiceUnavailable || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("%v\n%s", err, s.logs())
	}
	if !strings.HasPrefix(web.Status.IP.String(), "10.200.1.") {
		t.Fatalf("web job address %v, want one in h1's subnet 10.200.1.0/24", web.Status.IP)
	}

	// From a job on h2, by address, over the overlay. httpd may need a
	// moment to listen: retry inside the job.
	fetch, err := c2.CreateJob(ctx, fetchSpec("fetch", root, web.Status.IP.String()))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(fetch.Status.IP.String(), "10.200.2.") {
		t.Errorf("fetch job address %v, want one in h2's subnet", fetch.Status.IP)
	}
	j, err := c2.WaitJob(ctx, "fetch")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	c2.JobLogs(ctx, "fetch", job.LogOptions{}, func(l job.LogLine) error { out = append(out, l.Text); return nil })
	if j.Status.Exit == nil || j.Status.Exit.Code != 0 || !strings.Contains(strings.Join(out, "|"), "|hello from h1") {
		t.Fatalf("cross-host fetch: exit %+v, output %q\n%s", j.Status.Exit, out, s.logs())
	}

	// The published port, from h2's namespace to h1's address.
	ns, err := netns.GetFromName(hosts[1].NS)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: cnet.DialContextIn(ns, &net.Dialer{Timeout: 5 * time.Second})}}
	resp, err := hc.Get("http://10.77.0.1:8080/")
	if err != nil {
		t.Fatalf("published port: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "hello from h1\n" {
		t.Errorf("published port answered %q", body)
	}

	// h2 moves to another address (as after a new DHCP lease): the
	// overlay follows on both sides.
	h2 := hosts[1]
	s.MoveHost(h2.Host, 102)
	c2 = s.client(h2, creds)
	for {
		ms, err := c1.Members(ctx)
		if err == nil && len(ms) == 2 && strings.HasPrefix(ms[1].Addr, "10.77.0.102:") && ms[1].Status == StatusAlive {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("h1 never saw h2 move: %v %v", ms, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	refetch := fetchSpec("refetch", root, web.Status.IP.String())
	if _, err := c2.CreateJob(ctx, refetch); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c2.RemoveJob(context.Background(), "refetch", true) })
	if j, err := c2.WaitJob(ctx, "refetch"); err != nil || j.Status.Exit == nil || j.Status.Exit.Code != 0 {
		t.Errorf("fetch across the overlay after h2 moved: %+v, %v\n%s", j.Status.Exit, err, s.logs())
	}

	// The port is taken now: a second job cannot publish it.
	_, err = c1.CreateJob(ctx, job.Spec{ID: "web2", Rootfs: root, Network: job.NetworkBridge,
		Ports: []job.Port{{Host: 8080, Container: 80}}, Cmd: []string{"httpd", "-f", "-p", "80", "-h", "/www"}})
	if apiErr, ok := err.(*APIError); !ok || apiErr.StatusCode != http.StatusBadRequest || !strings.Contains(apiErr.Message, "8080") {
		t.Errorf("port in use: %v, want 400 naming the port", err)
	}
	if jobs, _ := c1.Jobs(ctx); len(jobs) != 1 {
		t.Errorf("a refused job was left behind: %v", jobs)
	}
}

// fetchSpec is a bridge job that fetches the page at ip, retrying while
// httpd (or the overlay) is not there yet.
func fetchSpec(id, root, ip string) job.Spec {
	return job.Spec{ID: id, Rootfs: root, Network: job.NetworkBridge, Cmd: []string{"sh", "-c",
		fmt.Sprintf(`for i in 1 2 3 4 5 6 7 8 9 10; do printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 %s 80 && exit 0; sleep 0.5; done; exit 1`, ip)}}
}

// TestJobsSurviveHostdKill: hostd is killed with SIGKILL while a job
// runs and prints; the restarted hostd adopts the job (same PID), keeps
// logging its output without a gap, and still forwards its published
// port.
func TestJobsSurviveHostdKill(t *testing.T) {
	s := newSegment(t)
	if DefaultConfig().Init == "" {
		t.Skip("needs tini (apt-get install tini)")
	}
	root := webRoot(t, "still here\n")
	os.Symlink("busybox", filepath.Join(root, "bin", "seq"))
	b := newBundle(t)
	creds, err := b.IssueClient("admin", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	h := s.addHost(1, s.writeBundle("bundle.toml", b))
	h.hc.Subnet = "10.200.1.0/24"
	s.start(h)
	c := s.client(h, creds)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for c.Health(ctx) != nil {
		if ctx.Err() != nil {
			t.Fatalf("hostd never answered\n%s", s.logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
	id := fmt.Sprintf("ticker-%d", os.Getpid()) // a leftover of a crashed run cannot collide
	spec := job.Spec{ID: id, Rootfs: root, Network: job.NetworkBridge, Ports: []job.Port{{Host: 8080, Container: 80}},
		Cmd: []string{"sh", "-c", "httpd -p 80 -h /www; i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.1; done"}}
	var j job.Job
	for {
		j, err = c.CreateJob(ctx, spec)
		if apiErr, ok := err.(*APIError); !ok || apiErr.StatusCode != http.StatusServiceUnavailable || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	s.kill(h, syscall.SIGKILL)
	time.Sleep(500 * time.Millisecond) // the job keeps printing into its pipe
	s.start(h)
	c = s.client(h, creds)
	// Before this hostd stops (cleanups run last registered first).
	t.Cleanup(func() { c.RemoveJob(context.Background(), id, true) })
	var again job.Job
	for {
		again, err = c.Job(ctx, id)
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil || again.Status.Pid != j.Status.Pid || again.Status.State != job.StateRunning {
		t.Fatalf("after the restart: %+v, %v; want the same process (pid %d) running", again.Status, err, j.Status.Pid)
	}
	time.Sleep(500 * time.Millisecond)
	var lines []string
	c.JobLogs(ctx, id, job.LogOptions{}, func(l job.LogLine) error { lines = append(lines, l.Text); return nil })
	for i, l := range lines {
		if l != fmt.Sprintf("tick %d", i+1) {
			t.Fatalf("log line %d is %q: output lost or repeated across the kill (%d lines)", i, l, len(lines))
		}
	}
	if len(lines) < 12 {
		t.Errorf("%d lines in 1.5s of a job printing every 0.1s", len(lines))
	}
	ns, err := netns.GetFromName(h.NS)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: cnet.DialContextIn(ns, &net.Dialer{Timeout: 5 * time.Second})}}
	for {
		resp, err := hc.Get("http://10.77.0.1:8080/")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(body) != "still here\n" {
				t.Errorf("published port after the restart answered %q", body)
			}
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("published port after the restart: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
