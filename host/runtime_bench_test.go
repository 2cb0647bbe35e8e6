package host

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host/bundle"
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/internal/testwait"
)

// BenchmarkRuntime measures what a job costs through the host API:
//
//   - create→exit of a trivial job (busybox true): client → hostd →
//     container (with tini as init) → exit seen by /wait, against Debian's
//     `runc run` of the same rootfs; 41 pairs, each pair's order
//     alternating, each start after a pause that lets the last one's
//     teardown finish. What is timed differs there: `runc run` deletes
//     the container before it exits, hostd removes the cgroup and state
//     after /wait has answered, off the caller's path. The ratio is the
//     median of the pairs' ratios, which cancels the drift of this shared
//     machine's speed; the medians are printed too;
//
//   - hostd's resident memory with 100 idle jobs against none.
//
// With PLINTH_HOSTD_BINARY set (make bench-runtime sets it to
// plinth-host), hostd is that binary in a process of its own, as on a
// plinth machine, so each container start re-executes it; otherwise it
// runs in this test binary, whose re-exec costs more.
//
//	bench runtime-start: plinth=12.0ms runc=25.0ms ratio=0.48 (of medians 0.48)
func BenchmarkRuntime(b *testing.B) {
	root := busyboxRoot(b)
	runc, err := exec.LookPath("runc")
	if err != nil {
		b.Skip("needs runc (apt-get install runc) for the baseline")
	}
	if DefaultConfig().Init == "" {
		b.Skip("needs tini (apt-get install tini)")
	}
	bnd, err := bundle.Create("bench")
	if err != nil {
		b.Fatal(err)
	}
	cfg := loopbackConfig(b, "127.0.0.1", "bench", 0)
	cfg.Bundle = bnd
	ctx := context.Background()
	creds, err := bnd.IssueClient("bench", time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	var c *Client
	var hostdPID func() int
	if bin := os.Getenv("PLINTH_HOSTD_BINARY"); bin != "" {
		var pid int
		c, pid = runHostdBinary(b, bin, cfg, creds)
		hostdPID = func() int { return pid }
		fmt.Printf("bench runtime: hostd is %s\n", bin)
	} else {
		d := runHost(b, cfg)
		c = NewClient(d.APIAddr().String(), creds.TLS())
		hostdPID = os.Getpid
		fmt.Printf("bench runtime: hostd runs in the test binary (set PLINTH_HOSTD_BINARY for plinth-host)\n")
	}

	bundleDir := runcBundle(b, root)
	runcRoot := b.TempDir()
	const rounds = 41
	var plinth, baseline []time.Duration
	for range b.N {
		for i := range rounds {
			runPlinth := func() time.Duration {
				id := fmt.Sprintf("start-%d", i)
				start := time.Now()
				if _, err := c.CreateJob(ctx, job.Spec{ID: id, Rootfs: root, Cmd: []string{"true"}}); err != nil {
					b.Fatal(err)
				}
				j, err := c.WaitJob(ctx, id)
				if err != nil || j.Status.Exit == nil || j.Status.Exit.Code != 0 {
					b.Fatalf("job: %+v, %v", j.Status, err)
				}
				took := time.Since(start)
				c.RemoveJob(ctx, id, true)
				return took
			}
			runRunc := func() time.Duration {
				start := time.Now()
				out, err := exec.Command(runc, "--root", runcRoot, "run", "--bundle", bundleDir, fmt.Sprintf("start-%d", i)).CombinedOutput()
				if err != nil {
					b.Fatalf("runc run: %v\n%s", err, out)
				}
				return time.Since(start)
			}
			settle := func() { time.Sleep(50 * time.Millisecond) }
			var p, r time.Duration
			if i%2 == 0 {
				settle()
				p = runPlinth()
				settle()
				r = runRunc()
			} else {
				settle()
				r = runRunc()
				settle()
				p = runPlinth()
			}
			plinth, baseline = append(plinth, p), append(baseline, r)
		}
	}
	var ratios []float64
	for i := range plinth {
		ratios = append(ratios, plinth[i].Seconds()/baseline[i].Seconds())
	}
	slices.Sort(ratios)
	p, r := median(plinth), median(baseline)
	fmt.Printf("bench runtime-start: plinth=%.1fms runc=%.1fms ratio=%.2f (of medians %.2f)\n",
		ms(p), ms(r), ratios[len(ratios)/2], p.Seconds()/r.Seconds())

	// Memory: hostd with 100 idle jobs against hostd with none.
	idle := procRSS(hostdPID())
	for i := range 100 {
		if _, err := c.CreateJob(ctx, job.Spec{ID: "idle-" + strconv.Itoa(i), Rootfs: root, Cmd: []string{"sleep", "3600"}}); err != nil {
			b.Fatal(err)
		}
	}
	time.Sleep(time.Second)
	busy := procRSS(hostdPID())
	var initRSS int64
	jobs, err := c.Jobs(ctx)
	if err != nil {
		b.Fatal(err)
	}
	for _, j := range jobs {
		initRSS += procRSS(j.Status.Pid)
	}
	fmt.Printf("bench runtime-memory: plinth-100-jobs=%.1fMB plinth-0-jobs=%.1fMB ratio=%.2f (plus %.1fMB for the 100 jobs' inits)\n",
		mb(busy), mb(idle), float64(busy)/float64(idle), mb(initRSS))
	for i := range 100 {
		c.RemoveJob(ctx, "idle-"+strconv.Itoa(i), true)
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
func mb(b int64) float64         { return float64(b) / (1 << 20) }

// runHostdBinary runs `bin hostd` with cfg's directories, addresses and
// bundle until the benchmark ends, and returns a client of its API once
// it answers, and its PID.
func runHostdBinary(b *testing.B, bin string, cfg Config, creds *bundle.Credentials) (*Client, int) {
	data, err := cfg.Bundle.Marshal()
	if err != nil {
		b.Fatal(err)
	}
	bundlePath := filepath.Join(b.TempDir(), "bundle.toml")
	if err := os.WriteFile(bundlePath, data, 0o600); err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.Command(bin, "hostd", "--bundle", bundlePath, "--state-dir", cfg.StateDir, "--run-dir", cfg.RunDir,
		"--bind", cfg.BindAddr, "--advertise", cfg.Advertise, "--api-bind", cfg.APIBind,
		"--api-port", strconv.Itoa(port), "--gossip-port", "0", "--container-network=false", "--hostname", cfg.Hostname)
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	// Closed, not sent on: both the wait below and the cleanup look.
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	b.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	c := NewClient(net.JoinHostPort(cfg.APIBind, strconv.Itoa(port)), creds.TLS())
	testwait.For(b, bin+" hostd's API", 30*time.Second, func() error {
		select {
		case <-exited:
			b.Fatalf("%s hostd exited: %v\n%s", bin, waitErr, log.String())
		default:
		}
		return c.Health(testwait.Ctx(b, time.Second))
	})
	return c, cmd.Process.Pid
}

func procRSS(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// runcBundle writes an OCI bundle for runc running `true` on root, with
// the isolation plinth jobs get (runc spec's defaults: the same
// namespaces, capabilities and masked paths).
func runcBundle(b *testing.B, root string) string {
	dir := b.TempDir()
	if out, err := exec.Command("runc", "spec", "--bundle", dir).CombinedOutput(); err != nil {
		b.Fatalf("runc spec: %v\n%s", err, out)
	}
	path := filepath.Join(dir, "config.json")
	data, _ := os.ReadFile(path)
	var spec map[string]any
	json.Unmarshal(data, &spec)
	spec["root"] = map[string]any{"path": root, "readonly": false}
	proc := spec["process"].(map[string]any)
	proc["terminal"], proc["args"] = false, []string{"true"}
	data, _ = json.Marshal(spec)
	os.WriteFile(path, data, 0o644)
	return dir
}
