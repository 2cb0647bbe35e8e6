package kmod

import (
	"bytes"
	"slices"
	"strings"
	"testing"
)

// Aliases as the modules carry them: PCI IDs, a PCI class, ACPI, input
// (match-all), virtio, and one that two modules share.
const aliasTable = `pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e
pci:v00008086d0000100Esv*sd*bc*sc*i* e1000
pci:v*d*sv*sd*bc01sc06i01* ahci
acpi*:QEMU0002:* qemu_fw_cfg
acpi*:LNXPWRBN:* button
input:b*v*p*e*-e*k*r*a*m*l*s*f*w* evdev
virtio:d00000001v* virtio_net
pci:v00001AF4d00001000sv*sd*bc*sc*i* virtio_pci
pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
`

func TestAliasesMatch(t *testing.T) {
	a, err := ParseAliases(strings.NewReader(aliasTable))
	if err != nil {
		t.Fatal(err)
	}
	for modalias, want := range map[string][]string{
		"pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00": {"e1000e"},
		"pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01": {"ahci"},
		"pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00": {"virtio_pci"},
		"acpi:QEMU0002:": {"qemu_fw_cfg"},
		"acpi:LNXPWRBN:": {"button"},
		"input:b0019v0000p0001e0000-e0,1,k74,ramlsfw":           {"evdev"},
		"virtio:d00000001v00001AF4":                             {"virtio_net"},
		"pci:v00001022d00002000sv00001AF4sd00001100bc02sc00i00": nil, // pcnet
		"":    nil,
		"pci": nil,
	} {
		if got := a.Match(modalias); !slices.Equal(got, want) {
			t.Errorf("Match(%q) = %v, want %v", modalias, got, want)
		}
	}
	for _, bus := range []string{"pci", "acpi", "input", "virtio"} {
		if !a.Bus(bus) {
			t.Errorf("Bus(%q) = false", bus)
		}
	}
	if a.Bus("usb") || a.Len() != 9 {
		t.Errorf("Bus(usb) = %v, Len = %d; want false, 9", a.Bus("usb"), a.Len())
	}
}

func TestAliasesRoundTripAndErrors(t *testing.T) {
	in := []Alias{{"pci:v*d*sv*sd*bc0Csc03i30*", "xhci_pci"}, {"usb:v*p*d*dc*dsc*dp*ic03isc*ip*in*", "usbhid"}}
	var buf bytes.Buffer
	if err := FormatAliases(&buf, in); err != nil {
		t.Fatal(err)
	}
	a, err := ParseAliases(&buf)
	if err != nil || a.Len() != 2 || !slices.Equal(a.Match("usb:v0627p0001d0000dc00dsc00dp00ic03isc01ip01in00"), []string{"usbhid"}) {
		t.Fatalf("round trip: %v, %d aliases", err, a.Len())
	}
	for _, bad := range []string{"pci:v*\n", "a b c\n", "pci:[ e1000\n"} {
		if _, err := ParseAliases(strings.NewReader(bad)); err == nil {
			t.Errorf("ParseAliases(%q) succeeded", bad)
		}
	}
}

func TestListOnDemand(t *testing.T) {
	mods := []Module{{Name: "libata", Path: "libata.ko"}, {Name: "ahci", Path: "ahci.ko", Deps: []string{"libata"}, OnDemand: true}}
	var buf bytes.Buffer
	FormatList(&buf, mods)
	if !strings.Contains(buf.String(), "ahci ahci.ko libata demand\n") {
		t.Fatalf("list: %q", buf.String())
	}
	got, err := ParseList(&buf)
	if err != nil || len(got) != 2 || got[0].OnDemand || !got[1].OnDemand {
		t.Fatalf("ParseList: %+v, %v", got, err)
	}
	if _, err := ParseList(strings.NewReader("a a.ko - later\n")); err == nil {
		t.Error("a fourth field other than demand was taken")
	}
}
