//go:build vmtest

package vmtest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// bootTimeout bounds one busybox boot under TCG (about 3-5 s here) with a
// wide margin for a loaded CI machine.
const bootTimeout = 60 * time.Second

const defaultTestKernel = "/tmp/k/x/boot/vmlinuz-6.1.0-56-cloud-amd64"

// testKernel returns the guest kernel, or skips the test.
func testKernel(t testing.TB) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("VM tests need root (network namespaces)")
	}
	if _, err := exec.LookPath(DefaultQEMU); err != nil {
		t.Skipf("VM tests need %s: %v", DefaultQEMU, err)
	}
	kernel := os.Getenv("PLINTH_TEST_KERNEL")
	if kernel == "" {
		kernel = defaultTestKernel
	}
	if _, err := os.Stat(kernel); err != nil {
		t.Skipf("no guest kernel (set PLINTH_TEST_KERNEL to a Debian cloud vmlinuz): %v", err)
	}
	return kernel
}

// testModules finds kernel modules by name in the module tree that dpkg -x
// unpacks next to kernel: <root>/lib/modules/<version>.
func testModules(t testing.TB, kernel string, names ...string) []string {
	t.Helper()
	version := strings.TrimPrefix(filepath.Base(kernel), "vmlinuz-")
	dir := filepath.Join(filepath.Dir(kernel), "..", "lib", "modules", version)
	found := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if name, ok := strings.CutSuffix(d.Name(), ".ko"); ok {
			found[name] = path
		}
		return nil
	})
	if err != nil {
		t.Skipf("no modules for the guest kernel: %v", err)
	}
	paths := make([]string, len(names))
	for i, n := range names {
		if paths[i] = found[n]; paths[i] == "" {
			t.Fatalf("module %s not in %s", n, dir)
		}
	}
	return paths
}

// virtioNetModules load virtio-net-pci in dependency order.
var virtioNetModules = []string{
	"virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
	"failover", "net_failover", "virtio_net",
}

func writeInitrd(t testing.TB, b BusyboxInit) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "initrd.cpio")
	if err := b.WriteInitrd(path); err != nil {
		t.Fatal(err)
	}
	return path
}

// sleepScript keeps the guest running after it printed ready.
const sleepScript = `echo "busybox: ready"
while :; do sleep 60; done
`

func TestBusyboxBoot(t *testing.T) {
	t.Parallel()
	kernel := testKernel(t)
	initrd := filepath.Join(t.TempDir(), "busybox.cpio")
	if err := BusyboxInitrd(initrd); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), bootTimeout)
	defer cancel()

	start := time.Now()
	vm := StartT(t, Config{Name: "busybox", Kernel: kernel, Initrd: initrd})
	line, err := vm.WaitFor(ctx, BusyboxUptimeMarker)
	if err != nil {
		t.Fatal(err)
	}
	code, err := vm.WaitExit(ctx)
	wall := time.Since(start)
	if err != nil || code != 0 {
		t.Fatalf("qemu exit status %d, %v; want 0 after the guest powered off", code, err)
	}
	uptime, err := strconv.ParseFloat(strings.TrimPrefix(line, BusyboxUptimeMarker), 64)
	if err != nil || uptime <= 0 {
		t.Errorf("uptime line %q: want %s<seconds>", line, BusyboxUptimeMarker)
	}
	ev, err := vm.WaitEvent(ctx, "SHUTDOWN")
	if err != nil {
		t.Fatal(err)
	}
	if ev.Reason() != "guest-shutdown" {
		t.Errorf("SHUTDOWN reason %q, want guest-shutdown", ev.Reason())
	}
	t.Logf("busybox boot: guest uptime %.2fs, start to exit %.2fs", uptime, wall.Seconds())
}

