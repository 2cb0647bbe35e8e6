package netd

import (
	"testing"

	"github.com/vishvananda/netlink"
)

func TestBondLink(t *testing.T) {
	lacp := bondLink(Bond{Name: "bond0", Mode: Bond8023AD, LACPRate: "fast", XmitHashPolicy: "layer3+4", Miimon: 50})
	if lacp.Mode != netlink.BOND_MODE_802_3AD || lacp.LacpRate != netlink.BOND_LACP_RATE_FAST ||
		lacp.XmitHashPolicy != netlink.BOND_XMIT_HASH_POLICY_LAYER3_4 || lacp.Miimon != 50 {
		t.Errorf("802.3ad bond = mode %v lacp %v hash %v miimon %d", lacp.Mode, lacp.LacpRate, lacp.XmitHashPolicy, lacp.Miimon)
	}
	// Options a mode does not use stay unset, and defaults fill the rest.
	ab := bondLink(Bond{Name: "bond0", Mode: BondActiveBackup})
	if ab.Mode != netlink.BOND_MODE_ACTIVE_BACKUP || ab.LacpRate != -1 || ab.XmitHashPolicy != -1 || ab.Miimon != DefaultMiimon {
		t.Errorf("active-backup bond = mode %v lacp %v hash %v miimon %d", ab.Mode, ab.LacpRate, ab.XmitHashPolicy, ab.Miimon)
	}
	xor := bondLink(Bond{Name: "bond0", Mode: BondBalanceXOR})
	if xor.LacpRate != -1 || xor.XmitHashPolicy != netlink.BOND_XMIT_HASH_POLICY_LAYER2 {
		t.Errorf("balance-xor bond = lacp %v hash %v, want unset and layer2", xor.LacpRate, xor.XmitHashPolicy)
	}
	for _, mode := range BondModes {
		if got := bondLink(Bond{Mode: mode}).Mode.String(); got != mode {
			t.Errorf("mode %q became %q", mode, got)
		}
	}
}

func TestBondDiff(t *testing.T) {
	want := bondLink(Bond{Name: "bond0", Mode: Bond8023AD, LACPRate: "fast"})
	// What the kernel reports back has every option set, used or not.
	have := *want
	if d := bondDiff(&have, want); d != "" {
		t.Errorf("same bond differs: %s", d)
	}
	have.Mode, have.Miimon, have.LacpRate = netlink.BOND_MODE_ACTIVE_BACKUP, 200, netlink.BOND_LACP_RATE_SLOW
	if d, w := bondDiff(&have, want), "mode active-backup→802.3ad, miimon 200→100, lacp_rate slow→fast"; d != w {
		t.Errorf("diff = %q, want %q", d, w)
	}
	ab := bondLink(Bond{Name: "bond0", Mode: BondActiveBackup})
	reported := *ab
	reported.LacpRate, reported.XmitHashPolicy = netlink.BOND_LACP_RATE_SLOW, netlink.BOND_XMIT_HASH_POLICY_LAYER2
	if d := bondDiff(&reported, ab); d != "" {
		t.Errorf("options the mode does not use count as a difference: %s", d)
	}
}
