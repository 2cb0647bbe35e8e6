package vmtest

import (
	"fmt"
	"io"
	"net"
	"strings"
)

// Defaults applied by Start to zero Config fields.
const (
	DefaultQEMU    = "qemu-system-x86_64"
	DefaultMachine = "q35"
	DefaultAccel   = "tcg"
	DefaultCPU     = "max"
	DefaultMemory  = 512
	DefaultCPUs    = 1
)

// BaseCmdline starts every guest kernel command line: the console is the
// first serial port, which the harness reads, and "quiet" because under TCG
// every console line costs boot time.
const BaseCmdline = "console=ttyS0 quiet"

// Config describes one VM. The zero value of every field except Kernel (or
// Disks) is usable; Start applies the defaults.
type Config struct {
	// Name identifies the VM in errors, logs and QEMU's -name. Default "vm".
	Name string

	// Kernel is booted directly with -kernel. Empty: the firmware boots
	// from Disks, and Initrd and Cmdline must be empty.
	Kernel string
	// Initrd is passed with -initrd.
	Initrd string
	// Cmdline is appended to BaseCmdline.
	Cmdline string

	// Memory is the guest RAM in MiB. Default 512.
	Memory int
	// CPUs is the number of vCPUs. Default 1.
	CPUs int

	// StateDir holds this VM's files: console.log (the serial console),
	// qemu.log (command line and QEMU's stderr), qmp.sock and the fw_cfg
	// machine config. Start creates it. Empty: Start creates a temporary
	// directory and Close removes it.
	StateDir string

	// MachineConfig, when set, is written to StateDir and given to the
	// guest as fw_cfg entry FWCfgMachineConfig, where plinth init looks
	// for it.
	MachineConfig []byte

	// NICs are the guest's network cards, virtio-net-pci, in PCI order.
	// QEMU's default NIC is always disabled (-nic none).
	NICs []NIC

	// Disks are raw disk images attached on DiskBus, in order (vda,
	// vdb, ...); a name ending in ".qcow2" is attached as qcow2.
	Disks []string
	// DiskBus is how Disks are attached: DiskVirtio (default), DiskAHCI
	// (SATA disks on q35's AHCI controller) or DiskNVMe (one NVMe
	// controller per disk).
	DiskBus string

	// UEFI boots the firmware OVMF (pflash, code read-only, variables in
	// a copy under StateDir that lives as long as it) instead of SeaBIOS:
	// for disks with an EFI system partition.
	UEFI bool

	// AllowReboot lets a guest reboot restart the guest. By default QEMU
	// runs with -no-reboot, so that a guest reboot ends the QEMU process
	// and a test sees it as an exit with a SHUTDOWN event whose reason is
	// "guest-reset".
	AllowReboot bool

	// Netns runs QEMU inside this named network namespace (ip netns exec).
	// Default: the netns of the Segments among NICs, or the caller's.
	Netns string

	// Console, if set, also receives the serial console output as it
	// arrives (e.g. os.Stdout for a human watching a boot). It is written
	// synchronously: a blocking writer stalls the guest's console.
	Console io.Writer

	// QEMU is the emulator binary. Default DefaultQEMU.
	QEMU string
	// Machine is QEMU's -machine type. Default DefaultMachine.
	Machine string
	// Accel is QEMU's -accel. Default DefaultAccel: these machines have no
	// working KVM.
	Accel string
	// CPU is QEMU's -cpu. Default DefaultCPU: under TCG it offers newer
	// instruction sets, which makes crypto in the guest several times
	// faster.
	CPU string

	// ExtraArgs are appended to the QEMU command line.
	ExtraArgs []string
}

// FWCfgMachineConfig is the fw_cfg name under which Config.MachineConfig
// reaches the guest; in the guest it is
// /sys/firmware/qemu_fw_cfg/by_name/opt/plinth/config/raw (module qemu_fw_cfg).
const FWCfgMachineConfig = "opt/plinth/config"

// Values of Config.DiskBus.
const (
	DiskVirtio = "virtio"
	DiskAHCI   = "ahci"
	DiskNVMe   = "nvme"
)