func TestQMP(t *testing.T) {
	t.Parallel()
	kernel := testKernel(t)
	initrd := writeInitrd(t, BusyboxInit{Script: sleepScript})
	ctx, cancel := context.WithTimeout(t.Context(), bootTimeout)
	defer cancel()

	vm := StartT(t, Config{Name: "qmp", Kernel: kernel, Initrd: initrd})
	if _, err := vm.WaitFor(ctx, "busybox: ready"); err != nil {
		t.Fatal(err)
	}
	ret, err := vm.QMP(ctx, "query-status", nil)
	if err != nil {
		t.Fatal(err)
	}
	var status struct {
		Running bool   `json:"running"`
		Status  string `json:"status"`
	}
	if err := json.Unmarshal(ret, &status); err != nil {
		t.Fatal(err)
	}
	if !status.Running || status.Status != "running" {
		t.Errorf("query-status = %s, want status running", ret)
	}
	if _, err := vm.QMP(ctx, "no-such-command", nil); err == nil {
		t.Error("unknown QMP command succeeded")
	}
	// No button driver in this guest: the press is recorded, nothing else.
	if err := vm.Powerdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.WaitEvent(ctx, "POWERDOWN"); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.QMP(ctx, "quit", nil); err != nil {
		t.Fatal(err)
	}
	if code, err := vm.WaitExit(ctx); err != nil || code != 0 {
		t.Fatalf("after quit: exit status %d, %v; want 0", code, err)
	}
	ev, err := vm.WaitEvent(ctx, "SHUTDOWN")
	if err != nil {
		t.Fatal(err)
	}
	if ev.Reason() != "host-qmp-quit" {
		t.Errorf("SHUTDOWN reason %q, want host-qmp-quit", ev.Reason())
	}
}

func TestRebootEndsQEMU(t *testing.T) {
	t.Parallel()
	kernel := testKernel(t)
	initrd := writeInitrd(t, BusyboxInit{Script: "echo 'busybox: rebooting'\nreboot -f\n"})
	ctx, cancel := context.WithTimeout(t.Context(), bootTimeout)
	defer cancel()

	vm := StartT(t, Config{Name: "reboot", Kernel: kernel, Initrd: initrd})
	if code, err := vm.WaitExit(ctx); err != nil || code != 0 {
		t.Fatalf("exit status %d, %v; want 0", code, err)
	}
	ev, err := vm.WaitEvent(ctx, "SHUTDOWN")
	if err != nil {
		t.Fatal(err)
	}
	if ev.Reason() != "guest-reset" {
		t.Errorf("SHUTDOWN reason %q, want guest-reset", ev.Reason())
	}
}

func TestAllowReboot(t *testing.T) {
	t.Parallel()
	kernel := testKernel(t)
	initrd := writeInitrd(t, BusyboxInit{Script: "echo 'busybox: booted'\nreboot -f\n"})
	ctx, cancel := context.WithTimeout(t.Context(), 2*bootTimeout)
	defer cancel()

	vm := StartT(t, Config{Name: "reboot", Kernel: kernel, Initrd: initrd, AllowReboot: true})
	for boot := 1; boot <= 2; boot++ {
		if _, err := vm.WaitFor(ctx, "busybox: booted"); err != nil {
			t.Fatalf("boot %d: %v", boot, err)
		}
	}
	ev, err := vm.WaitEvent(ctx, "RESET")
	if err != nil {
		t.Fatal(err)
	}
	if ev.Reason() != "guest-reset" {
		t.Errorf("RESET reason %q, want guest-reset", ev.Reason())
	}
	select {
	case <-vm.Exited():
		t.Error("QEMU exited on a guest reboot despite AllowReboot")
	default:
	}
}

// netScript configures eth0 (and eth1 for a link) from vmtest.* kernel
// arguments and, on the VM that has peers, pings them.
const netScript = `arg() { for w in $(cat /proc/cmdline); do case $w in $1=*) echo "${w#$1=}";; esac; done; }
ip link set lo up
ip addr add $(arg vmtest.eth0) dev eth0
ip link set eth0 up
if [ -n "$(arg vmtest.eth1)" ]; then
	ip addr add $(arg vmtest.eth1) dev eth1
	ip link set eth1 up
fi
echo "busybox: network up"
for peer in $(arg vmtest.ping | tr , " "); do
	# The peer may still be booting.
	i=0
	while [ $i -lt 120 ] && ! ping -c 1 -W 1 $peer >/dev/null; do i=$((i+1)); done
	ping -c 3 $peer
done
[ -n "$(arg vmtest.ping)" ] && poweroff -f
while :; do sleep 60; done
`

// pingOK is busybox ping's summary of 3 answered pings.
var pingOK = regexp.MustCompile(`^3 packets transmitted, 3 packets received`)

