package vmtest

import (
	"slices"
	"strings"
	"testing"
)

// option returns the values that follow each occurrence of flag in args.
func option(args []string, flag string) []string {
	var vals []string
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			vals = append(vals, args[i+1])
		}
	}
	return vals
}

func TestQEMUArgsDefaults(t *testing.T) {
	c := Config{Kernel: "/k/vmlinuz", Initrd: "/k/initrd", Cmdline: "plinth.debug"}.withDefaults()
	if err := c.validate(); err != nil {
		t.Fatal(err)
	}
	args := qemuArgs(c, "/state")
	for flag, want := range map[string]string{
		"-machine": DefaultMachine,
		"-accel":   "tcg",
		"-cpu":     "max",
		"-m":       "512",
		"-smp":     "1",
		"-kernel":  "/k/vmlinuz",
		"-initrd":  "/k/initrd",
		"-append":  "console=ttyS0 quiet plinth.debug",
		"-qmp":     "unix:/state/qmp.sock,server=on,wait=off",
		"-nic":     "none",
		"-device":  "virtio-rng-pci",
		"-display": "none",
	} {
		if got := option(args, flag); len(got) != 1 || got[0] != want {
			t.Errorf("%s = %q, want [%q]", flag, got, want)
		}
	}
	for _, flag := range []string{"-no-reboot", "-S", "-nodefaults"} {
		if !slices.Contains(args, flag) {
			t.Errorf("missing %s in %q", flag, args)
		}
	}
	if slices.Contains(args, "-fw_cfg") || slices.Contains(args, "-netdev") {
		t.Errorf("unrequested fw_cfg or netdev in %q", args)
	}
}

func TestQEMUArgsAllowRebootAndExtra(t *testing.T) {
	c := Config{Kernel: "k", AllowReboot: true, ExtraArgs: []string{"-watchdog-action", "poweroff"}}.withDefaults()
	args := qemuArgs(c, "/s")
	if slices.Contains(args, "-no-reboot") {
		t.Error("-no-reboot with AllowReboot")
	}
	if got := args[len(args)-2:]; !slices.Equal(got, c.ExtraArgs) {
		t.Errorf("args end in %q, want ExtraArgs last", got)
	}
	if got := option(args, "-append"); !slices.Equal(got, []string{BaseCmdline}) {
		t.Errorf("-append %q, want the base command line alone", got)
	}
}

func TestQEMUArgsNICs(t *testing.T) {
	seg := &Segment{Netns: "plinth-vmt-1-1", Group: "230.0.0.1:40001"}
	a, b, err := NewLink()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	defer b.Close()
	c := Config{
		Kernel: "k",
		NICs: []NIC{
			{User: &UserNet{Forwards: []Forward{{HostPort: 2222, GuestPort: 22}, {HostPort: 8443, GuestPort: 443}}}},
			{MAC: "52:54:00:00:00:02", Segment: seg},
			{Link: a},
			{Link: b, Speed: 10000},
		},
	}.withDefaults()
	if c.Netns != seg.Netns {
		t.Errorf("Netns = %q, want the segment's %q", c.Netns, seg.Netns)
	}
	if err := c.validate(); err != nil {
		t.Fatal(err)
	}
	args := qemuArgs(c, "/s")
	wantNetdev := []string{
		"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8443-:443",
		"socket,id=net1,mcast=230.0.0.1:40001,localaddr=127.0.0.1",
		"stream,id=net2,server=off,addr.type=fd,addr.str=3",
		"stream,id=net3,server=off,addr.type=fd,addr.str=4",
	}
	if got := option(args, "-netdev"); !slices.Equal(got, wantNetdev) {
		t.Errorf("-netdev\n got %q\nwant %q", got, wantNetdev)
	}
	wantDevice := []string{
		"virtio-rng-pci",
		"virtio-net-pci,netdev=net0",
		"virtio-net-pci,netdev=net1,mac=52:54:00:00:00:02",
		"virtio-net-pci,netdev=net2",
		"virtio-net-pci,netdev=net3,speed=10000,duplex=full",
	}
	if got := option(args, "-device"); !slices.Equal(got, wantDevice) {
		t.Errorf("-device\n got %q\nwant %q", got, wantDevice)
	}
}

