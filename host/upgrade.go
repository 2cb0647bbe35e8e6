package host

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/host/slots"
	"github.com/plinth-os/plinth/image"
	"github.com/plinth-os/plinth/version"
)

// A host installed on a disk upgrades by writing the slot it does not
// run (host/slots) from a signed bundle that arrives whole in memory and
// is checked (size, signature, architecture, digests, version) before a
// byte is written: /var and the running slot are never touched. The
// machine then reboots into the new slot on trial, and PID 1 commits it
// once hostd reports the host healthy (HealthyMarker), or marks it
// failed and reboots back when it does not become healthy in time.

// HealthyMarker is the file hostd writes once the host is healthy after
// a boot (see slots.HealthyMarker).
const HealthyMarker = slots.HealthyMarker

// MaxBundle bounds an upgrade bundle, which is held in memory until it
// is checked; half the available memory bounds it further.
const MaxBundle = 512 << 20

// healthyFor is how long a job must have run, unrestarted, to count as
// healthy after a boot.
const healthyFor = 10 * time.Second

// UpgradeResult is the answer to POST /v1/host/upgrade.
type UpgradeResult struct {
	Slot      string `json:"slot"`
	Version   string `json:"version"`
	Rebooting bool   `json:"rebooting"`
}

// upgrader is hostd's side of upgrades.
type upgrader struct {
	disk    *slots.Disk // nil: not booted from a disk slot
	trusted []ed25519.PublicKey
	mu      sync.Mutex // one upgrade at a time
}

// openUpgrader finds this boot's slots, when it booted from one.
func openUpgrader(log interface{ Warn(string, ...any) }) *upgrader {
	u := &upgrader{}
	if data, err := os.ReadFile(image.TrustedKeysPath); err == nil {
		if u.trusted, err = image.ParseTrustedKeys(data); err != nil {
			log.Warn("trusted keys unreadable; upgrades will be refused", "err", err)
		}
	}
	slot := bootedSlot()
	if slot == "" {
		return u
	}
	d, err := slots.Open("/sys", slots.ESPMount, slot)
	if err != nil {
		log.Warn("booted from a slot, but its disk is unusable; upgrades will be refused", "slot", slot, "err", err)
		return u
	}
	u.disk = d
	return u
}

// bootedSlot is the plinth.slot of the kernel command line.
func bootedSlot() string {
	data, _ := os.ReadFile("/proc/cmdline")
	for _, f := range strings.Fields(string(data)) {
		if v, ok := strings.CutPrefix(f, slots.SlotParam+"="); ok {
			return v
		}
	}
	return ""
}

// SlotsInfo is the slots part of GET /v1/host.
type SlotsInfo struct {
	Booted string       `json:"booted,omitempty"`
	Slots  []slots.Slot `json:"slots,omitempty"`
	// Upgrade says where an upgrade stands, in words.
	Upgrade string `json:"upgrade"`
}

// info reads the slots' state.
func (u *upgrader) info() SlotsInfo {
	if u == nil || u.disk == nil {
		return SlotsInfo{Upgrade: "not installed on a disk (no slots)"}
	}
	ss, err := u.disk.Slots(u.trusted)
	if err != nil {
		return SlotsInfo{Booted: u.disk.Booted, Upgrade: "slots unreadable: " + err.Error()}
	}
	return SlotsInfo{Booted: u.disk.Booted, Slots: ss, Upgrade: upgradeState(u.disk.Booted, ss)}
}

// upgradeState sums up the slots in one phrase.
func upgradeState(booted string, ss []slots.Slot) string {
	var cur, other slots.Slot
	for _, s := range ss {
		if s.Name == booted {
			cur = s
		} else {
			other = s
		}
	}
	switch {
	case cur.Entry == slots.EntryTrial:
		return fmt.Sprintf("on trial: %s in slot %s, committed once healthy", cur.Version, cur.Name)
	case other.Entry == slots.EntryTrial:
		return fmt.Sprintf("installed: %s in slot %s boots next (%d tries)", other.Version, other.Name, other.TriesLeft)
	case other.Entry == slots.EntryFailed:
		return fmt.Sprintf("failed: %s in slot %s did not become healthy (%s); running %s in slot %s", other.Version, other.Name, plural(other.TriesDone, "boot"), cur.Version, cur.Name)
	default:
		return "committed"
	}
}

