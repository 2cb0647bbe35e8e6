package boot

import (
	"reflect"
	"testing"
)

// inputDevices is /proc/bus/input/devices as a QEMU q35 guest shows it with
// the button and evdev modules loaded (trimmed of bitmap lines).
const inputDevices = `I: Bus=0019 Vendor=0000 Product=0001 Version=0000
N: Name="Power Button"
P: Phys=LNXPWRBN/button/input0
S: Sysfs=/devices/LNXSYSTM:00/LNXPWRBN:00/input/input2
U: Uniq=
H: Handlers=kbd event1 
B: PROP=0

I: Bus=0011 Vendor=0001 Product=0001 Version=ab41
N: Name="AT Translated Set 2 keyboard"
P: Phys=isa0060/serio0/input0
S: Sysfs=/devices/platform/i8042/serio0/input/input0
U: Uniq=
H: Handlers=sysrq kbd event0 leds 
B: PROP=0

I: Bus=0019 Vendor=0000 Product=0001 Version=0000
N: Name="Power Button"
P: Phys=PNP0C0C/button/input0
S: Sysfs=/devices/LNXSYSTM:00/PNP0C0C:00/input/input3
U: Uniq=
H: Handlers=kbd event2 
B: PROP=0
`

func TestParseInputDevices(t *testing.T) {
	got := parseInputDevices([]byte(inputDevices), "Power Button")
	want := []string{"/dev/input/event1", "/dev/input/event2"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("power buttons = %v, want %v", got, want)
	}
	// Without evdev there are no event handlers, so nothing to open.
	if got := parseInputDevices([]byte("N: Name=\"Power Button\"\nH: Handlers=kbd \n"), "Power Button"); len(got) != 0 {
		t.Errorf("without evdev: %v, want none", got)
	}
	if got := parseInputDevices([]byte(inputDevices), "Sleep Button"); len(got) != 0 {
		t.Errorf("Sleep Button: %v, want none", got)
	}
}
