package job

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host/container"
	"github.com/plinth-os/plinth/host/internal/testroot"
)

// The tests run real jobs: root, a static busybox as the root filesystem
// and Debian's tini-static as every job's init.

const helperEnv = "PLINTH_JOB_TEST_HELPER"

func TestMain(m *testing.M) {
	container.Init()
	if dir := os.Getenv(helperEnv); dir != "" {
		os.Exit(runHelper(dir))
	}
	os.Exit(m.Run())
}

// runHelper is a hostd stand-in: it creates the job in dir/spec.json,
// says so on stdout and waits to be killed.
func runHelper(dir string) int {
	data, err := os.ReadFile(filepath.Join(dir, "spec.json"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var cfg struct {
		Config Config
		Spec   Spec
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	m, err := New(cfg.Config)
	if err == nil {
		_, err = m.Create(cfg.Spec)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("created")
	select {}
}

const tiniPath = "/usr/bin/tini-static"

func busyboxRoot(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat(tiniPath); err != nil && os.Geteuid() == 0 {
		t.Skipf("needs %s (apt-get install tini)", tiniPath)
	}
	return testroot.Busybox(t, "sh", "echo", "sleep", "dd", "cat", "seq", "true")
}

func testConfig(t *testing.T) Config {
	return Config{StateDir: t.TempDir(), RunDir: t.TempDir(), Init: tiniPath, StopTimeout: 2 * time.Second}
}

func newManager(t *testing.T, cfg Config) *Manager {
	t.Helper()
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Restore(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, j := range m.List() {
			m.Remove(context.Background(), j.Spec.ID, true)
		}
		m.Close()
	})
	return m
}

var idSeq int

func spec(root string, cmd ...string) Spec {
	idSeq++
	return Spec{ID: fmt.Sprintf("job-%d-%d", os.Getpid(), idSeq), Rootfs: root, Cmd: cmd}
}

func logLines(t *testing.T, m *Manager, id string, opts LogOptions) []LogLine {
	t.Helper()
	var lines []LogLine
	if err := m.Logs(context.Background(), id, opts, func(l LogLine) error { lines = append(lines, l); return nil }); err != nil {
		t.Fatal(err)
	}
	return lines
}

func texts(lines []LogLine) string {
	var s []string
	for _, l := range lines {
		s = append(s, l.Stream+":"+l.Text)
	}
	return strings.Join(s, "|")
}

func TestRunExitLogsAndEvents(t *testing.T) {
	root := busyboxRoot(t)
	m := newManager(t, testConfig(t))
	events, cancel := m.Subscribe()
	defer cancel()
	s := spec(root, "sh", "-c", "echo one; echo oops >&2; echo two; exit 5")
	s.Env = []string{"X=1"}
	before := time.Now()
	if _, err := m.Create(s); err != nil {
		t.Fatal(err)
	}
	j, err := m.Wait(context.Background(), s.ID)
	if err != nil {
		t.Fatal(err)
	}
	if j.Status.State != StateExited || j.Status.Exit == nil || j.Status.Exit.Code != 5 {
		t.Fatalf("status %+v, want exited with code 5", j.Status)
	}
	if got := texts(logLines(t, m, s.ID, LogOptions{})); got != "stdout:one|stderr:oops|stdout:two" &&
		got != "stdout:one|stdout:two|stderr:oops" && got != "stderr:oops|stdout:one|stdout:two" {
		t.Errorf("log = %s", got)
	}
	if got := texts(logLines(t, m, s.ID, LogOptions{Stream: Stdout, Tail: 1})); got != "stdout:two" {
		t.Errorf("last stdout line = %s, want stdout:two", got)
	}
	for _, l := range logLines(t, m, s.ID, LogOptions{}) {
		if l.Time.Before(before.Add(-time.Second)) || l.Time.After(time.Now()) {
			t.Errorf("line %q stamped %v, outside the run", l.Text, l.Time)
		}
	}
	var types []string
	for len(types) < 2 {
		e := <-events
		types = append(types, e.Type)
		if e.Type == "exited" && (e.Exit == nil || e.Exit.Code != 5) {
			t.Errorf("exited event %+v, want code 5", e)
		}
	}
	if strings.Join(types, ",") != "started,exited" {
		t.Errorf("events %v, want started, exited", types)
	}
}

func TestRestartPolicyBacksOff(t *testing.T) {
	root := busyboxRoot(t)
	m := newManager(t, testConfig(t))
	events, cancel := m.Subscribe()
	defer cancel()
	s := spec(root, "sh", "-c", "echo run; exit 3")
	s.Restart = Restart{Policy: RestartOnFailure, MaxBackoff: Duration{2 * time.Second}}
	if _, err := m.Create(s); err != nil {
		t.Fatal(err)
	}
	// The test stops the job only once the fourth run has exited: a stop
	// right after it started could kill it before it printed. The delays
	// are read from the events, not timed, so a slow start under load
	// cannot blur 2 s into 4 s.
	var exits []Event
	var restarts []time.Time
	deadline := time.After(60 * time.Second)
	for len(exits) < 4 {
		select {
		case e := <-events:
			switch e.Type {
			case "exited":
				if e.Exit == nil || e.Exit.Code != 3 {
					t.Fatalf("run %d exited with %+v, want code 3", len(exits)+1, e.Exit)
				}
				exits = append(exits, e)
			case "restarted":
				restarts = append(restarts, e.Time)
			}
		case <-deadline:
			t.Fatalf("only %d runs ended within 60s", len(exits))
		}
	}
	// Doubling from 1 s, capped at 2 s.
	for i, want := range []time.Duration{time.Second, 2 * time.Second, 2 * time.Second, 2 * time.Second} {
		if got := exits[i].NextStart.Sub(exits[i].Time); got != want {
			t.Errorf("run %d: next start %v after its exit, want %v", i+1, got, want)
		}
		if i < len(restarts) && restarts[i].Before(exits[i].NextStart) {
			t.Errorf("run %d: restarted at %v, before its next start %v", i+1, restarts[i], exits[i].NextStart)
		}
	}
	j, err := m.Stop(context.Background(), s.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if j.Status.State != StateStopped || j.Status.Restarts < 3 {
		t.Errorf("after stop: %+v, want stopped after at least 3 restarts", j.Status)
	}
	// Every run that exited had printed, and its output was read before
	// its exit was reported.
	lines := logLines(t, m, s.ID, LogOptions{})
	if len(lines) < 4 || strings.Count(texts(lines), "stdout:run") != len(lines) {
		t.Errorf("log %s; want one line \"run\" per run (at least 4)", texts(lines))
	}
}

func TestOOMAndStopGrace(t *testing.T) {
	root := busyboxRoot(t)
	m := newManager(t, testConfig(t))
	events, cancel := m.Subscribe()
	defer cancel()
	s := spec(root, "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1")
	s.Resources.MemoryBytes = 16 << 20
	if _, err := m.Create(s); err != nil {
		t.Fatal(err)
	}
	j, _ := m.Wait(context.Background(), s.ID)
	if j.Status.Exit == nil || !j.Status.Exit.OOMKilled {
		t.Errorf("exit %+v, want OOM-killed", j.Status.Exit)
	}
	sawOOM := false
	for !sawOOM {
		select {
		case e := <-events:
			sawOOM = e.Type == "oom-killed" && e.Job == s.ID
		case <-time.After(5 * time.Second):
			t.Fatal("no oom-killed event")
		}
	}

	// A job that ignores SIGTERM is killed after the grace period.
	stubborn := spec(root, "sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done")
	if _, err := m.Create(stubborn); err != nil {
		t.Fatal(err)
	}
	waitLog(t, m, stubborn.ID, "ready")
	start := time.Now()
	j, err := m.Stop(context.Background(), stubborn.ID, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < time.Second || took > 5*time.Second || j.Status.State != StateStopped {
		t.Errorf("stop took %v, state %s; want about 1s (the grace) and stopped", took, j.Status.State)
	}
}

func waitLog(t *testing.T, m *Manager, id, text string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		for _, l := range logLines(t, m, id, LogOptions{}) {
			if strings.Contains(l.Text, text) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s never logged %q", id, text)
		}
	}
}

func TestBadInputLeavesNothing(t *testing.T) {
	root := busyboxRoot(t)
	cfg := testConfig(t)
	m := newManager(t, cfg)
	ok := spec(root, "sleep", "30")
	if _, err := m.Create(ok); err != nil {
		t.Fatal(err)
	}
	dup := ok
	bad := map[string]Spec{
		"missing command": spec(root, "/bin/no-such-command"),
		"empty cmd":       spec(root),
		"tiny memory":     func() Spec { s := spec(root, "true"); s.Resources.MemoryBytes = 1 << 20; return s }(),
		"bad restart":     func() Spec { s := spec(root, "true"); s.Restart.Policy = "sometimes"; return s }(),
		"relative rootfs": func() Spec { s := spec(root, "true"); s.Rootfs = "rootfs"; return s }(),
		// This manager has no CA to issue them from.
		"credentials": func() Spec { s := spec(root, "true"); s.Credentials = true; return s }(),
	}
	for name, s := range bad {
		if _, err := m.Create(s); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", name, err)
		}
		if _, err := m.Get(s.ID); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: a record was left behind", name)
		}
		if _, err := os.Stat(m.logDir(s.ID)); err == nil {
			t.Errorf("%s: a log directory was left behind", name)
		}
	}
	if _, err := m.Create(dup); !errors.Is(err, ErrExists) {
		t.Errorf("duplicate id: err = %v, want ErrExists", err)
	}
	if ids, _ := m.rt.List(); len(ids) != 1 {
		t.Errorf("containers %v, want only %s", ids, ok.ID)
	}
	if err := m.Remove(context.Background(), ok.ID, false); !errors.Is(err, ErrRunning) {
		t.Errorf("remove a running job: err = %v, want ErrRunning", err)
	}
}

// TestAdoptAfterHostdKilled: the process that created a job is killed
// with SIGKILL; a new manager on the same directories adopts the running
// container (same PID) and keeps logging its output.
func TestAdoptAfterHostdKilled(t *testing.T) {
	root := busyboxRoot(t)
	cfg := testConfig(t)
	dir := t.TempDir()
	s := spec(root, "sh", "-c", "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.1; done")
	data, _ := json.Marshal(struct {
		Config Config
		Spec   Spec
	}{cfg, s})
	os.WriteFile(filepath.Join(dir, "spec.json"), data, 0o600)
	exe, _ := os.Executable()
	helper := exec.Command(exe)
	helper.Env = append(os.Environ(), helperEnv+"="+dir)
	out, _ := helper.StdoutPipe()
	helper.Stderr = os.Stderr
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	if n, _ := out.Read(buf); !strings.Contains(string(buf[:n]), "created") {
		helper.Process.Kill()
		t.Fatalf("helper: %q", buf[:n])
	}
	time.Sleep(300 * time.Millisecond)
	helper.Process.Signal(syscall.SIGKILL)
	helper.Wait()
	time.Sleep(300 * time.Millisecond) // output piles up in the pipe meanwhile

	m := newManager(t, cfg)
	j, err := m.Get(s.ID)
	if err != nil {
		t.Fatal(err)
	}
	if j.Status.State != StateRunning || syscall.Kill(j.Status.Pid, 0) != nil {
		t.Fatalf("after restore: %+v, want the same process running", j.Status)
	}
	before := len(logLines(t, m, s.ID, LogOptions{}))
	time.Sleep(time.Second)
	after := logLines(t, m, s.ID, LogOptions{})
	if len(after) < before+5 {
		t.Errorf("log grew from %d to %d lines in 1s after adoption, want about 10 more", before, len(after))
	}
	// No tick lost across the restart: they are numbered.
	for i, l := range after {
		if l.Text != fmt.Sprintf("tick %d", i+1) {
			t.Fatalf("line %d is %q, want tick %d: output was lost or duplicated", i, l.Text, i+1)
		}
	}
	if _, err := m.Stop(context.Background(), s.ID, time.Second); err != nil {
		t.Fatal(err)
	}
	if j, _ := m.Get(s.ID); j.Status.State != StateStopped || j.Status.Exit == nil || !j.Status.Exit.Unknown {
		t.Errorf("adopted job after stop: %+v, want stopped with an unknown exit status", j.Status)
	}
}

func TestSystemRootfs(t *testing.T) {
	busyboxRoot(t) // root and tini
	m := newManager(t, testConfig(t))
	s := Spec{ID: "sys", Rootfs: SystemRootfs, Cmd: []string{"/bin/sh", "-c",
		"test -s /etc/os-release && echo os-release; touch /written 2>/dev/null && echo rw || echo ro; ls /proc/1/cmdline >/dev/null && echo proc"}}
	if _, err := m.Create(s); err != nil {
		t.Fatal(err)
	}
	j, _ := m.Wait(context.Background(), s.ID)
	got := texts(logLines(t, m, s.ID, LogOptions{}))
	if j.Status.Exit == nil || j.Status.Exit.Code != 0 || got != "stdout:os-release|stdout:ro|stdout:proc" {
		t.Errorf("exit %+v, log %s; want the host's files, read-only, with the job's own /proc", j.Status.Exit, got)
	}
}

// A system-rootfs job gets empty /run and /var of its own, so that
// volumes and credentials can be bound where the read-only system root
// has nothing; a volume's missing source directory is made for it.
func TestSystemRootfsVolumesAndCredentials(t *testing.T) {
	busyboxRoot(t) // root and tini
	cfg := testConfig(t)
	cfg.Credentials = func(id string, _ []string) ([]byte, error) { return []byte("credentials of " + id + "\n"), nil }
	m := newManager(t, cfg)
	data := filepath.Join(t.TempDir(), "volumes", "data")
	s := Spec{ID: "sysvol", Rootfs: SystemRootfs, Credentials: true,
		Volumes: []Volume{{Source: data, Target: "/var/lib/plinth/app"}},
		Cmd: []string{"/bin/sh", "-c", "grep -cE '^tmpfs /(run|var) tmpfs' /proc/mounts; cat " + CredentialsPath +
			"; echo kept > /var/lib/plinth/app/file && echo wrote; touch /var/other && echo var=rw"}}
	if _, err := m.Create(s); err != nil {
		t.Fatal(err)
	}
	j, _ := m.Wait(context.Background(), s.ID)
	got := texts(logLines(t, m, s.ID, LogOptions{}))
	if j.Status.Exit == nil || j.Status.Exit.Code != 0 || got != "stdout:2|stdout:credentials of sysvol|stdout:wrote|stdout:var=rw" {
		t.Errorf("exit %+v, log %s; want tmpfs /run and /var, the credentials, and the volume written", j.Status.Exit, got)
	}
	if b, err := os.ReadFile(filepath.Join(data, "file")); err != nil || string(b) != "kept\n" {
		t.Errorf("volume's file on the host: %q, %v", b, err)
	}
	if st, err := os.Stat(data); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("made volume directory: %v, %v; want mode 0700", st.Mode(), err)
	}
}

// With VolumeRoot, a volume's source is found under it: two hostds on
// one machine keep apart what their jobs write to the same path.
func TestVolumeRoot(t *testing.T) {
	root := busyboxRoot(t)
	cfg := testConfig(t)
	cfg.VolumeRoot = t.TempDir()
	m := newManager(t, cfg)
	s := spec(root, "sh", "-c", "echo here > /data/file")
	s.Volumes = []Volume{{Source: "/var/lib/plinth/x", Target: "/data"}}
	if _, err := m.Create(s); err != nil {
		t.Fatal(err)
	}
	if j, _ := m.Wait(context.Background(), s.ID); j.Status.Exit == nil || j.Status.Exit.Code != 0 {
		t.Fatalf("job: %+v", j.Status)
	}
	if b, err := os.ReadFile(filepath.Join(cfg.VolumeRoot, "var/lib/plinth/x/file")); err != nil || string(b) != "here\n" {
		t.Errorf("file under the volume root: %q, %v", b, err)
	}
	if _, err := os.Stat("/var/lib/plinth/x"); err == nil {
		t.Errorf("/var/lib/plinth/x exists on the machine: the volume was not rooted")
	}
	if j, _ := m.Get(s.ID); j.Spec.Volumes[0].Source != "/var/lib/plinth/x" {
		t.Errorf("the stored spec's volume became %q; the root is hostd's, not the job's", j.Spec.Volumes[0].Source)
	}
}

// Jobs without a network each get an empty namespace of their own:
// never the host's, never another job's.
func TestNoNetworkJobsAreApart(t *testing.T) {
	root := busyboxRoot(t)
	m := newManager(t, testConfig(t))
	hostNS, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]string{hostNS: "the host"}
	// All at once: a freed namespace's inode number is reused.
	for range 4 {
		s := spec(root, "sleep", "60")
		j, err := m.Create(s)
		if err != nil {
			t.Fatal(err)
		}
		ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", j.Status.Pid))
		if err != nil {
			t.Fatal(err)
		}
		if other, ok := seen[ns]; ok {
			t.Errorf("job %s is in network namespace %s, as %s is", s.ID, ns, other)
		}
		seen[ns] = s.ID
	}
}

