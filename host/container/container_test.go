package container

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host/internal/testroot"
)

// The tests start real containers with libcontainer: root, and a static
// busybox (Debian's busybox-static) as the whole root filesystem.

func TestMain(m *testing.M) {
	Init() // this test binary is re-executed as "<binary> init"
	os.Exit(m.Run())
}

// busyboxRoot makes a root filesystem of a static busybox and its applet
// links.
func busyboxRoot(t *testing.T) string {
	return testroot.Busybox(t, "sh", "echo", "cat", "sleep", "dd", "touch", "hostname", "grep", "id", "wc", "ls")
}

var testSeq int

// run starts a container of spec on a busybox root and returns its exit
// and what it wrote to stdout and stderr.
func run(t *testing.T, rt *Runtime, s Spec) (Exit, string, string) {
	t.Helper()
	c, stdout, stderr := start(t, rt, s)
	exit := c.Wait()
	out, _ := os.ReadFile(stdout.Name())
	errOut, _ := os.ReadFile(stderr.Name())
	return exit, string(out), string(errOut)
}

func start(t *testing.T, rt *Runtime, s Spec) (*Container, *os.File, *os.File) {
	t.Helper()
	testSeq++
	if s.ID == "" {
		s.ID = fmt.Sprintf("plinth-test-%d-%d", os.Getpid(), testSeq)
	}
	dir := t.TempDir()
	stdout, err := os.Create(filepath.Join(dir, "stdout"))
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := os.Create(filepath.Join(dir, "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdout.Close(); stderr.Close() })
	c, err := rt.Start(s, Stdio{Stdout: stdout, Stderr: stderr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Destroy(); err != nil {
			t.Error(err)
		}
	})
	return c, stdout, stderr
}

func newRuntime(t *testing.T) *Runtime {
	rt, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

func TestExitCodeEnvAndStreams(t *testing.T) {
	root := busyboxRoot(t)
	rt := newRuntime(t)
	exit, out, errOut := run(t, rt, Spec{Rootfs: root, Env: []string{"GREETING=hello"},
		Args: []string{"sh", "-c", "echo $GREETING out; echo err >&2; exit 7"}})
	if exit.Code != 7 || exit.Signal != "" || exit.OOMKilled {
		t.Errorf("exit = %+v, want code 7", exit)
	}
	if out != "hello out\n" || errOut != "err\n" {
		t.Errorf("stdout %q, stderr %q; want \"hello out\\n\" and \"err\\n\"", out, errOut)
	}
}

func TestIsolation(t *testing.T) {
	root := busyboxRoot(t)
	rt := newRuntime(t)
	script := `echo pid=$$; hostname; grep -E '^(CapBnd|CapEff|NoNewPrivs)' /proc/self/status; ` +
		`echo kcore=$(cat /proc/kcore 2>/dev/null | dd bs=1 count=1 2>/dev/null | wc -c); ` +
		`touch /written 2>/dev/null && echo rootfs=rw || echo rootfs=ro; ` +
		`echo links=$(ls /sys/class/net)`
	exit, out, errOut := run(t, rt, Spec{Rootfs: root, Hostname: "jobhost", ReadonlyRootfs: true,
		Args: []string{"sh", "-c", script}})
	if exit.Code != 0 {
		t.Fatalf("exit %+v, stderr %s", exit, errOut)
	}
	// kill (5), net_bind_service (10), audit_write (29).
	const caps = "0000000020000420"
	for _, want := range []string{"pid=1\n", "jobhost\n", "CapBnd:\t" + caps, "CapEff:\t" + caps, "NoNewPrivs:\t1",
		"kcore=0\n", "rootfs=ro\n", "links=lo\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestMemoryLimitKillsWithOOM(t *testing.T) {
	root := busyboxRoot(t)
	rt := newRuntime(t)
	// dd allocates its 64 MiB block and fills it from /dev/zero.
	exit, _, errOut := run(t, rt, Spec{Rootfs: root, Resources: Resources{MemoryBytes: 16 << 20},
		Args: []string{"dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"}})
	if !exit.OOMKilled || exit.Signal != "killed" {
		t.Errorf("exit = %+v (stderr %q), want killed by the OOM killer", exit, errOut)
	}
	// Under the limit the same command succeeds.
	exit, _, errOut = run(t, rt, Spec{Rootfs: root, Resources: Resources{MemoryBytes: 128 << 20},
		Args: []string{"dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"}})
	if exit.Code != 0 || exit.OOMKilled {
		t.Errorf("with room: exit = %+v (stderr %q), want 0", exit, errOut)
	}
}

// tini is the init hostd gives containers.
func tini(t *testing.T) string {
	const path = "/usr/bin/tini-static"
	if _, err := os.Stat(path); err != nil {
		t.Skipf("needs %s (apt-get install tini)", path)
	}
	return path
}

func TestSignalAndAdopt(t *testing.T) {
	root := busyboxRoot(t)
	rt := newRuntime(t)
	c, _, _ := start(t, rt, Spec{Rootfs: root, Init: tini(t), Args: []string{"sleep", "60"}})
	ids, err := rt.List()
	if err != nil || len(ids) != 1 || ids[0] != c.ID() {
		t.Fatalf("List = %v, %v; want [%s]", ids, err, c.ID())
	}
	// Until the init has started the command, a signal to it would be
	// dropped: PID 1 of a namespace ignores signals it does not handle.
	waitFor(t, "the init's child", func() bool { return len(children(c.Pid())) > 0 })
	adopted, err := rt.Adopt(c.ID())
	if err != nil {
		t.Fatal(err)
	}
	if adopted.Pid() != c.Pid() {
		t.Errorf("adopted PID %d, want %d", adopted.Pid(), c.Pid())
	}
	if err := adopted.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan Exit)
	go func() { done <- c.Wait() }()
	select {
	case exit := <-done:
		// The init passes the signal on and exits as shells do: 128+15.
		if exit.Code != 128+int(syscall.SIGTERM) {
			t.Errorf("exit = %+v, want 143 (the command terminated by SIGTERM)", exit)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("container did not stop on SIGTERM")
	}
}

func TestBadSpecsRefused(t *testing.T) {
	rt := newRuntime(t)
	for name, s := range map[string]Spec{
		"bad id":          {ID: "Bad/ID", Rootfs: "/", Args: []string{"true"}},
		"relative rootfs": {ID: "a", Rootfs: "rootfs", Args: []string{"true"}},
		"no command":      {ID: "a", Rootfs: "/"},
		"tiny memory":     {ID: "a", Rootfs: "/", Args: []string{"true"}, Resources: Resources{MemoryBytes: 1 << 20}},
		"bad env":         {ID: "a", Rootfs: "/", Args: []string{"true"}, Env: []string{"NOVALUE"}},
	} {
		if _, err := rt.Start(s, Stdio{}); err == nil {
			t.Errorf("%s: started", name)
		}
	}
	if ids, _ := rt.List(); len(ids) != 0 {
		t.Errorf("refused specs left containers behind: %v", ids)
	}
}

// children returns the PIDs of pid's children.
func children(pid int) []string {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	return strings.Fields(string(data))
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 10s", what)
		}
	}
}

// zombies counts the children of the container's first process that
// have exited and not been reaped. (Zombies leave their cgroup at exit, so
// the cgroup's process list does not show them.)
func zombies(c *Container) int {
	n := 0
	for _, pid := range children(c.Pid()) {
		data, err := os.ReadFile("/proc/" + pid + "/stat")
		// The state follows the command name in parentheses.
		if i := strings.LastIndexByte(string(data), ')'); err == nil && i > 0 && strings.HasPrefix(string(data[i+1:]), " Z") {
			n++
		}
	}
	return n
}

func TestInitReapsOrphans(t *testing.T) {
	root := busyboxRoot(t)
	rt := newRuntime(t)
	// The subshell's sleep is orphaned to PID 1; "sleep 30" never reaps.
	cmd := []string{"sh", "-c", "(sleep 0.1 &); exec sleep 30"}
	bare, _, _ := start(t, rt, Spec{Rootfs: root, Args: cmd})
	withInit, _, _ := start(t, rt, Spec{Rootfs: root, Init: tini(t), Args: cmd})
	time.Sleep(time.Second)
	if n := zombies(bare); n != 1 {
		t.Errorf("without an init: %d zombies, want 1 (the test would prove nothing)", n)
	}
	if n := zombies(withInit); n != 0 {
		t.Errorf("with the init: %d zombies, want 0", n)
	}
	for _, c := range []*Container{bare, withInit} {
		c.Signal(syscall.SIGKILL)
		c.Wait()
	}
}

// cgroupFile reads a control file of the container's cgroup: the v2 name
// on a unified host, the v1 one (in the controller's hierarchy) otherwise.
func cgroupFile(t *testing.T, id, v2, v1ctl, v1 string) string {
	t.Helper()
	path := filepath.Join("/sys/fs/cgroup", DefaultCgroupParent, id, v2)
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err != nil {
		path = filepath.Join("/sys/fs/cgroup", v1ctl, DefaultCgroupParent, id, v1)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(data))
}

func TestCPUAndPidsLimits(t *testing.T) {
	root := busyboxRoot(t)
	rt := newRuntime(t)
	// Ten background sleeps under a limit of 5 processes: a fork fails.
	c, _, stderr := start(t, rt, Spec{Rootfs: root, Resources: Resources{Pids: 5, CPUQuota: 0.5, CPUWeight: 200},
		Args: []string{"sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 30 & done; sleep 30"}})
	// busybox sh gives up on the loop at the first failed fork.
	waitFor(t, "a failed fork", func() bool {
		data, _ := os.ReadFile(stderr.Name())
		return strings.Contains(string(data), "fork")
	})
	if got := cgroupFile(t, c.ID(), "pids.max", "pids", "pids.max"); got != "5" {
		t.Errorf("pids limit %s, want 5", got)
	}
	// Half a core: 50 ms of every 100 ms period.
	if got := cgroupFile(t, c.ID(), "cpu.max", "cpu", "cpu.cfs_quota_us"); got != "50000 100000" && got != "50000" {
		t.Errorf("cpu quota %q, want 50000 per 100000", got)
	}
	// Weight 200 is twice the default share.
	if got := cgroupFile(t, c.ID(), "cpu.weight", "cpu", "cpu.shares"); got != "2048" && got != "79" && got != "200" {
		t.Errorf("cpu weight/shares %q, want twice the default", got)
	}
	c.Signal(syscall.SIGKILL)
	c.Wait()
}

func TestUserNamespace(t *testing.T) {
	root := busyboxRoot(t)
	// The mapped root is nobody on the host: the path to the rootfs must
	// be open to others (t.TempDir makes 0700 directories).
	for d := root; d != "/"; d = filepath.Dir(d) {
		if st, err := os.Stat(d); err == nil && st.Mode().Perm()&0o001 == 0 {
			os.Chmod(d, st.Mode().Perm()|0o005)
		}
	}
	rt := newRuntime(t)
	for _, prepared := range []bool{false, true} {
		s := Spec{Rootfs: root, UserNS: true, Init: tini(t),
			Args: []string{"sh", "-c", "cat /proc/self/uid_map; id -u; touch /bin/x 2>/dev/null && echo wrote || echo denied; " +
				"ls /sys/fs/cgroup | wc -l; sleep 30"}}
		if prepared {
			// A network namespace made for the job (as a bridge job's
			// is) is owned by the host's user namespace, not the job's:
			// the job cannot mount sysfs and gets the host's, alone.
			if _, err := exec.LookPath("ip"); err != nil {
				t.Skip("needs ip (apt-get install iproute2)")
			}
			netns := fmt.Sprintf("plinth-test-userns-%d", os.Getpid())
			if out, err := exec.Command("ip", "netns", "add", netns).CombinedOutput(); err != nil {
				t.Fatalf("ip netns add: %v\n%s", err, out)
			}
			t.Cleanup(func() { exec.Command("ip", "netns", "del", netns).Run() })
			s.NetnsPath = "/run/netns/" + netns
		}
		c, stdout, stderr := start(t, rt, s)
		waitFor(t, "the job's report", func() bool {
			data, _ := os.ReadFile(stdout.Name())
			return strings.Count(string(data), "\n") >= 4
		})
		out, _ := os.ReadFile(stdout.Name())
		fields := strings.Fields(string(out))
		if len(fields) < 6 || fields[0] != "0" || fields[1] != fmt.Sprint(UserNSBase) || fields[2] != "65536" || fields[3] != "0" || fields[4] != "denied" {
			t.Errorf("prepared netns %v: inside: %q (stderr %q); want root mapped to %d and the host-owned rootfs not writable", prepared, out, errOutput(stderr), UserNSBase)
		}
		if len(fields) >= 6 && fields[5] != "0" {
			t.Errorf("prepared netns %v: the job sees %s entries in /sys/fs/cgroup, want none", prepared, fields[5])
		}
		// Seen from the host, the job's processes are not root.
		for _, pid := range children(c.Pid()) {
			st, err := os.Stat("/proc/" + pid)
			if err == nil && st.Sys().(*syscall.Stat_t).Uid != UserNSBase {
				t.Errorf("job process %s runs as host uid %d, want %d", pid, st.Sys().(*syscall.Stat_t).Uid, UserNSBase)
			}
		}
		c.Signal(syscall.SIGKILL)
		c.Wait()
	}
}

func errOutput(f *os.File) string {
	data, _ := os.ReadFile(f.Name())
	return string(data)
}

func TestValidID(t *testing.T) {
	long := strings.Repeat("a", 64)
	for id, want := range map[string]bool{
		"a": true, "web-1": true, "9lives": true, "svc_a.v2": true, long: true,
		"": false, long + "a": false, "-lead": false, ".hidden": false, "_x": false,
		"Upper": false, "a/b": false, "a b": false, "ünï": false,
	} {
		if got := ValidID(id); got != want {
			t.Errorf("ValidID(%q) = %v, want %v", id, got, want)
		}
	}
}

// A tmpfs mount makes room on a read-only root: a file can be bound
// below it, where the root has nothing.
func TestTmpfsMountOnReadonlyRoot(t *testing.T) {
	root := busyboxRoot(t)
	src := filepath.Join(t.TempDir(), "greeting")
	if err := os.WriteFile(src, []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	rt := newRuntime(t)
	script := `grep -c '^tmpfs /var tmpfs' /proc/mounts; touch /var/new && echo var=rw; touch /new 2>/dev/null || echo root=ro; cat /var/lib/app/greeting`
	exit, out, errOut := run(t, rt, Spec{Rootfs: root, ReadonlyRootfs: true, Args: []string{"sh", "-c", script},
		Mounts: []Mount{{Target: "/var", Tmpfs: true}, {Source: src, Target: "/var/lib/app/greeting", ReadOnly: true}}})
	if exit.Code != 0 || out != "1\nvar=rw\nroot=ro\nhello\n" {
		t.Errorf("exit %+v, output %q (stderr %q); want a writable tmpfs on /var holding the bound file, on a read-only root", exit, out, errOut)
	}
	if _, err := os.Stat(filepath.Join(root, "var/lib")); !os.IsNotExist(err) {
		t.Errorf("the bind's mount point was made in the rootfs, not in the tmpfs: %v", err)
	}
	if _, err := rt.Start(Spec{ID: "bad", Rootfs: root, Args: []string{"true"}, Mounts: []Mount{{Source: src, Target: "/x", Tmpfs: true}}}, Stdio{}); err == nil {
		t.Error("a tmpfs with a source was accepted")
	}
}

// Exec runs a further process in a running container, as its first one
// runs; a timeout kills it; a child it leaves holding the output does not
// hold up the answer.
func TestExec(t *testing.T) {
	root := busyboxRoot(t)
	rt := newRuntime(t)
	s := Spec{Rootfs: root, Init: tini(t), Env: []string{"GREETING=hi"}, Cwd: "/tmp", UID: 1000, GID: 1000, Args: []string{"sleep", "60"}}
	c, _, _ := start(t, rt, s)
	s.ID = c.ID()
	ctx := context.Background()
	exec := func(ctx context.Context, args ...string) (Exit, string) {
		t.Helper()
		var out strings.Builder
		exit, err := c.Exec(ctx, s, args, &out)
		if err != nil {
			t.Fatal(err)
		}
		return exit, out.String()
	}
	exit, out := exec(ctx, "sh", "-c", `echo $GREETING; pwd; id -u; echo oops >&2; exit 4`)
	if exit.Code != 4 || out != "hi\n/tmp\n1000\noops\n" {
		t.Errorf("exit %+v, output %q; want code 4 and the job's env, working directory and user", exit, out)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if exit, _ := exec(short, "sleep", "30"); exit.Code != 128+9 || exit.Signal != "killed" {
		t.Errorf("timed out: exit %+v, want killed (137)", exit)
	}
	// The background sleep keeps the output pipe open for 120 s; the
	// answer comes when sh exits (waiting for the sleep would outlast
	// this deadline).
	bounded, cancel2 := context.WithTimeout(ctx, time.Minute)
	defer cancel2()
	if exit, out := exec(bounded, "sh", "-c", "sleep 120 & echo started"); exit.Code != 0 || out != "started\n" || bounded.Err() != nil {
		t.Errorf("with a child left running: exit %+v, output %q, deadline %v; want 0 and its output at once", exit, out, bounded.Err())
	}
	c.Signal(syscall.SIGKILL)
	c.Wait()
	if _, err := c.Exec(ctx, s, []string{"true"}, io.Discard); !errors.Is(err, ErrNotRunning) {
		t.Errorf("exec in an exited container: %v, want ErrNotRunning", err)
	}
}

// A file bound at a symbolic link lands where the link points inside the
// root, as the image's /etc/resolv.conf -> /run/plinth/resolv.conf: with a
// tmpfs on /run, on a read-only root whose /run is empty.
func TestBindThroughSymlinkIntoTmpfs(t *testing.T) {
	root := busyboxRoot(t)
	if err := os.Symlink("/run/plinth/resolv.conf", filepath.Join(root, "etc/resolv.conf")); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(root, "run"), 0o755)
	src := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(src, []byte("nameserver 192.0.2.1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	rt := newRuntime(t)
	exit, out, errOut := run(t, rt, Spec{Rootfs: root, ReadonlyRootfs: true, Args: []string{"cat", "/etc/resolv.conf"},
		Mounts: []Mount{{Target: "/run", Tmpfs: true}, {Source: src, Target: "/etc/resolv.conf", ReadOnly: true}}})
	if exit.Code != 0 || out != "nameserver 192.0.2.1\n" {
		t.Errorf("exit %+v, output %q (stderr %q); want the bound file through the link", exit, out, errOut)
	}
	if target, err := os.Readlink(filepath.Join(root, "etc/resolv.conf")); err != nil || target != "/run/plinth/resolv.conf" {
		t.Errorf("the rootfs's link became %q, %v", target, err)
	}
}
