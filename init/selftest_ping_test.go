package boot

import (
	"os"
	"testing"
	"time"
)

// The self-check's ping answers over IPv4 and IPv6 (loopback only).
func TestPingLoopback(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root for raw ICMP sockets")
	}
	for _, target := range []string{"127.0.0.1", "::1"} {
		if ok, err := ping(target, 3*time.Second); !ok {
			t.Errorf("ping %s: %v", target, err)
		}
	}
	if ok, err := ping("not-an-ip", time.Second); ok || err == nil {
		t.Errorf("ping of a name: %v %v, want an error", ok, err)
	}
}
