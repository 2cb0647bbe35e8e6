//go:build vmtest

package vmtest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkBootReady boots the plinth image and a busybox-only initramfs
// (same kernel; /init prints its uptime and powers off) alternately, eleven
// times each, and prints median kernel→ready uptime, wall time, the ratio,
// and the artifact sizes. Every other round boots busybox first, so that a
// drift in the host's speed does not favour one side.
func BenchmarkBootReady(b *testing.B) {
	kernel, initrd := plinthImage(b)
	bb := filepath.Join(b.TempDir(), "busybox.img")
	if err := BusyboxInitrd(bb); err != nil {
		b.Fatal(err)
	}
	const rounds = 11
	var pUp, pWall, bUp, bWall []float64
	for i := 0; i < rounds; i++ {
		var pu, pw, bu, bw float64
		if i%2 == 0 {
			pu, pw = bootToMarker(b, kernel, initrd, "plinth: ready in ")
			bu, bw = bootToMarker(b, kernel, bb, BusyboxUptimeMarker)
		} else {
			bu, bw = bootToMarker(b, kernel, bb, BusyboxUptimeMarker)
			pu, pw = bootToMarker(b, kernel, initrd, "plinth: ready in ")
		}
		pUp, pWall = append(pUp, pu), append(pWall, pw)
		bUp, bWall = append(bUp, bu), append(bWall, bw)
		b.Logf("round %d: ready plinth=%.2fs busybox=%.2fs", i+1, pu, bu)
	}
	// A TCG boot's speed varies by up to 1.7x from one boot to the next
	// (host load, not the image); the ranges show how far to trust a ratio.
	fmt.Printf("bench boot-wall: plinth=%.2fs busybox=%.2fs ratio=%.2f (plinth %s, busybox %s)\n",
		median(pWall), median(bWall), median(pWall)/median(bWall), spread(pWall), spread(bWall))
	fmt.Printf("bench boot-ready: plinth=%.2fs busybox=%.2fs ratio=%.2f (plinth %s, busybox %s)\n",
		median(pUp), median(bUp), median(pUp)/median(bUp), spread(pUp), spread(bUp))
	var total int64
	for _, f := range []string{kernel, initrd, filepath.Join(filepath.Dir(kernel), "system.img")} {
		st, err := os.Stat(f)
		if err != nil {
			b.Fatal(err)
		}
		total += st.Size()
		fmt.Printf("bench size-%s: %.2fMB\n", filepath.Base(f), float64(st.Size())/1e6)
	}
	fmt.Printf("bench size-total: plinth=%.2fMB target=30MB ratio=%.2f\n", float64(total)/1e6, float64(total)/30e6)
}

// bootToMarker boots to marker and returns the uptime printed after it and the
// wall time from start to the marker.
func bootToMarker(b *testing.B, kernel, initrd, marker string) (uptime, wall float64) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	vm, err := Start(ctx, Config{Name: "bench", Kernel: kernel, Initrd: initrd})
	if err != nil {
		b.Fatal(err)
	}
	defer vm.Close()
	line, err := vm.WaitFor(ctx, marker)
	if err != nil {
		b.Fatal(err)
	}
	wall = time.Since(start).Seconds()
	rest := line[strings.Index(line, marker)+len(marker):]
	uptime, err = strconv.ParseFloat(strings.TrimSuffix(strings.Fields(rest)[0], "s"), 64)
	if err != nil {
		b.Fatalf("parse uptime in %q: %v", line, err)
	}
	return uptime, wall
}

// spread formats the range of v.
func spread(v []float64) string {
	return fmt.Sprintf("%.2f-%.2f", slices.Min(v), slices.Max(v))
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}
