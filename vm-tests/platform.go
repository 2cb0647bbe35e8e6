package vmtest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/job"
	boot "github.com/plinth-os/plinth/init"
)

// PlatformNode is ClusterNode for a node of a self-bootstrapping
// platform: role controller, bootstrap_expect = n, and a data disk
// (disk, made by DataDisk) that keeps /var across power cycles.
func PlatformNode(i, n int, kernel, initrd string, seg *Segment, bundlePath, disk string) Config {
	return PlatformNodeAt(i, n, ClusterAddr, 24, kernel, initrd, seg, bundlePath, disk)
}

// PlatformNodeAt is PlatformNode with node j's lan0 address addr(j)/bits.
func PlatformNodeAt(i, n int, addr func(int) string, bits int, kernel, initrd string, seg *Segment, bundlePath, disk string) Config {
	cfg := ClusterNodeAt(i, n, addr, bits, kernel, initrd, seg, bundlePath, "controller")
	// The routers' HTTP port and a TCP route's, as a client outside the
	// cluster reaches them.
	user := cfg.NICs[1].User
	user.Forwards = append(user.Forwards, Forward{GuestPort: RouterHTTPPort}, Forward{GuestPort: RouteTestPort}, Forward{GuestPort: RegistryPort}, Forward{GuestPort: GitPort})
	cfg.MachineConfig = fmt.Appendf(cfg.MachineConfig, "bootstrap_expect = %d\n", n)
	cfg.Disks = []string{disk}
	return cfg
}

// RouterHTTPPort is the routers' HTTP port (services/controller's
// RouterHTTPPort); RouteTestPort is a TCP route's, forwarded to the
// caller's loopback like the host API.
const (
	RouterHTTPPort = 80
	RouteTestPort  = 30100
	// RegistryPort is the registry's (services/controller's
	// RegistryPort), where tests push app images.
	RegistryPort = 7951
	// GitPort is the routers' git port (services/builder's GitPort).
	GitPort = 7952
)

// DataDisk makes dir/data.img, a sparse ext4 image of size bytes
// labelled PLINTH-DATA (the machine's /var) holding testroot/, a busybox
// root filesystem for jobs (the system image has no shell) with an
// index.html.
func DataDisk(dir string, size int64) (string, error) {
	stage, err := os.MkdirTemp(dir, "stage-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(stage)
	// mkfs gives the filesystem's root the stage's mode: 0755, as a
	// fresh filesystem's, not MkdirTemp's 0700.
	if err := os.Chmod(stage, 0o755); err != nil {
		return "", err
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return "", fmt.Errorf("data disk: %w (install busybox-static)", err)
	}
	bin := filepath.Join(stage, "testroot", "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(bin, "busybox"), bb, 0o755); err != nil {
		return "", err
	}
	// A page for the web servers that serve the root (httpd -h /).
	if err := os.WriteFile(filepath.Join(stage, "testroot", "index.html"), []byte("hello from a plinth job\n"), 0o644); err != nil {
		return "", err
	}
	for _, a := range []string{"sh", "cat", "sleep", "echo", "httpd"} {
		if err := os.Symlink("busybox", filepath.Join(bin, a)); err != nil {
			return "", err
		}
	}
	disk := filepath.Join(dir, "data.img")
	for _, cmd := range [][]string{{"truncate", "-s", strconv.FormatInt(size, 10), disk}, {"mkfs.ext4", "-q", "-L", boot.DataLabel, "-d", stage, disk}} {
		if out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput(); err != nil {
			return "", fmt.Errorf("data disk: %v: %v\n%s", cmd, err, out)
		}
	}
	return disk, nil
}

// statusJob is the platform job the CLI runs in to ask for the status:
// the discovery agent's, on every host, with a host certificate and the
// host's network (the name is services/discovery.JobID; the harness does
// not import the platform).
const statusJob = "plinth-discovery"

// PlatformStatus is what `plinth status --json` says.
type PlatformStatus struct {
	Healthy    bool     `json:"healthy"`
	Problems   []string `json:"problems"`
	Warnings   []string `json:"warnings"`
	Controller struct {
		Leader string `json:"leader"`
	} `json:"controller"`
	Scheduler *struct {
		Holder string `json:"holder"`
		Token  uint64 `json:"token"`
	} `json:"scheduler"`
	Hosts []struct {
		ID       string `json:"id"`
		Hostname string `json:"hostname"`
		Status   string `json:"status"`
		Jobs     int    `json:"jobs"`
	} `json:"hosts"`
	Formations []struct {
		Name    string `json:"name"`
		Desired int    `json:"desired"`
		Running int    `json:"running"`
		Reason  string `json:"reason"`
	} `json:"formations"`
}

// Plinth runs the plinth CLI on a host, inside its discovery job (the
// system image's binary, the host's network and certificate), and
// returns what it printed and its exit code.
func Plinth(ctx context.Context, c *host.Client, args ...string) (job.ExecResult, error) {
	cmd := append([]string{"/usr/bin/plinth"}, args...)
	cmd = append(cmd, "--credentials", "/run/plinth/credentials.toml", "--host", "127.0.0.1")
	return c.ExecJob(ctx, statusJob, cmd, 30*time.Second)
}

// Status runs `plinth status --json` on a host. The error says why the
// platform is not healthy, or why the status could not be read.
func Status(ctx context.Context, c *host.Client) (PlatformStatus, error) {
	var st PlatformStatus
	r, err := Plinth(ctx, c, "status", "--json")
	if err != nil {
		return st, err
	}
	if r.Truncated {
		return st, fmt.Errorf("plinth status (exit %d): its JSON is longer than the %d bytes exec returns", r.ExitCode, len(r.Output))
	}
	if err := json.Unmarshal([]byte(r.Output), &st); err != nil {
		return st, fmt.Errorf("plinth status (exit %d): %v: %s", r.ExitCode, err, r.Output)
	}
	if st.Healthy != (r.ExitCode == 0) {
		return st, fmt.Errorf("plinth status said healthy=%v but exited %d", st.Healthy, r.ExitCode)
	}
	if !st.Healthy {
		return st, fmt.Errorf("not healthy: %s", strings.Join(st.Problems, "; "))
	}
	return st, nil
}

// WaitHealthy asks the hosts in turn (one that does not answer may be
// down) until one says the platform is healthy and check, when given,
// accepts the status.
func WaitHealthy(ctx context.Context, hosts []*host.Client, check func(PlatformStatus) error) (PlatformStatus, error) {
	var last error
	for i := 0; ; i++ {
		c := hosts[i%len(hosts)]
		cctx, cancel := context.WithTimeout(ctx, 40*time.Second)
		st, err := Status(cctx, c)
		cancel()
		if err == nil && check != nil {
			err = check(st)
		}
		if err == nil {
			return st, nil
		}
		if last == nil || ctx.Err() == nil {
			// A try cut short by the deadline says less than the one before.
			last = err
		}
		select {
		case <-ctx.Done():
			return st, fmt.Errorf("platform not healthy: %w", last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}