func TestSegmentAndLink(t *testing.T) {
	t.Parallel()
	kernel := testKernel(t)
	initrd := writeInitrd(t, BusyboxInit{
		Modules: testModules(t, kernel, virtioNetModules...),
		Script:  netScript,
	})
	ctx, cancel := context.WithTimeout(t.Context(), 2*bootTimeout)
	defer cancel()

	var netns *Netns
	var pids []int
	// A subtest, so that its cleanup (closing VMs, deleting the netns) has
	// run when the checks below look for leftovers.
	t.Run("ping", func(t *testing.T) {
		netns = NewNetns(t)
		seg := netns.Segment()
		linkA, linkB, err := NewLink()
		if err != nil {
			t.Fatal(err)
		}
		vms := StartN(t,
			Config{
				Name: "a", Kernel: kernel, Initrd: initrd,
				Cmdline: "vmtest.eth0=10.99.0.1/24 vmtest.eth1=10.98.0.1/24 vmtest.ping=10.99.0.2,10.98.0.2",
				NICs:    []NIC{{MAC: "52:54:00:99:00:01", Segment: seg}, {MAC: "52:54:00:98:00:01", Link: linkA}},
			},
			Config{
				Name: "b", Kernel: kernel, Initrd: initrd,
				Cmdline: "vmtest.eth0=10.99.0.2/24 vmtest.eth1=10.98.0.2/24",
				NICs:    []NIC{{MAC: "52:54:00:99:00:02", Segment: seg}, {MAC: "52:54:00:98:00:02", Link: linkB}},
			},
		)
		a, b := vms[0], vms[1]
		pids = []int{a.PID(), b.PID()}
		if _, err := b.WaitFor(ctx, "busybox: network up"); err != nil {
			t.Fatal(err)
		}
		for _, via := range []string{"segment", "link"} {
			line, err := a.WaitForRegexp(ctx, pingOK)
			if err != nil {
				t.Fatalf("ping over the %s: %v", via, err)
			}
			t.Logf("%s: %s", via, line)
		}
		if code, err := a.WaitExit(ctx); err != nil || code != 0 {
			t.Errorf("vm a: exit status %d, %v; want 0", code, err)
		}
	})
	if netns.Exists() {
		t.Errorf("netns %s still exists after the test", netns.Name)
	}
	for _, pid := range pids {
		if qemuRunning(pid) {
			t.Errorf("qemu pid %d still running after the test", pid)
		}
	}
}

func TestUserNetForward(t *testing.T) {
	t.Parallel()
	kernel := testKernel(t)
	initrd := writeInitrd(t, BusyboxInit{
		Modules: testModules(t, kernel, virtioNetModules...),
		Script: `ip link set lo up
ip addr add 10.0.2.15/24 dev eth0
ip link set eth0 up
mkdir /www
echo "hello from $(uname -r)" > /www/index.html
httpd -p 8080 -h /www
` + sleepScript,
	})
	ctx, cancel := context.WithTimeout(t.Context(), bootTimeout)
	defer cancel()

	vm := StartT(t, Config{
		Name: "usernet", Kernel: kernel, Initrd: initrd,
		NICs: []NIC{{User: &UserNet{Forwards: []Forward{{GuestPort: 8080}}}}},
	})
	if _, err := vm.WaitFor(ctx, "busybox: ready"); err != nil {
		t.Fatal(err)
	}
	addr := vm.HostAddr(8080)
	if !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Fatalf("HostAddr(8080) = %q, want a loopback address", addr)
	}
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/index.html", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(body), "hello from 6.") {
		t.Errorf("GET %s: %q, want the guest's greeting", addr, body)
	}
}

func TestCloseKillsQEMU(t *testing.T) {
	t.Parallel()
	kernel := testKernel(t)
	initrd := writeInitrd(t, BusyboxInit{Script: sleepScript})
	ctx, cancel := context.WithTimeout(t.Context(), bootTimeout)
	defer cancel()

	vm, err := Start(ctx, Config{Name: "close", Kernel: kernel, Initrd: initrd})
	if err != nil {
		t.Fatal(err)
	}
	dir := vm.StateDir()
	if _, err := vm.WaitFor(ctx, "busybox: ready"); err != nil {
		vm.Close()
		t.Fatal(err)
	}
	pid := vm.PID()
	if !qemuRunning(pid) {
		t.Fatalf("qemu pid %d not running before Close", pid)
	}
	if err := vm.Close(); err != nil {
		t.Fatal(err)
	}
	if qemuRunning(pid) {
		t.Errorf("qemu pid %d still running after Close", pid)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("state dir %s made by Start still exists after Close", dir)
	}
	if _, err := vm.WaitExit(ctx); err == nil {
		t.Error("WaitExit after Close: no error, want killed")
	}
}

