package vmtest

import (
	"strings"
	"testing"
)

func TestBootPhases(t *testing.T) {
	console := strings.Join([]string{
		"plinth: [  1.900s] stage1: started",
		"plinth: [  2.000s] stage1: 2 modules loaded in 0.071s",
		"plinth: [  2.100s] init: started (pid 1)",
		"plinth: [  2.400s] init: starting netd",
		"level=INFO msg=\"service started\" service=netd pid=87",
		"plinth: [  2.700s] init: network ready in 0.30s",
		"plinth: [  2.950s] init: services ready in 0.25s",
		"plinth: ready in 3.00s",
		"plinth: [  3.010s] init: the kernel ran /init at 1.70s",
	}, "\n")
	got, err := BootPhases(console, 3.0)
	if err != nil {
		t.Fatal(err)
	}
	want := []float64{1.7, 0.2, 0.2, 0.3, 0.3, 0.25, 0.05}
	if len(got) != len(BootPhaseNames) {
		t.Fatalf("got %v", got)
	}
	sum := 0.0
	for i, p := range got {
		if p.Name != BootPhaseNames[i] || p.Seconds < want[i]-1e-9 || p.Seconds > want[i]+1e-9 {
			t.Errorf("phase %d = %v, want %s=%.3f", i, p, BootPhaseNames[i], want[i])
		}
		sum += p.Seconds
	}
	if sum < 3.0-1e-9 || sum > 3.0+1e-9 {
		t.Errorf("phases add up to %.3f, not the ready time 3.0", sum)
	}
	if _, err := BootPhases(strings.Replace(console, "init: starting netd", "x", 1), 3.0); err == nil {
		t.Error("a console without netd's start gave phases")
	}
}