// errUpgradeConflict marks refusals that are about the host's state,
// not the bundle.
var errUpgradeConflict = errors.New("conflict")

// install checks a bundle read from r and writes it into the other slot.
func (u *upgrader) install(r *http.Request) (UpgradeResult, error) {
	if u.disk == nil {
		return UpgradeResult{}, fmt.Errorf("%w: this host did not boot from a disk slot; install it with `plinth host install --disk`", errUpgradeConflict)
	}
	if !u.mu.TryLock() {
		return UpgradeResult{}, fmt.Errorf("%w: another upgrade of this host is under way", errUpgradeConflict)
	}
	defer u.mu.Unlock()
	limit := int64(MaxBundle)
	if _, avail := memInfo(); avail > 0 {
		limit = min(limit, avail/2)
	}
	if r.ContentLength > limit {
		return UpgradeResult{}, fmt.Errorf("bundle of %d bytes is larger than this host accepts (%d)", r.ContentLength, limit)
	}
	q := r.URL.Query()
	opts := slots.InstallOptions{AllowDowngrade: q.Get("allow_downgrade") == "1"}
	if t := q.Get("tries"); t != "" {
		var err error
		if opts.Tries, err = strconv.Atoi(t); err != nil || opts.Tries < 1 || opts.Tries > 10 {
			return UpgradeResult{}, fmt.Errorf("tries %q: want 1 to 10", t)
		}
	}
	// The signature, architecture and version are checked as soon as the
	// manifest is in, before the large files are read.
	b, err := image.ReadBundle(r.Body, limit, func(man, sig []byte) error {
		m, err := image.VerifyManifest(man, sig, u.trusted)
		if err != nil {
			return err
		}
		if err := m.CheckArch(machine()); err != nil {
			return err
		}
		if err := u.disk.Check(m, u.trusted, opts); err != nil {
			return fmt.Errorf("%w: %v", errUpgradeConflict, err)
		}
		return nil
	})
	if err != nil {
		return UpgradeResult{}, err
	}
	m, err := b.Verify(u.trusted, machine())
	if err != nil {
		return UpgradeResult{}, err
	}
	slot, err := u.disk.Install(b, m, opts)
	if err != nil {
		return UpgradeResult{}, fmt.Errorf("install into the other slot: %w", err)
	}
	return UpgradeResult{Slot: slot, Version: m.Version, Rebooting: q.Get("reboot") != "0"}, nil
}

// machine is uname -m.
func machine() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Machine[:])
}

// upgradeRoute serves POST /v1/host/upgrade: the body is the bundle;
// allow_downgrade=1, tries=N and reboot=0 tune it.
func (d *Daemon) upgradeRoute(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/host/upgrade", func(w http.ResponseWriter, r *http.Request) {
		res, err := d.upgrades.install(r)
		switch {
		case errors.Is(err, errUpgradeConflict):
			writeJSON(w, http.StatusConflict, apiError{strings.TrimPrefix(err.Error(), errUpgradeConflict.Error()+": ")})
			return
		case err != nil:
			writeJSON(w, http.StatusBadRequest, apiError{"upgrade refused, nothing changed: " + err.Error()})
			return
		}
		d.log.Info("upgrade installed", "slot", res.Slot, "version", res.Version, "reboot", res.Rebooting)
		d.answerAndReboot(w, res)
	})
	mux.HandleFunc("POST /v1/host/rollback", func(w http.ResponseWriter, r *http.Request) {
		res, err := d.upgrades.rollback(r.URL.Query().Get("reboot") != "0")
		if err != nil {
			writeJSON(w, http.StatusConflict, apiError{err.Error()})
			return
		}
		d.log.Info("rollback", "slot", res.Slot, "version", res.Version, "reboot", res.Rebooting)
		d.answerAndReboot(w, res)
	})
}

