package host

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host/bundle"
	"github.com/plinth-os/plinth/host/container"
	"github.com/plinth-os/plinth/host/imagestore"
	"github.com/plinth-os/plinth/host/internal/testroot"
	"github.com/plinth-os/plinth/host/job"
)

// jobHost runs a loopback hostd for a test that runs jobs, skipping it
// on a machine without tini, and returns it with an admin client and the
// cluster's bundle.
func jobHost(t *testing.T) (*Daemon, *Client, *bundle.Bundle) {
	t.Helper()
	if DefaultConfig().Init == "" {
		t.Skip("needs tini (apt-get install tini)")
	}
	b := newBundle(t)
	d := loopbackHost(t, b, "alpha")
	return d, adminClient(t, b, d), b
}

// busyboxRoot is a root filesystem of Debian's static busybox.
func busyboxRoot(t testing.TB) string {
	return testroot.Busybox(t, "sh", "echo", "sleep", "true")
}

func TestJobAPI(t *testing.T) {
	root := busyboxRoot(t)
	_, c, _ := jobHost(t)
	ctx := context.Background()

	events, err := c.JobEvents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()
	spec := job.Spec{ID: "hello", Rootfs: root, Cmd: []string{"sh", "-c", "echo hi $WHO; echo warn >&2; exit 3"}, Env: []string{"WHO=api"}}
	j, err := c.CreateJob(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if j.Spec.ID != "hello" || j.Status.Pid == 0 {
		t.Errorf("created %+v", j)
	}
	if j, err = c.WaitJob(ctx, "hello"); err != nil || j.Status.Exit == nil || j.Status.Exit.Code != 3 {
		t.Fatalf("wait: %+v, %v; want exit code 3", j.Status, err)
	}
	var lines []string
	if err := c.JobLogs(ctx, "hello", job.LogOptions{}, func(l job.LogLine) error {
		lines = append(lines, l.Stream+":"+l.Text)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(lines, "|"); !strings.Contains(got, "stdout:hi api") || !strings.Contains(got, "stderr:warn") {
		t.Errorf("logs %s", got)
	}
	for _, want := range []string{"started", "exited"} {
		e, err := events.NextJob()
		if err != nil || e.Type != want || e.Job != "hello" {
			t.Fatalf("event %+v, %v; want %s of hello", e, err, want)
		}
	}

	// Errors carry the right status and a message.
	var apiErr *APIError
	statusOf := func(err error) int {
		if errors.As(err, &apiErr) {
			return apiErr.StatusCode
		}
		return 0
	}
	if _, err := c.CreateJob(ctx, spec); statusOf(err) != http.StatusConflict {
		t.Errorf("duplicate id: %v, want 409", err)
	}
	bad := job.Spec{ID: "bad", Rootfs: root, Cmd: []string{"no-such-command"}}
	if _, err := c.CreateJob(ctx, bad); statusOf(err) != http.StatusBadRequest || !strings.Contains(apiErr.Message, "not found") {
		t.Errorf("missing command: %v, want 400 naming the problem", err)
	}
	if _, err := c.Job(ctx, "nope"); statusOf(err) != http.StatusNotFound {
		t.Errorf("unknown job: %v, want 404", err)
	}

	// A long job: follow its logs, stop it, remove it.
	long := job.Spec{ID: "long", Rootfs: root, Cmd: []string{"sh", "-c", "echo up; sleep 60"}}
	if _, err := c.CreateJob(ctx, long); err != nil {
		t.Fatal(err)
	}
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var first string
	c.JobLogs(fctx, "long", job.LogOptions{Follow: true}, func(l job.LogLine) error {
		first = l.Text
		return errors.New("enough")
	})
	if first != "up" {
		t.Errorf("followed log started with %q, want up", first)
	}
	if err := c.RemoveJob(ctx, "long", false); statusOf(err) != http.StatusConflict {
		t.Errorf("remove running: %v, want 409", err)
	}
	if j, err := c.StopJob(ctx, "long", time.Second); err != nil || j.Status.State != job.StateStopped || j.Status.Exit.Code != 128+15 {
		t.Errorf("stop: %+v, %v; want stopped by SIGTERM (143)", j.Status, err)
	}
	if err := c.RemoveJob(ctx, "long", false); err != nil {
		t.Fatal(err)
	}
	jobs, err := c.Jobs(ctx)
	if err != nil || len(jobs) != 1 || jobs[0].Spec.ID != "hello" {
		t.Errorf("jobs after remove: %v, %v", jobs, err)
	}
}

// busyboxImage writes a `docker save` archive of a one-layer image: a
// static busybox, /etc/motd, and a default command.
func busyboxImage(t *testing.T) string {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skipf("needs busybox-static: %v", err)
	}
	path := filepath.Join(t.TempDir(), "busybox.tar")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := imagestore.WriteArchive(f, "plinth.test/busybox:1", []imagestore.File{
		{Name: "bin/", Mode: 0o755},
		{Name: "bin/busybox", Data: bb, Mode: 0o755},
		{Name: "bin/sh", Link: "busybox"},
		{Name: "bin/cat", Link: "busybox"},
		{Name: "etc/", Mode: 0o755},
		{Name: "etc/motd", Data: []byte("made by the test\n"), Mode: 0o644},
	}, imagestore.ImageConfig{
		Cmd: []string{"sh", "-c", "echo $GREETING; cat /etc/motd"},
		Env: []string{"GREETING=hello from the image"},
	}); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestImageJob(t *testing.T) {
	busyboxRoot(t) // root
	archive := busyboxImage(t)
	d, c, _ := jobHost(t)
	ctx := context.Background()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var apiErr *APIError
	imgs, err := c.ImportImage(ctx, f)
	if err != nil || len(imgs) != 1 || len(imgs[0].Names) != 1 {
		t.Fatalf("import: %+v, %v", imgs, err)
	}
	if _, err := c.CreateJob(ctx, job.Spec{ID: "fromimage", Image: "plinth.test/busybox:1"}); err != nil {
		t.Fatal(err)
	}
	j, err := c.WaitJob(ctx, "fromimage")
	if err != nil || j.Status.Exit == nil || j.Status.Exit.Code != 0 || j.Spec.Image != imgs[0].ID {
		t.Fatalf("job %+v, %v; want exit 0 on image %s", j, err, imgs[0].ID)
	}
	var out []string
	c.JobLogs(ctx, "fromimage", job.LogOptions{}, func(l job.LogLine) error { out = append(out, l.Text); return nil })
	if strings.Join(out, "|") != "hello from the image|made by the test" {
		t.Errorf("output %q, want the image's command, env and files", out)
	}
	if err := c.RemoveImage(ctx, "plinth.test/busybox:1"); !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusConflict {
		t.Errorf("removing an image a job uses: %v, want 409", err)
	}
	if err := c.RemoveJob(ctx, "fromimage", false); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveImage(ctx, "plinth.test/busybox:1"); err != nil {
		t.Fatal(err)
	}
	if layers, _ := os.ReadDir(filepath.Join(d.cfg.StateDir, "images", "layers")); len(layers) != 0 {
		t.Errorf("%d layers left after the last image using them was removed", len(layers))
	}
	if _, err := os.Stat(filepath.Join(d.cfg.StateDir, "jobs", "rootfs", "fromimage")); !os.IsNotExist(err) {
		t.Errorf("removed job's writable layer still there: %v", err)
	}
	if _, err := c.CreateJob(ctx, job.Spec{ID: "missing", Image: "nope:1"}); !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusBadRequest {
		t.Errorf("missing image: %v, want 400", err)
	}
}

// An image job in a user namespace: its root is the unprivileged host ID
// container.UserNSBase; the image's layers are idmapped, so that inside,
// its files keep the image's owners and root writes its own root
// filesystem; what it writes lands on the host owned by the mapped ID; and
// a host-owned directory stays closed to it.
func TestImageJobUserNamespace(t *testing.T) {
	imageJobUserNamespace(t, false)
}

// The same with the image store on a filesystem that takes no idmapped
// mounts (ramfs here; tmpfs before Linux 6.3, a plinth host without a
// data disk): the job gets copies of the layers owned by its range.
func TestImageJobUserNamespaceCopiedLayers(t *testing.T) {
	imageJobUserNamespace(t, true)
}

func imageJobUserNamespace(t *testing.T, storeOnRamfs bool) {
	busyboxRoot(t)
	archive := busyboxImage(t)
	if DefaultConfig().Init == "" {
		t.Skip("needs tini (apt-get install tini)")
	}
	b := newBundle(t)
	cfg := loopbackConfig(t, "127.0.0.1", "alpha", 0)
	cfg.Bundle, cfg.Roles = b, []string{"test"}
	if storeOnRamfs {
		images := filepath.Join(cfg.StateDir, "images")
		if err := os.Mkdir(images, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Mount("ramfs", images, "ramfs", 0, "mode=0700"); err != nil {
			t.Fatal(err)
		}
		// After hostd's own cleanup, which runs first (LIFO).
		t.Cleanup(func() { syscall.Unmount(images, syscall.MNT_DETACH) })
	}
	d := runHost(t, cfg)
	c := adminClient(t, b, d)
	// The test's directories above hostd's are 0700: hostd opens them
	// for walking, as it would a /var of that mode.
	ctx := context.Background()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := c.ImportImage(ctx, f); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	os.Chmod(dir, 0o755)               // the job's root, an unprivileged ID, walks through
	data := filepath.Join(dir, "data") // made by hostd for the job's root
	hostOwned := filepath.Join(dir, "host")
	if err := os.Mkdir(hostOwned, 0o755); err != nil {
		t.Fatal(err)
	}
	script := `cat /proc/self/uid_map; busybox stat -c '%u:%g' /etc/motd; ` +
		`echo made > /data/made && echo data-ok; ` +
		`echo x > /newfile && echo rootfs-ok; ` +
		`(echo x > /host/x) 2>/dev/null && echo host-written || echo host-denied`
	t.Cleanup(func() { c.RemoveJob(context.Background(), "userns", true) })
	if _, err := c.CreateJob(ctx, job.Spec{ID: "userns", Image: "plinth.test/busybox:1", UserNamespace: true,
		Cmd:     []string{"sh", "-c", script},
		Volumes: []job.Volume{{Source: data, Target: "/data"}, {Source: hostOwned, Target: "/host"}}}); err != nil {
		t.Fatal(err)
	}
	j, err := c.WaitJob(ctx, "userns")
	if err != nil || j.Status.Exit == nil || j.Status.Exit.Code != 0 {
		t.Fatalf("job %+v, %v", j.Status, err)
	}
	var out []string
	c.JobLogs(ctx, "userns", job.LogOptions{}, func(l job.LogLine) error { out = append(out, strings.Join(strings.Fields(l.Text), " ")); return nil })
	want := []string{fmt.Sprintf("0 %d %d", container.UserNSBase, container.UserNSSize), "0:0", "data-ok", "rootfs-ok", "host-denied"}
	if !reflect.DeepEqual(out, want) {
		t.Errorf("job output %q, want %q", out, want)
	}
	owner := func(path string) string {
		st, err := os.Stat(path)
		if err != nil {
			return err.Error()
		}
		sys := st.Sys().(*syscall.Stat_t)
		return fmt.Sprintf("%d:%d", sys.Uid, sys.Gid)
	}
	mapped := fmt.Sprintf("%d:%d", container.UserNSBase, container.UserNSBase)
	if got := owner(filepath.Join(data, "made")); got != mapped {
		t.Errorf("file the job made in its volume is owned by %s on the host, want %s", got, mapped)
	}
	if got := owner(filepath.Join(d.cfg.StateDir, "jobs", "rootfs", "userns", "upper", "newfile")); got != mapped {
		t.Errorf("file the job made in its root filesystem is owned by %s on the host, want %s", got, mapped)
	}
	if _, err := os.Stat(filepath.Join(hostOwned, "x")); !os.IsNotExist(err) {
		t.Errorf("the job wrote into a host-owned directory: %v", err)
	}
	// Preferred, as apps' jobs are: this host can idmap, so it gets one.
	t.Cleanup(func() { c.RemoveJob(context.Background(), "prefer", true) })
	p, err := c.CreateJob(ctx, job.Spec{ID: "prefer", Image: "plinth.test/busybox:1", PreferUserNamespace: true,
		Cmd: []string{"cat", "/proc/self/uid_map"}})
	if err != nil || !p.Spec.UserNamespace {
		t.Fatalf("job preferring a user namespace: %+v, %v; want one", p.Spec, err)
	}
	if j, err := c.WaitJob(ctx, "prefer"); err != nil || j.Status.Exit == nil || j.Status.Exit.Code != 0 {
		t.Fatalf("job %+v, %v", j.Status, err)
	}
	out = nil
	c.JobLogs(ctx, "prefer", job.LogOptions{}, func(l job.LogLine) error { out = append(out, strings.Join(strings.Fields(l.Text), " ")); return nil })
	if len(out) != 1 || out[0] != want[0] {
		t.Errorf("uid_map of the job preferring a user namespace: %q, want %q", out, want[0])
	}
	// The image's layers are untouched: still host root's.
	if entries, _ := filepath.Glob(filepath.Join(d.cfg.StateDir, "images", "layers", "*", "etc", "motd")); len(entries) != 1 || owner(entries[0]) != "0:0" {
		t.Errorf("layer files %v: want one motd owned by 0:0", entries)
	}
	// Copies only where the layers could not be idmapped, owned by the
	// range and keeping the layer's modes.
	copies, _ := filepath.Glob(filepath.Join(d.cfg.StateDir, "images", "shifted", "*", "*", "etc", "motd"))
	switch {
	case !storeOnRamfs && len(copies) != 0:
		t.Errorf("layer copies %v on a store that takes idmapped mounts", copies)
	case storeOnRamfs && (len(copies) != 1 || owner(copies[0]) != mapped):
		t.Errorf("layer copies %v: want one motd owned by %s", copies, mapped)
	case storeOnRamfs:
		orig, _ := filepath.Glob(filepath.Join(d.cfg.StateDir, "images", "layers", "*", "etc", "motd"))
		a, errA := os.Stat(orig[0])
		b, errB := os.Stat(copies[0])
		if errA != nil || errB != nil || a.Mode() != b.Mode() || !a.ModTime().Equal(b.ModTime()) || a.Size() != b.Size() {
			t.Errorf("copy %v differs from the layer's %v in mode, time or size (%v, %v)", b, a, errA, errB)
		}
	}
}

// Services are plain data to the host: given at create, returned as
// given to whoever lists the jobs (the discovery agent); a bad one is
// refused with what to fix.
func TestJobServicesOverAPI(t *testing.T) {
	root := busyboxRoot(t)
	_, c, _ := jobHost(t)
	ctx := context.Background()
	services := []job.Service{
		{Name: "web", Port: 8080, Check: &job.Check{Type: job.CheckHTTP, Path: "/healthz", Status: 204}},
		{Name: "dns", Port: 53, Proto: "udp", Check: &job.Check{Type: job.CheckCommand, Command: []string{"true"},
			Interval: job.Duration{Duration: time.Second}, Timeout: job.Duration{Duration: 500 * time.Millisecond}}},
	}
	t.Cleanup(func() { c.RemoveJob(context.Background(), "svc", true) })
	if _, err := c.CreateJob(ctx, job.Spec{ID: "svc", Rootfs: root, Network: job.NetworkHost, Cmd: []string{"sleep", "60"}, Services: services}); err != nil {
		t.Fatal(err)
	}
	jobs, err := c.Jobs(ctx)
	if err != nil || len(jobs) != 1 || !reflect.DeepEqual(jobs[0].Spec.Services, services) {
		t.Fatalf("jobs %+v, %v; want svc with services %+v", jobs, err, services)
	}
	bad := job.Spec{ID: "bad", Rootfs: root, Network: job.NetworkHost, Cmd: []string{"true"},
		Services: []job.Service{{Name: "web", Port: 80, Proto: "udp", Check: &job.Check{Type: job.CheckHTTP}}}}
	var apiErr *APIError
	if _, err := c.CreateJob(ctx, bad); !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusBadRequest ||
		!strings.Contains(apiErr.Message, "service web: check: http checks need a tcp service") {
		t.Errorf("http check on udp: %v, want 400 saying what to do", err)
	}
}

// A job that asks for credentials finds, at every start, a fresh
// certificate from the cluster CA that serves and calls over mutual TLS,
// readable by the job's user only.
func TestJobCredentials(t *testing.T) {
	root := testroot.Busybox(t, "sh", "cat", "mv", "sleep")
	d, c, b := jobHost(t)
	ctx := context.Background()
	out := t.TempDir()
	os.Chmod(out, 0o777) // the job runs as uid 1000
	// The first run saves its credentials and fails; the second, started
	// by the restart policy, saves its own and stays.
	script := `n=$(cat /out/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /out/n; ` +
		`cat ` + job.CredentialsPath + ` > /out/creds$n.tmp && mv /out/creds$n.tmp /out/creds$n; ` +
		`[ $n -ge 2 ] && exec sleep 60; exit 1`
	t.Cleanup(func() { c.RemoveJob(context.Background(), "creds", true) })
	if _, err := c.CreateJob(ctx, job.Spec{ID: "creds", Rootfs: root, Cmd: []string{"sh", "-c", script}, User: "1000",
		Credentials: true, Volumes: []job.Volume{{Source: out, Target: "/out"}},
		Restart: job.Restart{Policy: job.RestartOnFailure}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the second run's credentials", time.Minute, func() error {
		_, err := os.Stat(filepath.Join(out, "creds2"))
		return err
	})
	var certs []*bundle.Credentials
	for _, name := range []string{"creds1", "creds2"} {
		creds, err := bundle.LoadCredentials(filepath.Join(out, name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		certs = append(certs, creds)
	}
	leaf := certs[1].Cert.Leaf
	if leaf.SerialNumber.Cmp(certs[0].Cert.Leaf.SerialNumber) == 0 {
		t.Error("the restarted job got the same certificate again, want a fresh one per start")
	}
	if !certs[1].CACert.Equal(b.CACert) || leaf.Subject.CommonName != d.ID() {
		t.Errorf("certificate %q from CA %q; want one for node %s from the cluster CA", leaf.Subject.CommonName, certs[1].CACert.Subject.CommonName, d.ID())
	}
	// They call hosts...
	if _, err := NewClient(d.APIAddr().String(), certs[1].TLS()).Host(ctx); err != nil {
		t.Errorf("call the host API with the job's credentials: %v", err)
	}
	// ...and serve to clients that trust the cluster CA, which check both
	// ways.
	server, client := net.Pipe()
	srv := tls.Server(server, b.ServerTLS(certs[1].Cert))
	go srv.Handshake()
	cli := tls.Client(client, b.ClientTLS(certs[0].Cert))
	if err := cli.HandshakeContext(ctx); err != nil {
		t.Errorf("mutual TLS between two jobs' credentials: %v", err)
	}
	cli.Close()
	srv.Close()
	// On the host: under hostd's run directory, the job's user's alone.
	st, err := os.Stat(filepath.Join(d.cfg.RunDir, "containers", ".files", "creds", "credentials.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if sys := st.Sys().(*syscall.Stat_t); st.Mode().Perm() != 0o600 || sys.Uid != 1000 || sys.Gid != 1000 {
		t.Errorf("credentials file mode %v owned by %d:%d, want 0600 owned by the job's 1000:1000", st.Mode().Perm(), sys.Uid, sys.Gid)
	}
	if err := c.RemoveJob(ctx, "creds", true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(d.cfg.RunDir, "containers", ".files", "creds")); !os.IsNotExist(err) {
		t.Errorf("a removed job's files are still there: %v", err)
	}
}

// A command runs inside a running job, as the job's own processes do;
// its answer is its exit code and the start of its output.
func TestJobExec(t *testing.T) {
	root := testroot.Busybox(t, "sh", "sleep", "id", "true")
	_, c, _ := jobHost(t)
	ctx := context.Background()
	t.Cleanup(func() { c.RemoveJob(context.Background(), "target", true) })
	if _, err := c.CreateJob(ctx, job.Spec{ID: "target", Rootfs: root, Cmd: []string{"sleep", "60"},
		Env: []string{"GREETING=hi"}, User: "1000", WorkingDir: "/tmp"}); err != nil {
		t.Fatal(err)
	}
	res, err := c.ExecJob(ctx, "target", []string{"sh", "-c", "echo $GREETING $(id -u) $(pwd); echo oops >&2; exit 3"}, 30*time.Second)
	if err != nil || res.ExitCode != 3 || res.Output != "hi 1000 /tmp\noops\n" || res.TimedOut {
		t.Errorf("exec: %+v, %v; want exit 3 with the job's env, user and directory", res, err)
	}
	// Output up to the limit comes back whole; of more, only its start,
	// said to be truncated.
	for _, lines := range []int{job.MaxExecOutput / 11, job.MaxExecOutput/11 + 100} {
		res, err = c.ExecJob(ctx, "target", []string{"sh", "-c", fmt.Sprintf("i=0; while [ $i -lt %d ]; do echo 0123456789; i=$((i+1)); done", lines)}, 30*time.Second)
		want, truncated := lines*11, lines*11 > job.MaxExecOutput
		if truncated {
			want = job.MaxExecOutput
		}
		if err != nil || res.ExitCode != 0 || len(res.Output) != want || res.Truncated != truncated || !strings.HasPrefix(res.Output, "0123456789\n0123") {
			t.Errorf("%d bytes of output: exit %d, %d bytes, truncated %v, %v; want exit 0, %d bytes, truncated %v",
				lines*11, res.ExitCode, len(res.Output), res.Truncated, err, want, truncated)
		}
	}
	start := time.Now()
	res, err = c.ExecJob(ctx, "target", []string{"sleep", "30"}, 300*time.Millisecond)
	if err != nil || res.ExitCode != 137 || !res.TimedOut || time.Since(start) > 20*time.Second {
		t.Errorf("timeout: %+v, %v after %v; want killed (137) and timed out", res, err, time.Since(start))
	}

	var apiErr *APIError
	statusOf := func(err error) int {
		if errors.As(err, &apiErr) {
			return apiErr.StatusCode
		}
		return 0
	}
	for name, tc := range map[string]struct {
		id   string
		cmd  []string
		want int
	}{
		"empty command":   {"target", nil, http.StatusBadRequest},
		"missing command": {"target", []string{"no-such-command"}, http.StatusBadRequest},
		"unknown job":     {"nope", []string{"true"}, http.StatusNotFound},
	} {
		if _, err := c.ExecJob(ctx, tc.id, tc.cmd, time.Second); statusOf(err) != tc.want {
			t.Errorf("%s: %v, want %d", name, err, tc.want)
		}
	}
	if _, err := c.ExecJob(ctx, "target", []string{"true"}, -time.Second); statusOf(err) != http.StatusBadRequest {
		t.Errorf("negative timeout: %v, want 400", err)
	}
	for _, body := range []string{`{"cmd": ["true"], "timeout": "soon"}`, `{"cmd": ["true"], "user": "0"}`, `["true"]`} {
		if _, err := c.send(ctx, http.MethodPost, "/v1/jobs/target/exec", strings.NewReader(body)); statusOf(err) != http.StatusBadRequest {
			t.Errorf("body %s: %v, want 400", body, err)
		}
	}
	if _, err := c.StopJob(ctx, "target", time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ExecJob(ctx, "target", []string{"true"}, time.Second); statusOf(err) != http.StatusConflict {
		t.Errorf("exec in a stopped job: %v, want 409", err)
	}
}
