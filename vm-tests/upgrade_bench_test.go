//go:build vmtest

package vmtest

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host"
)

// BenchmarkUpgrade: one disk-booted host, its upgrade (from the bundle
// received, checked and written to the host healthy on the new version,
// committed) against its plain reboot (from the request to healthy
// again), alternating, 3 rounds each, medians. Healthy is the same for
// both: hostd back, in the cluster, its job running for 10 s.
func BenchmarkUpgrade(b *testing.B) {
	base := outManifest(b)
	vm, client := diskVM(b, "")
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	const rounds = 3
	var builds []upgradeBuild
	for i := range rounds {
		builds = append(builds, buildForUpgrade(b, fmt.Sprintf("v%d", i+2), base.Serial+uint64(i)+1, ""))
	}
	c := client(ctx)
	startKeeper(ctx, b, c)
	healthy := func(prev time.Time, version string) (host.HostInfo, error) {
		return waitBoot(ctx, c, prev, func(i host.HostInfo) bool {
			return i.BootHealthy && (version == "" || i.Version == version && i.Slots.Upgrade == "committed")
		})
	}
	info, err := healthy(time.Time{}, "")
	if err != nil {
		b.Fatal(err)
	}
	var reboots, upgrades, writes []float64
	for i := range rounds {
		t0 := time.Now()
		if err := vm.CtrlAltDel(ctx); err != nil {
			b.Fatal(err)
		}
		if info, err = healthy(info.StartedAt, ""); err != nil {
			b.Fatalf("reboot: %v\n%s", err, vm.ConsoleTail(30))
		}
		reboots = append(reboots, time.Since(t0).Seconds())

		t0 = time.Now()
		if _, err := c.Upgrade(ctx, bytes.NewReader(builds[i].Bundle), host.UpgradeOptions{}); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if info, err = healthy(info.StartedAt, builds[i].Version); err != nil {
			b.Fatalf("upgrade: %v\n%s", err, vm.ConsoleTail(30))
		}
		writes = append(writes, t1.Sub(t0).Seconds())
		upgrades = append(upgrades, time.Since(t1).Seconds())
		fmt.Printf("  round %d: reboot %.1fs, upgrade %.1fs (+%.1fs receiving, checking and writing the bundle)\n",
			i+1, reboots[i], upgrades[i], writes[i])
	}
	u, r := median(upgrades), median(reboots)
	fmt.Printf("bench upgrade-host: plinth=%.1fs reboot=%.1fs ratio=%.2f (bundle received, checked and written in %.1fs before that)\n", u, r, u/r, median(writes))
}
