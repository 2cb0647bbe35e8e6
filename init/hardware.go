package boot

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/plinth-os/plinth/init/coldplug"
	"github.com/plinth-os/plinth/init/kmod"
)

// hardware loads the drivers of the machine's devices from the image's
// alias table, now and as devices come (see init/coldplug).
type hardware struct {
	p       *coldplug.Plugger // nil: no drivers are loaded
	aliases *kmod.Aliases
}

// startColdplug loads the drivers for the devices the machine has from
// the modules of dir, and returns once those of the buses first names are
// in; the others load in the background, then the drivers of the devices
// they find and of devices plugged in later. The console says which
// driver was loaded for which device.
func startColdplug(dir string, mods []kmod.Module, first ...string) *hardware {
	aliases, err := kmod.ReadAliases(dir)
	if err != nil {
		say("coldplug: %v; no drivers are loaded", err)
		return &hardware{}
	}
	start := time.Now()
	p, err := coldplug.Start("/sys", dir, mods, aliases, first, func(format string, args ...any) {
		phase("coldplug: "+format, args...)
	})
	if err != nil {
		say("coldplug: %v; no drivers are loaded", err)
		return &hardware{}
	}
	if len(first) > 0 {
		phase("coldplug: devices found, the drivers of %s's in, in %.3fs; the others load in the background", strings.Join(first, ", "), time.Since(start).Seconds())
	} else {
		phase("coldplug: devices found in %.3fs; their drivers load in the background", time.Since(start).Seconds())
	}
	return &hardware{p: p, aliases: aliases}
}

// driven returns those of the PCI devices devs (sysfs directories) that
// have a driver, or will have one: the image has one that matches them.
func (h *hardware) driven(devs []string) []string {
	var out []string
	for _, d := range devs {
		if _, err := os.Stat(filepath.Join(d, "driver")); err == nil {
			out = append(out, d)
			continue
		}
		modalias, _ := os.ReadFile(filepath.Join(d, "modalias"))
		if h.aliases != nil && len(h.aliases.Match(strings.TrimSpace(string(modalias)))) > 0 {
			out = append(out, d)
		}
	}
	return out
}

// settle waits, up to d, until the drivers known to be needed are loaded
// and the devices they found have theirs.
func (h *hardware) settle(d time.Duration) error {
	if h.p == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return h.p.Settle(ctx)
}

// stop ends the loading of drivers for new devices: stage 1 hands over
// to PID 1's own.
func (h *hardware) stop() {
	if h.p != nil {
		h.p.Stop()
	}
}
