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
// (same kernel; /init prints its uptime and powers off) alternately, five
// times each, and prints median kernel→ready uptime, wall time, the ratio,
// and the artifact sizes.
func BenchmarkBootReady(b *testing.B) {
	kernel, initrd := plinthImage(b)
	bb := filepath.Join(b.TempDir(), "busybox.img")
	if err := BusyboxInitrd(bb); err != nil {
		b.Fatal(err)
	}
	const rounds = 5
	var pUp, pWall, bUp, bWall []float64
	for i := 0; i < rounds; i++ {
		up, wall := bootToMarker(b, kernel, initrd, "plinth: ready in ")
		pUp, pWall = append(pUp, up), append(pWall, wall)
		up, wall = bootToMarker(b, kernel, bb, BusyboxUptimeMarker)
		bUp, bWall = append(bUp, up), append(bWall, wall)
	}
	fmt.Printf("bench boot-wall: plinth=%.2fs busybox=%.2fs ratio=%.2f\n", median(pWall), median(bWall), median(pWall)/median(bWall))
	fmt.Printf("bench boot-ready: plinth=%.2fs busybox=%.2fs ratio=%.2f\n", median(pUp), median(bUp), median(pUp)/median(bUp))
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

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}
