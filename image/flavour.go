package image

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Flavour is a kernel and the drivers of the machines it is for. An
// image carries its flavour's drivers and loads, at boot, those the
// machine's devices match (coldplug, see init/coldplug).
type Flavour struct {
	Name   string
	Kernel Kernel
	// Hardware are the drivers of the machines the flavour is for: in the
	// system image, loaded for the devices a machine has.
	Hardware []string
	// Storage are the drivers of the disks a disk boot's slot can be on:
	// also in the initramfs, for stage 1 to find the slot.
	Storage []string
	// OneBinary: plinth is /init too, without the layer-0 binary of its
	// own (see Config.OneBinary).
	OneBinary bool
}

// Drivers every flavour has: the firmware interfaces and the power button
// init needs, the virtio devices of QEMU and most clouds.
var (
	baseHardware = []string{
		"virtio_pci", "virtio_net", "virtio_blk", "virtio_scsi", "virtio_rng", // paravirtual devices (virtio_pci is their bus driver)
		"sd_mod",          // the disks behind virtio_scsi (and SATA, SAS, USB)
		"qemu_fw_cfg",     // machine config passed by QEMU -fw_cfg
		"button", "evdev", // ACPI power button → clean poweroff
	}
	baseStorage = []string{"virtio_pci", "virtio_blk", "virtio_scsi", "sd_mod"}
)

// Flavours are the kernels an image can be built with.
var Flavours = map[string]Flavour{
	"cloud": {
		Name:     "cloud",
		Kernel:   CloudKernel,
		Hardware: slices.Concat(baseHardware, []string{"nvme"}),
		Storage:  slices.Concat(baseStorage, []string{"nvme"}),
	},
	"generic": {
		Name:   "generic",
		Kernel: GenericKernel,
		Hardware: slices.Concat(baseHardware, []string{
			// Ethernet: Intel, Broadcom, Realtek, Mellanox server and desktop
			// NICs, and QEMU's default (e1000) and rtl8139.
			"e1000", "e1000e", "igb", "igc", "ixgbe", "i40e", "ice",
			"bnxt_en", "tg3", "r8169", "mlx5_core", "8139cp", "8139too",
			// Disks: SATA, NVMe, the common RAID/HBA families, USB sticks.
			"ahci", "nvme", "megaraid_sas", "mpt3sas", "sd_mod", "usb_storage", "uas",
			// USB host controllers and keyboards, for a local console.
			"xhci_pci", "ehci_pci", "ohci_pci", "uhci_hcd", "usbhid", "hid_generic",
		}),
		Storage: slices.Concat(baseStorage, []string{"ahci", "nvme", "megaraid_sas", "mpt3sas",
			"xhci_pci", "ehci_pci", "usb_storage", "uas"}),
		// Its drivers take 5.9 MB more than the cloud flavour's; with two
		// binaries the image would be 34.4 MB, over the 30 MB budget, with
		// one it is 29.5 MB. Two binaries gain 0.05–0.1 s of boot under
		// TCG, where every process start is slow; on real hardware less.
		OneBinary: true,
	},
}

// FlavourNames lists the flavours, sorted.
func FlavourNames() []string {
	var names []string
	for n := range Flavours {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// UseFlavour sets the kernel and the drivers of the named flavour.
func (c *Config) UseFlavour(name string) error {
	f, ok := Flavours[name]
	if !ok {
		return fmt.Errorf("unknown kernel flavour %q: use one of %s", name, strings.Join(FlavourNames(), ", "))
	}
	c.Flavour = f.Name
	c.Kernel = f.Kernel
	c.HardwareModules = f.Hardware
	c.SlotModules = slices.Concat(f.Storage, []string{"dm_verity"})
	c.OneBinary = f.OneBinary
	return nil
}
