package slots

import (
	"fmt"

	"github.com/plinth-os/plinth/image"
	"github.com/plinth-os/plinth/image/disk"
)

// DefaultOptions is the kernel command line of a new disk's entries:
// console on the screen and on the first serial port (the last named is
// the one init writes to), and quiet, since every console line costs.
const DefaultOptions = "console=tty0 console=ttyS0,115200 quiet"

// loaderConf boots the default entry at once; a key held at power-on
// still shows the menu. No editor: the command line is not to be
// changed at the console of a machine in a rack.
const loaderConf = "timeout 0\neditor no\nauto-entries no\nauto-firmware no\n"

// NewDiskSpec is the layout of a new plinth disk: the boot loader and
// slot A holding the bundle's image (committed: a fresh install has
// nothing to fall back to), slot B empty, and a data partition. The
// bundle has been verified; system is a file holding its system image,
// or "" to write the bundle's own copy.
func NewDiskSpec(b *image.Bundle, m *image.Manifest, bootLoader []byte, options, system string) (disk.Spec, error) {
	if options == "" {
		options = DefaultOptions
	}
	header, err := image.EncodeSlotHeader(b.Manifest, b.Signature)
	if err != nil {
		return disk.Spec{}, err
	}
	e := Entry{
		Slot:       "a",
		Generation: 1,
		Title:      fmt.Sprintf("plinth %s (slot A)", m.Version),
		Options:    withSlot(options, "a"),
	}
	slotA := disk.Slot{Src: system, Header: header}
	if system == "" {
		slotA.Data = b.Files[image.SystemName]
	}
	return disk.Spec{
		ESP: []disk.File{
			{Path: "EFI/BOOT/BOOTX64.EFI", Data: bootLoader},
			{Path: "loader/loader.conf", Data: []byte(loaderConf)},
			{Path: EntriesDir + "/" + e.fileName(), Data: e.format()},
			{Path: slotFile("a", "vmlinuz"), Data: b.Files[image.VmlinuzName]},
			{Path: slotFile("a", "initrd.img"), Data: b.Files[image.SlotInitrdName]},
		},
		SlotA:      slotA,
		FormatData: true,
		Seed:       m.Version,
	}, nil
}