// NIC is one network card, virtio-net-pci unless Model says otherwise.
// Exactly one of User, Segment and Link is set.
type NIC struct {
	// Model is QEMU's device model: "e1000", "e1000e", "rtl8139",
	// "pcnet", ... Default "virtio-net-pci".
	Model string

	// MAC is the card's fixed MAC address, e.g. "52:54:00:12:34:01".
	// Empty: QEMU assigns one (52:54:00:12:34:56 plus the card index,
	// identical across VMs: set MACs when VMs share a segment).
	MAC string

	// User is QEMU's user-mode network: a NAT with a DHCP server,
	// restricted so that the guest reaches nothing outside it.
	User *UserNet
	// Segment is a shared L2 segment (see NewSegment).
	Segment *Segment
	// Link is one end of a point-to-point link (see NewLink).
	Link *LinkEnd

	// Speed, when set, is the link speed in Mb/s the card reports, with
	// full duplex. By default virtio-net reports neither, and the bonding
	// modes that weigh members by speed (802.3ad, balance-tlb, balance-alb)
	// then keep the card out of use, as they would a real NIC without link.
	Speed int
}

// UserNet is QEMU's user-mode network (-netdev user,restrict=on). The guest
// gets 10.0.2.15 by DHCP and can reach only the host ports forwarded to it.
type UserNet struct {
	// Forwards expose guest TCP ports on the host's 127.0.0.1.
	Forwards []Forward
}

// Forward forwards host TCP port 127.0.0.1:HostPort to guest port GuestPort.
type Forward struct {
	// HostPort 0: Start picks a free loopback port; see VM.HostAddr.
	HostPort  int
	GuestPort int
}

func (c Config) withDefaults() Config {
	if c.Name == "" {
		c.Name = "vm"
	}
	if c.Memory == 0 {
		c.Memory = DefaultMemory
	}
	if c.CPUs == 0 {
		c.CPUs = DefaultCPUs
	}
	if c.QEMU == "" {
		c.QEMU = DefaultQEMU
	}
	if c.Machine == "" {
		c.Machine = DefaultMachine
	}
	if c.Accel == "" {
		c.Accel = DefaultAccel
	}
	if c.CPU == "" {
		c.CPU = DefaultCPU
	}
	if c.Netns == "" {
		for _, n := range c.NICs {
			if n.Segment != nil {
				c.Netns = n.Segment.Netns
				break
			}
		}
	}
	return c
}

// validate checks a defaulted Config.
func (c Config) validate() error {
	switch c.DiskBus {
	case "", DiskVirtio, DiskNVMe:
	case DiskAHCI:
		if !strings.HasPrefix(c.Machine, "q35") || len(c.Disks) > 6 {
			return fmt.Errorf("vm %s: AHCI disks need a q35 machine and at most 6 disks", c.Name)
		}
	default:
		return fmt.Errorf("vm %s: disk bus %q: use %s, %s or %s", c.Name, c.DiskBus, DiskVirtio, DiskAHCI, DiskNVMe)
	}
	if c.Kernel == "" && len(c.Disks) == 0 {
		return fmt.Errorf("vm %s: no Kernel and no Disks: nothing to boot", c.Name)
	}
	if c.Kernel == "" && (c.Initrd != "" || c.Cmdline != "") {
		return fmt.Errorf("vm %s: Initrd and Cmdline need a Kernel", c.Name)
	}
	if c.Memory < 0 || c.CPUs < 0 {
		return fmt.Errorf("vm %s: negative Memory or CPUs", c.Name)
	}
	for i, n := range c.NICs {
		kinds := 0
		for _, set := range []bool{n.User != nil, n.Segment != nil, n.Link != nil} {
			if set {
				kinds++
			}
		}
		if kinds != 1 {
			return fmt.Errorf("vm %s: NIC %d: set exactly one of User, Segment, Link", c.Name, i)
		}
		if n.MAC != "" {
			if _, err := net.ParseMAC(n.MAC); err != nil {
				return fmt.Errorf("vm %s: NIC %d: %w", c.Name, i, err)
			}
		}
		if n.Segment != nil && n.Segment.Netns != c.Netns {
			// Segment traffic must stay inside the segment's netns.
			return fmt.Errorf("vm %s: NIC %d: segment lives in netns %q but the VM runs in %q",
				c.Name, i, n.Segment.Netns, c.Netns)
		}
		if n.User != nil {
			for _, f := range n.User.Forwards {
				if f.GuestPort <= 0 || f.GuestPort > 65535 || f.HostPort < 0 || f.HostPort > 65535 {
					return fmt.Errorf("vm %s: NIC %d: bad forward %d->%d", c.Name, i, f.HostPort, f.GuestPort)
				}
			}
		}
	}
	return nil
}