func TestRunPowersOffOnCancel(t *testing.T) {
	t.Parallel()
	kernel := testKernel(t)
	initrd := writeInitrd(t, BusyboxInit{
		Modules: testModules(t, kernel, "button", "evdev"),
		Script: `mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for d in /sys/class/input/event*; do
	grep -q "Power Button" $d/device/name && ev=/dev/input/${d##*/}
done
# Open the device before saying so: a press before the open is lost.
exec 3<$ev
echo "busybox: waiting for power button on $ev"
dd of=/dev/null bs=24 count=1 <&3 2>/dev/null
echo "busybox: power button pressed"
`,
	})
	ctx, cancel := context.WithTimeout(t.Context(), bootTimeout)
	defer cancel()

	out := &markerWriter{marker: "busybox: waiting for power button", seen: make(chan struct{})}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() {
		done <- Run(runCtx, Config{Name: "run", Kernel: kernel, Initrd: initrd}, out)
	}()
	select {
	case <-out.seen:
	case err := <-done:
		t.Fatalf("Run returned before the guest was ready: %v\n%s", err, out.String())
	case <-ctx.Done():
		t.Fatalf("guest not ready: %v\n%s", ctx.Err(), out.String())
	}
	stop()
	if err := <-done; err != nil {
		t.Fatalf("Run after cancel: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "busybox: power button pressed") {
		t.Errorf("guest did not see the power button:\n%s", out.String())
	}
}

// markerWriter collects output and closes seen when marker appears.
type markerWriter struct {
	marker string
	seen   chan struct{}

	mu  sync.Mutex
	buf strings.Builder
}

func (w *markerWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	had := strings.Contains(w.buf.String(), w.marker)
	w.buf.Write(p)
	if !had && strings.Contains(w.buf.String(), w.marker) {
		close(w.seen)
	}
	return len(p), nil
}

func (w *markerWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// qemuRunning reports whether pid is a live QEMU process.
func qemuRunning(pid int) bool {
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return false
	}
	return strings.HasPrefix(string(comm), "qemu")
}

// BenchmarkBootMachine boots the busybox initrd alternately on -machine pc
// and q35 and prints the mean guest uptime at the marker and wall time
// from Start to QEMU's exit for each.
func BenchmarkBootMachine(b *testing.B) {
	kernel := testKernel(b)
	initrd := filepath.Join(b.TempDir(), "busybox.cpio")
	if err := BusyboxInitrd(initrd); err != nil {
		b.Fatal(err)
	}
	machines := []string{"q35", "pc"}
	uptime := map[string]float64{}
	wall := map[string]float64{}
	n := 0
	for b.Loop() {
		n++
		for _, m := range machines {
			u, w := bootOnce(b, Config{Name: m, Kernel: kernel, Initrd: initrd, Machine: m})
			uptime[m] += u
			wall[m] += w
		}
	}
	for _, m := range machines {
		b.ReportMetric(uptime[m]/float64(n), m+"-uptime-s")
		b.ReportMetric(wall[m]/float64(n), m+"-wall-s")
	}
	q, p := wall["q35"]/float64(n), wall["pc"]/float64(n)
	fmt.Printf("bench boot-machine-wall: q35=%.2fs pc=%.2fs ratio=%.2f\n", q, p, q/p)
	q, p = uptime["q35"]/float64(n), uptime["pc"]/float64(n)
	fmt.Printf("bench boot-machine-uptime: q35=%.2fs pc=%.2fs ratio=%.2f\n", q, p, q/p)
}

// bootOnce boots cfg until QEMU exits and returns the guest's uptime at the
// busybox marker and the wall time from Start to exit, in seconds.
func bootOnce(b *testing.B, cfg Config) (uptime, wall float64) {
	ctx, cancel := context.WithTimeout(b.Context(), bootTimeout)
	defer cancel()
	start := time.Now()
	vm, err := Start(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer vm.Close()
	line, err := vm.WaitFor(ctx, BusyboxUptimeMarker)
	if err != nil {
		b.Fatal(err)
	}
	if code, err := vm.WaitExit(ctx); err != nil || code != 0 {
		b.Fatalf("exit status %d, %v", code, err)
	}
	wall = time.Since(start).Seconds()
	uptime, err = strconv.ParseFloat(strings.TrimPrefix(line, BusyboxUptimeMarker), 64)
	if err != nil {
		b.Fatal(err)
	}
	return uptime, wall
}
