package boot

import (
	"os"
	"strings"
	"time"

	"github.com/plinth-os/plinth/host/slots"
	"github.com/plinth-os/plinth/image"
	"github.com/plinth-os/plinth/init/kmod"
)

// startWatchdog arms /dev/watchdog, loading softdog first when no
// hardware watchdog has registered. A machine without one keeps going
// without: a missing watchdog must not stop a boot.
func startWatchdog(modDir string, timeout time.Duration) {
	kind := "hardware"
	if !hardwareWatchdog() {
		kind = "softdog"
		mods, err := kmod.ReadList(modDir)
		if err == nil {
			now, _, missing := kmod.Split(mods, "softdog")
			if len(missing) > 0 {
				say("watchdog: softdog is not in the image; running without a watchdog")
				return
			}
			err = kmod.LoadAll(modDir, now)
		}
		if err != nil {
			say("watchdog: load softdog: %v; running without a watchdog", err)
			return
		}
	}
	if err := armWatchdog("/dev/watchdog", timeout); err != nil {
		say("watchdog: %v; running without a watchdog", err)
		return
	}
	phase("init: watchdog armed (%s, %s)", kind, timeout)
}

// testFault is the fault a test image was built with (image.Config), or "".
func testFault() string {
	data, _ := os.ReadFile(image.FaultPath)
	return strings.TrimSpace(string(data))
}

// openSlots mounts the ESP and finds the slots of a disk boot. Without
// them the host runs, but cannot commit, fail or take an upgrade: a boot
// on trial then falls back when its tries are used up.
func openSlots(slot string) *slots.Disk {
	dev := slots.FindPartition("/sys", slots.ESPName)
	if dev == "" {
		say("booted from slot %s, but no %s partition found; boot entries cannot be updated", slot, slots.ESPName)
		return nil
	}
	if err := slots.MountESP(dev, slots.ESPMount); err != nil {
		say("%v; boot entries cannot be updated", err)
		return nil
	}
	d, err := slots.Open("/sys", slots.ESPMount, slot)
	if err != nil {
		say("slots: %v", err)
		return nil
	}
	return d
}

// commitOrFallBack decides a boot on trial: it commits the slot once
// hostd reports the host healthy, or, when that does not happen within
// timeout, uses up the slot's tries and reboots, so that the boot loader
// starts the other slot. A committed boot has nothing to decide.
func commitOrFallBack(d *slots.Disk, timeout time.Duration, power chan<- powerEvent) {
	trial, err := d.OnTrial()
	if err != nil {
		say("slots: %v", err)
		return
	}
	if !trial {
		return
	}
	say("slot %s is on trial: committed once the host is healthy, back to slot %s if not within %s", d.Booted, slots.Other(d.Booted), timeout)
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(slots.HealthyMarker); err == nil {
			if err := d.Commit(); err != nil {
				say("commit slot %s: %v", d.Booted, err)
				return
			}
			phase("init: slot %s committed", d.Booted)
			return
		}
		time.Sleep(time.Second)
	}
	if err := d.MarkFailed(); err != nil {
		say("mark slot %s failed: %v", d.Booted, err)
	}
	say("slot %s did not become healthy within %s: marked failed, rebooting into slot %s", d.Booted, timeout, slots.Other(d.Booted))
	power <- powerEvent{reboot: true, why: "slot " + d.Booted + " failed its trial"}
}
