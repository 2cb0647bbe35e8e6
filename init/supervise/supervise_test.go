package supervise

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"
)

// The test binary doubles as the supervised program: with SUPERVISE_HELPER
// set, TestMain runs that behaviour instead of the tests.
func TestMain(m *testing.M) {
	if mode := os.Getenv("SUPERVISE_HELPER"); mode != "" {
		helper(mode)
		return
	}
	// Orphans of helpers must come to this process, as they come to PID 1.
	unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
	os.Exit(m.Run())
}

func helper(mode string) {
	if f := os.Getenv("HELPER_LOG"); f != "" {
		appendLine(f, fmt.Sprintf("start %d %d", os.Getpid(), time.Now().UnixNano()))
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	switch mode {
	case "ready":
		fmt.Println("hello from helper")
		daemon.SdNotify(false, daemon.SdNotifyReady)
		<-term
		appendLine(os.Getenv("HELPER_LOG"), "stopped "+os.Getenv("HELPER_NAME"))
		os.Exit(0)
	case "crash":
		os.Exit(3)
	case "silent":
		<-term
		os.Exit(0)
	case "stubborn":
		daemon.SdNotify(false, daemon.SdNotifyReady)
		for {
			<-term // ignored: only SIGKILL ends it
		}
	case "orphan":
		// Leave a child behind that outlives us and then exits: it is
		// re-parented to the subreaper, which must reap it.
		p, err := os.StartProcess("/bin/sh", []string{"sh", "-c", "sleep 0.2"}, &os.ProcAttr{})
		if err != nil {
			os.Exit(1)
		}
		fmt.Println("orphan", p.Pid)
		daemon.SdNotify(false, daemon.SdNotifyReady)
		<-term
		os.Exit(0)
	}
	os.Exit(2)
}

func appendLine(path, line string) {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return
	}
	fmt.Fprintln(f, line)
	f.Close()
}

// syncBuffer is an io.Writer safe for the supervisor's output goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newTestSupervisor(t *testing.T) (*Supervisor, *syncBuffer) {
	t.Helper()
	out := &syncBuffer{}
	cfg := DefaultConfig()
	cfg.RuntimeDir = t.TempDir()
	cfg.Output = out
	cfg.Log = slog.New(slog.NewTextHandler(out, nil))
	cfg.BackoffMin = 50 * time.Millisecond
	cfg.BackoffMax = 400 * time.Millisecond
	cfg.ReadyTimeout = 5 * time.Second
	cfg.StopTimeout = 2 * time.Second
	s := New(cfg)
	t.Cleanup(s.Stop)
	return s, out
}

func helperService(t *testing.T, name, mode, log string) Service {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return Service{
		Name: name, Path: exe, Notify: mode != "crash",
		Env: []string{"SUPERVISE_HELPER=" + mode, "HELPER_LOG=" + log, "HELPER_NAME=" + name},
	}
}

func TestReadyViaNotifySocketAndOutput(t *testing.T) {
	s, out := newTestSupervisor(t)
	notReady, err := s.Start(context.Background(), helperService(t, "svc", "ready", filepath.Join(t.TempDir(), "log")))
	if err != nil || len(notReady) != 0 {
		t.Fatalf("Start: notReady=%v err=%v", notReady, err)
	}
	st := s.Status()[0]
	if !st.Ready || st.PID == 0 {
		t.Fatalf("status after Start = %+v, want ready with a pid", st)
	}
	waitFor(t, func() bool { return strings.Contains(out.String(), "svc: hello from helper") })
}

func TestNotReadyServiceDoesNotBlockStart(t *testing.T) {
	s, _ := newTestSupervisor(t)
	svc := helperService(t, "mute", "silent", "")
	svc.ReadyTimeout = 300 * time.Millisecond
	start := time.Now()
	notReady, err := s.Start(context.Background(), svc)
	if err != nil {
		t.Fatal(err)
	}
	if len(notReady) != 1 || notReady[0] != "mute" {
		t.Fatalf("notReady = %v, want [mute]", notReady)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Start took %s with a 300ms ready timeout", d)
	}
	if st := s.Status()[0]; st.Ready || st.PID == 0 {
		t.Fatalf("status = %+v, want running and not ready", st)
	}
}