// answerAndReboot publishes the slots' new state, answers, and reboots
// when res says so.
func (d *Daemon) answerAndReboot(w http.ResponseWriter, res UpgradeResult) {
	d.members.setSlotsTag(d.upgrades.info())
	writeJSON(w, http.StatusOK, res)
	if !res.Rebooting {
		return
	}
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	go func() {
		// Let the answer reach the client first.
		time.Sleep(500 * time.Millisecond)
		d.log.Info("rebooting into slot "+res.Slot, "version", res.Version)
		if err := unix.Kill(1, unix.SIGTERM); err != nil {
			d.log.Error("ask PID 1 to reboot", "err", err)
		}
	}()
}

// rollback makes the other slot the next boot.
func (u *upgrader) rollback(reboot bool) (UpgradeResult, error) {
	if u.disk == nil {
		return UpgradeResult{}, fmt.Errorf("this host did not boot from a disk slot: there is no other slot")
	}
	if !u.mu.TryLock() {
		return UpgradeResult{}, fmt.Errorf("an upgrade of this host is under way")
	}
	defer u.mu.Unlock()
	slot, err := u.disk.Rollback()
	if err != nil {
		return UpgradeResult{}, err
	}
	res := UpgradeResult{Slot: slot, Rebooting: reboot}
	for _, s := range u.info().Slots {
		if s.Name == slot {
			res.Version = s.Version
		}
	}
	return res, nil
}

// reportHealthy writes HealthyMarker once the host is healthy: in the
// cluster (another member alive, when it has others to join) and every
// job meant to keep running running for healthyFor, unrestarted.
func (d *Daemon) reportHealthy(ctx context.Context) {
	if d.upgrades.disk == nil {
		return
	}
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	lastWhy := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// Each new reason is logged once: a boot on trial that does not
		// commit says why in hostd's log.
		if why := d.unhealthy(); why != "" {
			if why != lastWhy {
				d.log.Info("not healthy after boot yet", "why", why)
				lastWhy = why
			}
			continue
		}
		if err := os.WriteFile(HealthyMarker, []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o644); err != nil {
			d.log.Error("write healthy marker", "err", err)
			continue
		}
		d.bootHealthy.Store(true)
		d.log.Info("host healthy after boot", "marker", HealthyMarker)
		return
	}
}

// followSlots publishes the slots' state in the member tags whenever it
// changes: PID 1 commits or fails a boot on trial by itself.
func (d *Daemon) followSlots(ctx context.Context) {
	if d.upgrades.disk == nil {
		return
	}
	say := func(i SlotsInfo) string { return slots.Line(i.Slots) + "|" + i.Upgrade }
	last := say(d.upgrades.info())
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if info := d.upgrades.info(); say(info) != last {
			last = say(info)
			d.members.setSlotsTag(info)
		}
	}
}

// unhealthy says why the host is not healthy yet, or "".
func (d *Daemon) unhealthy() string {
	// A host with others to join (seeds, members known before the
	// reboot) is back only once one of them sees it.
	if seeds, _ := d.members.seeds(); len(seeds) > 0 {
		others := 0
		for _, m := range d.members.Members() {
			if m.ID != d.id && m.Status == StatusAlive {
				others++
			}
		}
		if others == 0 {
			return "no other member alive"
		}
	}
	for _, j := range d.jobs.List() {
		switch j.Status.State {
		case job.StateBackoff:
			return "job " + j.Spec.ID + " is restarting"
		case job.StateRunning:
			if time.Since(j.Status.StartedAt) < healthyFor {
				return "job " + j.Spec.ID + " started less than " + healthyFor.String() + " ago"
			}
		}
	}
	return ""
}

// imageVersion is the version of the running image: its os-release's,
// which image build writes, or the binary's outside a plinth image.
var imageVersion = sync.OnceValue(func() string {
	data, err := os.ReadFile("/etc/os-release")
	if err != nil || !strings.Contains(string(data), "\nID=plinth\n") {
		return version.Version
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VERSION_ID="); ok && v != "" {
			return v
		}
	}
	return version.Version
})

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
