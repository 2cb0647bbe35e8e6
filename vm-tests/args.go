package vmtest

import (
	"cmp"
	"fmt"
	"path/filepath"
	"strings"
)

// Files in a VM's state directory.
const (
	consoleLogFile    = "console.log"
	qemuLogFile       = "qemu.log"
	qmpSocketFile     = "qmp.sock"
	machineConfigFile = "machine-config"
	efiVarsFile       = "efi-vars.fd"
)

// OVMF firmware (Debian package ovmf): the code, and the variable store
// each UEFI VM gets a copy of.
const (
	OVMFCode = "/usr/share/OVMF/OVMF_CODE.fd"
	OVMFVars = "/usr/share/OVMF/OVMF_VARS.fd"
)

// firstLinkFD is the descriptor number of the first LinkEnd in QEMU: the
// links are its ExtraFiles, after stdin, stdout and stderr.
const firstLinkFD = 3

// qemuArgs returns QEMU's arguments for a defaulted, validated Config whose
// forwards have host ports. The VM starts paused (-S): Start connects QMP
// first, so that no event escapes it, and then continues.
func qemuArgs(c Config, stateDir string) []string {
	args := []string{
		"-name", qemuEscape(c.Name),
		"-machine", c.Machine,
		"-accel", c.Accel,
		"-cpu", c.CPU,
		"-m", fmt.Sprint(c.Memory),
		"-smp", fmt.Sprint(c.CPUs),
		"-nodefaults",
		"-no-user-config",
		"-display", "none",
		// The console is QEMU's stdout, which Start reads.
		"-chardev", "stdio,id=console,signal=off",
		"-serial", "chardev:console",
		"-qmp", "unix:" + qemuEscape(filepath.Join(stateDir, qmpSocketFile)) + ",server=on,wait=off",
		// Entropy at once for early crypto/rand in the guest.
		"-device", "virtio-rng-pci",
		"-nic", "none",
		"-S",
	}
	if !c.AllowReboot {
		args = append(args, "-no-reboot")
	}
	if c.UEFI {
		args = append(args,
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+qemuEscape(OVMFCode),
			"-drive", "if=pflash,format=raw,unit=1,file="+qemuEscape(filepath.Join(stateDir, efiVarsFile)))
	}
	if c.Kernel != "" {
		args = append(args, "-kernel", c.Kernel, "-append", strings.TrimSpace(BaseCmdline+" "+c.Cmdline))
	}
	if c.Initrd != "" {
		args = append(args, "-initrd", c.Initrd)
	}
	if c.MachineConfig != nil {
		args = append(args, "-fw_cfg", "name="+FWCfgMachineConfig+",file="+qemuEscape(filepath.Join(stateDir, machineConfigFile)))
	}
	fd := firstLinkFD
	for i, n := range c.NICs {
		id := fmt.Sprintf("net%d", i)
		var netdev string
		switch {
		case n.User != nil:
			netdev = "user,id=" + id + ",restrict=on"
			for _, f := range n.User.Forwards {
				netdev += fmt.Sprintf(",hostfwd=tcp:127.0.0.1:%d-:%d", f.HostPort, f.GuestPort)
			}
		case n.Segment != nil:
			netdev = "socket,id=" + id + ",mcast=" + n.Segment.Group + ",localaddr=127.0.0.1"
		case n.Link != nil:
			netdev = fmt.Sprintf("stream,id=%s,server=off,addr.type=fd,addr.str=%d", id, fd)
			fd++
		}
		device := cmp.Or(n.Model, "virtio-net-pci") + ",netdev=" + id
		if n.MAC != "" {
			device += ",mac=" + n.MAC
		}
		if n.Speed != 0 {
			device += fmt.Sprintf(",speed=%d,duplex=full", n.Speed)
		}
		args = append(args, "-netdev", netdev, "-device", device)
	}
	for i, d := range c.Disks {
		format := "raw"
		if strings.HasSuffix(d, ".qcow2") {
			format = "qcow2"
		}
		file := "file=" + qemuEscape(d)
		switch c.DiskBus {
		case DiskAHCI:
			// q35's AHCI controller has six ports, buses ide.0 to ide.5.
			args = append(args, "-drive", fmt.Sprintf("%s,if=none,id=disk%d,format=%s", file, i, format),
				"-device", fmt.Sprintf("ide-hd,drive=disk%d,bus=ide.%d", i, i))
		case DiskNVMe:
			args = append(args, "-drive", fmt.Sprintf("%s,if=none,id=disk%d,format=%s", file, i, format),
				"-device", fmt.Sprintf("nvme,drive=disk%d,serial=plinth%d", i, i))
		default:
			args = append(args, "-drive", file+",if=virtio,format="+format)
		}
	}
	return append(args, c.ExtraArgs...)
}

// qemuEscape escapes a value inside a QEMU key=value option list, where a
// comma is written twice.
func qemuEscape(s string) string {
	return strings.ReplaceAll(s, ",", ",,")
}