func TestRestartWithGrowingBackoff(t *testing.T) {
	s, _ := newTestSupervisor(t)
	log := filepath.Join(t.TempDir(), "log")
	if _, err := s.Start(context.Background(), helperService(t, "crashy", "crash", log)); err != nil {
		t.Fatal(err)
	}
	var starts []time.Time
	waitFor(t, func() bool {
		starts = readStarts(t, log)
		return len(starts) >= 5
	})
	// Backoff 50, 100, 200, 400, 400 ms: each gap at least the delay.
	want := []time.Duration{50, 100, 200, 400}
	for i, w := range want {
		gap := starts[i+1].Sub(starts[i])
		if gap < w*time.Millisecond {
			t.Errorf("gap %d = %s, want >= %dms", i, gap, w)
		}
	}
	if st := s.Status()[0]; st.Restarts < 4 || st.LastExit != "exit status 3" {
		t.Errorf("status = %+v, want >= 4 restarts and last exit status 3", st)
	}
}

func TestOnFailureDoesNotRestartCleanExit(t *testing.T) {
	s, _ := newTestSupervisor(t)
	log := filepath.Join(t.TempDir(), "log")
	svc := helperService(t, "once", "ready", log)
	svc.Restart = OnFailure
	if _, err := s.Start(context.Background(), svc); err != nil {
		t.Fatal(err)
	}
	pid := s.Status()[0].PID
	unix.Kill(pid, unix.SIGTERM) // helper exits 0 on SIGTERM
	waitFor(t, func() bool { return s.Status()[0].LastExit == "exit status 0" })
	time.Sleep(300 * time.Millisecond)
	if n := len(readStarts(t, log)); n != 1 {
		t.Fatalf("started %d times, want 1 (clean exit with OnFailure)", n)
	}
}

func TestStopReverseOrderAndKillAfterGrace(t *testing.T) {
	s, _ := newTestSupervisor(t)
	log := filepath.Join(t.TempDir(), "log")
	stubborn := helperService(t, "stubborn", "stubborn", log)
	stubborn.StopTimeout = 200 * time.Millisecond
	_, err := s.Start(context.Background(),
		helperService(t, "first", "ready", log),
		helperService(t, "second", "ready", log),
		stubborn)
	if err != nil {
		t.Fatal(err)
	}
	s.Stop()
	data, _ := os.ReadFile(log)
	var stops []string
	for _, l := range strings.Split(string(data), "\n") {
		if name, ok := strings.CutPrefix(l, "stopped "); ok {
			stops = append(stops, name)
		}
	}
	if strings.Join(stops, ",") != "second,first" {
		t.Errorf("stop order = %v, want [second first]", stops)
	}
	for _, st := range s.Status() {
		if st.PID != 0 {
			t.Errorf("%s still has pid %d after Stop", st.Name, st.PID)
		}
		if st.Name == "stubborn" && st.LastExit != "signal: killed" {
			t.Errorf("stubborn last exit = %q, want signal: killed", st.LastExit)
		}
	}
}

func TestOrphansAreReaped(t *testing.T) {
	s, out := newTestSupervisor(t)
	if _, err := s.Start(context.Background(), helperService(t, "parent", "orphan", "")); err != nil {
		t.Fatal(err)
	}
	var pid int
	waitFor(t, func() bool {
		for _, l := range strings.Split(out.String(), "\n") {
			if v, ok := strings.CutPrefix(l, "parent: orphan "); ok {
				pid, _ = strconv.Atoi(v)
			}
		}
		return pid != 0
	})
	// Kill the parent so the sleeping child is re-parented to us, then
	// check it leaves no zombie once it exits.
	unix.Kill(s.Status()[0].PID, unix.SIGKILL)
	waitFor(t, func() bool {
		_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
		return os.IsNotExist(err)
	})
}

func readStarts(t *testing.T, path string) []time.Time {
	data, _ := os.ReadFile(path)
	var ts []time.Time
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) == 3 && f[0] == "start" {
			ns, _ := strconv.ParseInt(f[2], 10, 64)
			ts = append(ts, time.Unix(0, ns))
		}
	}
	return ts
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
