package host

import (
	"strings"
	"testing"

	"github.com/plinth-os/plinth/host/slots"
)

func TestUpgradeState(t *testing.T) {
	a := func(entry string) slots.Slot {
		return slots.Slot{Name: "a", Version: "v1", Booted: true, Entry: entry}
	}
	b := func(entry string, left, done int) slots.Slot {
		return slots.Slot{Name: "b", Version: "v2", Entry: entry, TriesLeft: left, TriesDone: done}
	}
	for _, c := range []struct {
		ss   []slots.Slot
		want string
	}{
		{[]slots.Slot{a(slots.EntryCommitted), b(slots.EntryNone, 0, 0)}, "committed"},
		{[]slots.Slot{a(slots.EntryCommitted), b(slots.EntryTrial, 3, 0)}, "installed: v2 in slot b boots next (3 tries)"},
		{[]slots.Slot{a(slots.EntryTrial), b(slots.EntryCommitted, 0, 0)}, "on trial: v1 in slot a"},
		{[]slots.Slot{a(slots.EntryCommitted), b(slots.EntryFailed, 0, 2)}, "failed: v2 in slot b did not become healthy (2 boots); running v1 in slot a"},
	} {
		if got := upgradeState("a", c.ss); !strings.HasPrefix(got, c.want) {
			t.Errorf("%+v: %q, want %q", c.ss, got, c.want)
		}
	}
}
