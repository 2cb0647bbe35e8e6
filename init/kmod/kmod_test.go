package kmod

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

// A list shaped like the image's: the virtio chain, two leaves, bridge.
var sample = []Module{
	{Name: "virtio_ring", Path: "kernel/drivers/virtio/virtio_ring.ko"},
	{Name: "virtio", Path: "kernel/drivers/virtio/virtio.ko", Deps: []string{"virtio_ring"}},
	{Name: "virtio_rng", Path: "kernel/drivers/char/hw_random/virtio-rng.ko", Deps: []string{"virtio", "virtio_ring"}},
	{Name: "qemu_fw_cfg", Path: "kernel/drivers/firmware/qemu_fw_cfg.ko"},
	{Name: "llc", Path: "kernel/net/llc/llc.ko"},
	{Name: "stp", Path: "kernel/net/802/stp.ko", Deps: []string{"llc"}},
	{Name: "bridge", Path: "kernel/net/bridge/bridge.ko", Deps: []string{"stp", "llc"}},
}

func TestListRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	if err := FormatList(&buf, sample); err != nil {
		t.Fatal(err)
	}
	got, err := ParseList(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, sample) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, sample)
	}
}

func TestParseListRejects(t *testing.T) {
	for name, list := range map[string]string{
		"dependency later":   "b b.ko a\na a.ko\n",
		"unknown dependency": "a a.ko zz\n",
		"missing path":       "a\n",
		"duplicate":          "a a.ko\na a.ko\n",
	} {
		if _, err := ParseList(strings.NewReader(list)); err == nil {
			t.Errorf("%s: ParseList(%q) succeeded, want an error", name, list)
		}
	}
}

func names(mods []Module) []string {
	var n []string
	for _, m := range mods {
		n = append(n, m.Name)
	}
	return n
}

func TestSplit(t *testing.T) {
	first, rest, missing := Split(sample, "virtio_rng", "qemu_fw_cfg", "nosuch")
	if want := []string{"virtio_ring", "virtio", "virtio_rng", "qemu_fw_cfg"}; !reflect.DeepEqual(names(first), want) {
		t.Errorf("first = %v, want %v", names(first), want)
	}
	if want := []string{"llc", "stp", "bridge"}; !reflect.DeepEqual(names(rest), want) {
		t.Errorf("rest = %v, want %v", names(rest), want)
	}
	if want := []string{"nosuch"}; !reflect.DeepEqual(missing, want) {
		t.Errorf("missing = %v, want %v", missing, want)
	}

	// Picking a module in the middle of a chain pulls only its own deps.
	first, rest, _ = Split(sample, "stp")
	if want := []string{"llc", "stp"}; !reflect.DeepEqual(names(first), want) {
		t.Errorf("first = %v, want %v", names(first), want)
	}
	if len(first)+len(rest) != len(sample) {
		t.Errorf("split lost modules: %d + %d != %d", len(first), len(rest), len(sample))
	}
}

func TestQueueOrder(t *testing.T) {
	q := NewQueue("/nonexistent", sample)
	q.Hurry("bridge")
	q.Hurry("virtio_rng", "not_in_image")
	var got []string
	take := func() {
		m, _, ok := q.next()
		if !ok {
			t.Fatal("queue empty too soon")
		}
		got = append(got, m.Name)
	}
	take()
	// Hurried while the queue runs: after the earlier calls' modules, but
	// ahead of the rest.
	q.Hurry("qemu_fw_cfg", "llc")
	for range len(sample) - 1 {
		take()
	}
	if _, _, ok := q.next(); ok {
		t.Error("queue not empty after every module")
	}
	want := []string{"llc", "stp", "bridge", "virtio_ring", "virtio", "virtio_rng", "qemu_fw_cfg"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("order %v, want %v", got, want)
	}
}

func TestQueueNoHurryIsListOrder(t *testing.T) {
	q := NewQueue("/nonexistent", sample)
	for _, m := range sample {
		got, hurry, ok := q.next()
		if !ok || got.Name != m.Name || hurry != 0 {
			t.Fatalf("next = %v %v, want %s", got.Name, ok, m.Name)
		}
	}
}

func TestQueueRunSkipsDependentsOfFailed(t *testing.T) {
	// No module files in the directory: virtio_ring fails to open, and the
	// two that depend on it are not attempted.
	err := NewQueue(t.TempDir(), sample[:3]).Run(nil)
	if err == nil || !strings.Contains(err.Error(), "load module virtio_ring") {
		t.Fatalf("Run = %v, want virtio_ring's failure", err)
	}
	if strings.Contains(err.Error(), "module virtio:") || strings.Contains(err.Error(), "virtio_rng") {
		t.Errorf("Run tried modules whose dependency failed: %v", err)
	}
}

func TestQueueRunTellsEachModulesHurry(t *testing.T) {
	q := NewQueue(t.TempDir(), sample)
	if r1, r2 := q.Hurry("stp"), q.Hurry("qemu_fw_cfg"); r1 != 1 || r2 != 2 {
		t.Errorf("Hurry ranks %d, %d; want 1, 2", r1, r2)
	}
	var got []int
	q.Run(func(hurry int) { got = append(got, hurry) })
	// llc and stp from the first call, qemu_fw_cfg from the second, then
	// the rest in list order (also those whose dependency failed).
	if want := []int{1, 1, 2, 0, 0, 0, 0}; !reflect.DeepEqual(got, want) {
		t.Errorf("hurry per module %v, want %v", got, want)
	}
}
