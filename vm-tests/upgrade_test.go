//go:build vmtest

package vmtest

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/host/slots"
	"github.com/plinth-os/plinth/image"
)

// upgradeBuild is one signed build made for the upgrade tests.
type upgradeBuild struct {
	Dir     string
	Version string
	Serial  uint64
	Bundle  []byte
}

// buildForUpgrade builds the image again from out/'s binary, signed with
// the same key as out/ and named version, with serial and a test fault.
func buildForUpgrade(t testing.TB, version string, serial uint64, fault string) upgradeBuild {
	t.Helper()
	dir := t.TempDir()
	args := []string{"image", "build", "--kernel", "cloud", "--out", dir, "--cache", "../.cache/kernel", "--binary", "../out/plinth",
		"--sign-key", signingKey(t), "--version", version, "--serial", strconv.FormatUint(serial, 10)}
	if fault != "" {
		args = append(args, "--test-fault", fault)
	}
	if out, err := exec.Command("../out/plinth", args...).CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", version, err, out)
	}
	data, err := os.ReadFile(filepath.Join(dir, image.BundleName))
	if err != nil {
		t.Fatal(err)
	}
	return upgradeBuild{Dir: dir, Version: version, Serial: serial, Bundle: data}
}

func signingKey(t testing.TB) string {
	t.Helper()
	k, err := filepath.Abs("../.cache/signing.key")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(k); err != nil {
		t.Skipf("no signing key (run make image): %v", err)
	}
	return k
}