// Commands are looked up as the container will find them: symbolic links
// resolve inside the rootfs (an absolute one from its root), executables
// only.
func TestFindCommand(t *testing.T) {
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "usr/lib/app"), 0o755))
	must(os.MkdirAll(filepath.Join(root, "bin"), 0o755))
	must(os.WriteFile(filepath.Join(root, "usr/lib/app/real"), []byte("#!/bin/sh\n"), 0o755))
	must(os.WriteFile(filepath.Join(root, "bin/data"), []byte("x"), 0o644))
	must(os.Symlink("/usr/lib/app/real", filepath.Join(root, "bin/abs")))
	must(os.Symlink("../usr/lib/app/real", filepath.Join(root, "bin/rel")))
	must(os.Symlink("/../../../../../../../usr/bin/env", filepath.Join(root, "bin/escape")))
	must(os.Symlink("/nowhere", filepath.Join(root, "bin/dangling")))
	for cmd, found := range map[string]bool{
		"abs": true, "rel": true, "/bin/abs": true, "/usr/lib/app/real": true,
		"data": false, "escape": false, "dangling": false, "bin": false, "/usr/lib/app": false,
	} {
		s := Spec{Cmd: []string{cmd}, Env: []string{"PATH=/bin:/usr/lib/app"}}
		if err := s.findCommand(root); (err == nil) != found {
			t.Errorf("findCommand(%q) = %v, want found=%v", cmd, err, found)
		}
	}
	// A rootfs that is not a directory is named as the problem.
	s := Spec{Cmd: []string{"abs"}}
	if err := s.findCommand(filepath.Join(root, "bin/data")); err == nil || !strings.Contains(err.Error(), "rootfs") {
		t.Errorf("findCommand on a file rootfs = %v, want an error about the rootfs", err)
	}
}