func TestQEMUArgsDisksMachineConfigEscaping(t *testing.T) {
	c := Config{
		Name:          "a,b",
		Kernel:        "k",
		Disks:         []string{"/d/data.img", "/d/x,y.qcow2"},
		MachineConfig: []byte("[host]\n"),
	}.withDefaults()
	args := qemuArgs(c, "/st,ate")
	wantDrive := []string{
		"file=/d/data.img,if=virtio,format=raw",
		"file=/d/x,,y.qcow2,if=virtio,format=qcow2",
	}
	if got := option(args, "-drive"); !slices.Equal(got, wantDrive) {
		t.Errorf("-drive %q, want %q", got, wantDrive)
	}
	// The disks of real machines, and a NIC model.
	c.DiskBus, c.NICs = DiskAHCI, []NIC{{Model: "e1000e", User: &UserNet{}}}
	if err := c.validate(); err != nil {
		t.Fatal(err)
	}
	ahci := qemuArgs(c, "/st")
	if got, want := option(ahci, "-drive"), []string{"file=/d/data.img,if=none,id=disk0,format=raw", "file=/d/x,,y.qcow2,if=none,id=disk1,format=qcow2"}; !slices.Equal(got, want) {
		t.Errorf("AHCI -drive %q, want %q", got, want)
	}
	if got := option(ahci, "-device"); !slices.Contains(got, "ide-hd,drive=disk1,bus=ide.1") || !slices.Contains(got, "e1000e,netdev=net0") {
		t.Errorf("AHCI and e1000e -device %q", got)
	}
	c.DiskBus = DiskNVMe
	if got := option(qemuArgs(c, "/st"), "-device"); !slices.Contains(got, "nvme,drive=disk0,serial=plinth0") {
		t.Errorf("NVMe -device %q", got)
	}
	c.DiskBus = "scsi"
	if err := c.validate(); err == nil || !strings.Contains(err.Error(), "disk bus") {
		t.Errorf("an unknown disk bus: %v", err)
	}
	c.DiskBus, c.Machine = DiskAHCI, "pc"
	if err := c.validate(); err == nil || !strings.Contains(err.Error(), "q35") {
		t.Errorf("AHCI on pc: %v", err)
	}
	if got := option(args, "-fw_cfg"); !slices.Equal(got, []string{"name=opt/plinth/config,file=/st,,ate/machine-config"}) {
		t.Errorf("-fw_cfg %q", got)
	}
	if got := option(args, "-qmp"); !slices.Equal(got, []string{"unix:/st,,ate/qmp.sock,server=on,wait=off"}) {
		t.Errorf("-qmp %q", got)
	}
	if got := option(args, "-name"); !slices.Equal(got, []string{"a,,b"}) {
		t.Errorf("-name %q", got)
	}
}

func TestValidate(t *testing.T) {
	seg := &Segment{Netns: "ns1", Group: "230.0.0.1:40001"}
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"nothing to boot", Config{}, "nothing to boot"},
		{"initrd without kernel", Config{Disks: []string{"d"}, Initrd: "i"}, "need a Kernel"},
		{"empty NIC", Config{Kernel: "k", NICs: []NIC{{}}}, "exactly one"},
		{"two kinds", Config{Kernel: "k", NICs: []NIC{{User: &UserNet{}, Segment: seg}}}, "exactly one"},
		{"bad MAC", Config{Kernel: "k", NICs: []NIC{{MAC: "nope", User: &UserNet{}}}}, "invalid MAC"},
		{"segment outside its netns", Config{Kernel: "k", Netns: "other", NICs: []NIC{{Segment: seg}}}, `netns "ns1"`},
		{"bad forward", Config{Kernel: "k", NICs: []NIC{{User: &UserNet{Forwards: []Forward{{GuestPort: 0}}}}}}, "bad forward"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.withDefaults().validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("validate() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	if err := (Config{Disks: []string{"disk.img"}}).withDefaults().validate(); err != nil {
		t.Errorf("firmware boot from a disk: %v", err)
	}
}

func TestResolveForwards(t *testing.T) {
	user := &UserNet{Forwards: []Forward{{GuestPort: 22}, {HostPort: 18080, GuestPort: 80}}}
	v := &VM{cfg: Config{NICs: []NIC{{User: user}}}}
	if err := v.resolveForwards(); err != nil {
		t.Fatal(err)
	}
	if user.Forwards[0].HostPort != 0 {
		t.Error("resolveForwards changed the caller's Config")
	}
	if got := v.HostAddr(80); got != "127.0.0.1:18080" {
		t.Errorf("HostAddr(80) = %q", got)
	}
	if got := v.HostAddr(22); !strings.HasPrefix(got, "127.0.0.1:") || got == "127.0.0.1:0" {
		t.Errorf("HostAddr(22) = %q, want a picked loopback port", got)
	}
	if got := v.HostAddr(443); got != "" {
		t.Errorf("HostAddr(443) = %q, want none", got)
	}
	if !strings.Contains(strings.Join(qemuArgs(v.cfg.withDefaults(), "/s"), " "), "hostfwd=tcp:"+v.HostAddr(22)+"-:22") {
		t.Error("picked port not in the QEMU arguments")
	}
}