// outManifest is out/'s manifest: the build on the disk.
func outManifest(t testing.TB) image.Manifest {
	t.Helper()
	data, err := os.ReadFile("../out/" + image.ManifestName)
	if err != nil {
		t.Skipf("no plinth image (run make image): %v", err)
	}
	var m image.Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// diskVM boots out/'s build from a new disk under UEFI, with the given
// [boot] settings, as a one-node cluster.
func diskVM(t testing.TB, boot string) (*VM, func(context.Context) *host.Client) {
	t.Helper()
	testKernel(t)
	if _, err := os.Stat(OVMFCode); err != nil {
		t.Skipf("needs OVMF (apt-get install ovmf): %v", err)
	}
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.img")
	if out, err := exec.Command("../out/plinth", "image", "disk", "--dir", "../out", "--out", disk,
		"--cmdline", "console=ttyS0 quiet").CombinedOutput(); err != nil {
		t.Fatalf("image disk: %v\n%s", err, out)
	}
	bundlePath, creds, err := ClusterFiles(dir, "vmtest")
	if err != nil {
		t.Fatal(err)
	}
	cfg := ClusterNode(0, 1, "", "", NewSegment(t), bundlePath)
	cfg.Name = "disk1"
	cfg.Disks = []string{disk}
	cfg.UEFI = true
	cfg.AllowReboot = true
	cfg.Memory = 1024
	cfg.MachineConfig = append(cfg.MachineConfig, "\n[boot]\n"+boot...)
	vm := StartT(t, cfg)
	client := func(ctx context.Context) *host.Client {
		t.Helper()
		if _, err := vm.WaitFor(ctx, "plinth: ready in "); err != nil {
			t.Fatalf("%v\n%s", err, vm.ConsoleTail(40))
		}
		c, err := HostClient(vm, creds)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	return vm, client
}

// startKeeper imports the echoback image into the host and runs it as
// job "keeper", brought back at every boot.
func startKeeper(ctx context.Context, t testing.TB, c *host.Client) {
	t.Helper()
	f, err := os.Open(appArchive(t, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	imgs, err := c.ImportImage(ctx, f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateJob(ctx, job.Spec{ID: "keeper", Image: imgs[0].ID, Resurrect: true}); err != nil {
		t.Fatal(err)
	}
}

// waitBoot polls the host until a hostd started after since answers
// and done says its state is final.
func waitBoot(ctx context.Context, c *host.Client, since time.Time, done func(host.HostInfo) bool) (host.HostInfo, error) {
	var last host.HostInfo
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		info, err := c.Host(cctx)
		cancel()
		if err == nil && info.StartedAt.After(since) {
			last = info
			if done(info) {
				return info, nil
			}
		}
		select {
		case <-ctx.Done():
			return last, fmt.Errorf("host not in the expected state; last seen: version %s, upgrade %q", last.Version, last.Slots.Upgrade)
		case <-time.After(time.Second):
		}
	}
}

func slotOf(info host.HostInfo, name string) slots.Slot {
	for _, s := range info.Slots.Slots {
		if s.Name == name {
			return s
		}
	}
	return slots.Slot{}
}

// TestDiskUpgrade boots a disk image under UEFI and upgrades it: bad
// bundles are refused with nothing changed; v2 is installed into slot B,
// booted on trial and committed with /var and the node ID kept; a v3
// whose hostd fails is marked failed by PID 1 and the host is back on
// v2 by itself; a v4 whose init hangs is reset by the watchdog until
// its tries are used up, and the host is back on v2.
func TestDiskUpgrade(t *testing.T) {
	base := outManifest(t)
	vm, client := diskVM(t, "watchdog = \"10s\"\ncommit_timeout = \"60s\"\n")
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()

	// Built while the VM boots.
	builds := map[string]upgradeBuild{}
	for _, b := range []struct {
		version string
		serial  uint64
		fault   string
	}{{"v2", base.Serial + 1, ""}, {"v3", base.Serial + 2, image.FaultHostd}, {"v4", base.Serial + 3, image.FaultInitHang}, {"v0", base.Serial - 1, ""}} {
		builds[b.version] = buildForUpgrade(t, b.version, b.serial, b.fault)
	}

	c := client(ctx)
	first, err := c.Host(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if first.Version != base.Version || first.Slots.Booted != "a" || slotOf(first, "a").Entry != slots.EntryCommitted {
		t.Fatalf("first boot: version %s, slots %+v", first.Version, first.Slots)
	}
	t.Logf("booted %s from slot a under UEFI", first.Version)
	// /var holds the node ID, an imported image and a job's record: all
	// must survive the upgrades.
	startKeeper(ctx, t, c)
	if _, err := waitRunning(ctx, c, "keeper", ""); err != nil {
		t.Fatal(err)
	}

	t.Run("bad bundles", func(t *testing.T) {
		v2 := builds["v2"]
		man, _ := os.ReadFile(filepath.Join(v2.Dir, image.ManifestName))
		_, stranger, _ := ed25519.GenerateKey(rand.Reader)
		foreign, _ := image.SignManifest(man, nil, stranger)
		var arm image.Manifest
		json.Unmarshal(man, &arm)
		arm.Arch = "aarch64"
		armMan, _ := json.Marshal(arm)
		key, err := image.LoadKey(signingKey(t))
		if err != nil {
			t.Fatal(err)
		}
		armSig, _ := image.SignManifest(armMan, nil, key)
		flipped := bytes.Clone(v2.Bundle)
		flipped[len(flipped)/2] ^= 0x10

		before, _ := json.Marshal(first.Slots)
		for _, bad := range []struct {
			name   string
			bundle []byte
			want   string
		}{
			{"truncated", v2.Bundle[:len(v2.Bundle)*2/3], "truncated"},
			{"one byte flipped", flipped, "corrupted"},
			{"unsigned", replaceEntry(t, v2.Bundle, image.SignatureName, nil), "not signed"},
			{"signed by an unknown key", replaceEntry(t, v2.Bundle, image.SignatureName, foreign), "does not trust"},
			{"another architecture", replaceEntry(t, replaceEntry(t, v2.Bundle, image.ManifestName, armMan), image.SignatureName, armSig), "built for aarch64"},
			{"older", builds["v0"].Bundle, "--allow-downgrade"},
		} {
			_, err := c.Upgrade(ctx, bytes.NewReader(bad.bundle), host.UpgradeOptions{NoReboot: true})
			if err == nil || !strings.Contains(err.Error(), bad.want) {
				t.Errorf("%s: %v, want a refusal saying %q", bad.name, err, bad.want)
				continue
			}
			t.Logf("%s: %v", bad.name, err)
		}
		info, err := c.Host(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if after, _ := json.Marshal(info.Slots); !bytes.Equal(before, after) {
			t.Errorf("slots changed by refused bundles:\n%s\n%s", before, after)
		}
		if j, err := c.Job(ctx, "keeper"); err != nil || j.Status.State != job.StateRunning {
			t.Errorf("keeper after refused bundles: %+v %v", j.Status, err)
		}
	})

	// v2: into slot b, booted on trial, committed.
	upgrade := func(b upgradeBuild, tries int) time.Time {
		t.Helper()
		at := time.Now()
		res, err := c.Upgrade(ctx, bytes.NewReader(b.Bundle), host.UpgradeOptions{Tries: tries})
		if err != nil {
			t.Fatalf("upgrade to %s: %v\n%s", b.Version, err, vm.ConsoleTail(20))
		}
		t.Logf("%s written into slot %s (%.1fs); rebooting", b.Version, res.Slot, time.Since(at).Seconds())
		return at
	}
	at := upgrade(builds["v2"], 0)
	info, err := waitBoot(ctx, c, first.StartedAt, func(i host.HostInfo) bool { return i.Slots.Upgrade == "committed" })
	if err != nil {
		t.Fatalf("%v\n%s", err, vm.ConsoleTail(40))
	}
	t.Logf("on v2, committed, %.1fs after the upgrade request", time.Since(at).Seconds())
	if info.Version != "v2" || info.Slots.Booted != "b" || slotOf(info, "a").Version != base.Version || slotOf(info, "a").Entry != slots.EntryCommitted {
		t.Fatalf("after the v2 upgrade: version %s, slots %+v", info.Version, info.Slots)
	}
	if info.ID != first.ID {
		t.Errorf("node ID %s after the upgrade, was %s", info.ID, first.ID)
	}
	j, err := waitRunning(ctx, c, "keeper", "")
	if err != nil {
		t.Fatalf("keeper after the upgrade: %v", err)
	}
	t.Logf("keeper running again after the upgrade (restarts %d, boot %s)", j.Status.Restarts, j.Status.BootID)
	v2Info := info

	// v3 never becomes healthy: PID 1 fails its trial at commit_timeout.
	upgrade(builds["v3"], 0)
	info, err = waitBoot(ctx, c, v2Info.StartedAt, func(i host.HostInfo) bool { return strings.HasPrefix(i.Slots.Upgrade, "failed:") })
	if err != nil {
		t.Fatalf("%v\n%s", err, vm.ConsoleTail(40))
	}
	if info.Version != "v2" || info.Slots.Booted != "b" || slotOf(info, "a").Version != "v3" {
		t.Fatalf("after the failed v3: version %s, slots %+v", info.Version, info.Slots)
	}
	if !strings.Contains(vm.Console(), "slot a did not become healthy within 1m0s: marked failed") {
		t.Errorf("no failed trial on the console:\n%s", vm.ConsoleTail(60))
	}
	t.Logf("v3 failed its trial; back on v2: %s", info.Slots.Upgrade)

	// v4's init hangs: the watchdog resets it at each of its 2 tries.
	hangs := strings.Count(vm.Console(), "init stops here")
	upgrade(builds["v4"], 2)
	info, err = waitBoot(ctx, c, info.StartedAt, func(i host.HostInfo) bool { return strings.HasPrefix(i.Slots.Upgrade, "failed:") })
	if err != nil {
		t.Fatalf("%v\n%s", err, vm.ConsoleTail(40))
	}
	a := slotOf(info, "a")
	if info.Version != "v2" || a.Version != "v4" || a.TriesDone != 2 {
		t.Fatalf("after the hanging v4: version %s, slot a %+v", info.Version, a)
	}
	if n := strings.Count(vm.Console(), "init stops here") - hangs; n != 2 {
		t.Errorf("v4 hung %d times, want 2 (one per try)", n)
	}
	if info.ID != first.ID {
		t.Errorf("node ID %s at the end, was %s", info.ID, first.ID)
	}
	t.Logf("v4 hung twice, reset by the watchdog; back on v2: %s", info.Slots.Upgrade)
}

// replaceEntry returns a bundle with entry name's content replaced
// (nil: left out).
func replaceEntry(t *testing.T, bundle []byte, name string, content []byte) []byte {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(bundle))
	var out bytes.Buffer
	tw := tar.NewWriter(&out)
	for {
		h, err := tr.Next()
		if errors.Is(err, os.ErrClosed) || err != nil {
			break
		}
		var data bytes.Buffer
		data.ReadFrom(tr)
		if h.Name == name {
			if content == nil {
				continue
			}
			data = *bytes.NewBuffer(content)
		}
		if err := tw.WriteHeader(&tar.Header{Name: h.Name, Mode: 0o644, Size: int64(data.Len())}); err != nil {
			t.Fatal(err)
		}
		tw.Write(data.Bytes())
	}
	tw.Close()
	return out.Bytes()
}
