package devmapper

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

// want is an expected request built from the kernel's struct layout
// written out by hand (include/uapi/linux/dm-ioctl.h), not from the Go
// structs the code uses, so a layout mistake in either shows.
type want []byte

func (w want) u32(off int, v uint32) { binary.NativeEndian.PutUint32(w[off:], v) }
func (w want) u64(off int, v uint64) { binary.NativeEndian.PutUint64(w[off:], v) }
func (w want) str(off int, s string) { copy(w[off:], s) }

// dm_ioctl field offsets.
const (
	offVersion     = 0 // [3]u32
	offDataSize    = 12
	offDataStart   = 16
	offTargetCount = 20
	offFlags       = 28
	offName        = 48 // after event_nr, padding and the u64 dev at 40
	headerSize     = 312
)

// dm_target_spec field offsets, from the spec's start.
const (
	offSectorStart = 0
	offLength      = 8
	offNext        = 20 // after the i32 status
	offTargetType  = 24
	specSize       = 40
)

func header312(name string, size, count, flags uint32) want {
	w := make(want, size)
	w.u32(offVersion, 4)
	w.u32(offDataSize, size)
	w.u32(offDataStart, headerSize)
	w.u32(offTargetCount, count)
	w.u32(offFlags, flags)
	w.str(offName, name)
	return w
}

func TestHeader(t *testing.T) {
	got := header("verity-root")
	if w := header312("verity-root", headerSize, 0, 0); !bytes.Equal(got, w) {
		t.Errorf("header\n got %x\nwant %x", got, []byte(w))
	}
}

func TestTableLoadLayout(t *testing.T) {
	// Parameters of 10 bytes (+NUL = 11, padded to 16), 1 byte (+NUL, to
	// 8), 7 (+NUL is exactly 8) and 8 (+NUL = 9, to 16).
	targets := []Target{
		{Start: 0, Length: 8, Type: "linear", Params: "/dev/vda 0"},
		{Start: 8, Length: 16, Type: "verity", Params: "x"},
		{Start: 24, Length: 1, Type: "zero", Params: "abcdefg"},
		{Start: 25, Length: 2, Type: "error", Params: "abcdefgh"},
	}
	got, err := tableLoad("root", true, targets)
	if err != nil {
		t.Fatal(err)
	}

	const size = headerSize + (specSize + 16) + (specSize + 8) + (specSize + 8) + (specSize + 16)
	w := header312("root", size, 4, 1) // DM_READONLY_FLAG
	spec := func(at int, start, length uint64, next uint32, typ, params string) {
		w.u64(at+offSectorStart, start)
		w.u64(at+offLength, length)
		w.u32(at+offNext, next)
		w.str(at+offTargetType, typ)
		w.str(at+specSize, params) // the NUL and padding stay zero
	}
	spec(312, 0, 8, 56, "linear", "/dev/vda 0")
	spec(368, 8, 16, 48, "verity", "x")
	spec(416, 24, 1, 48, "zero", "abcdefg")
	spec(464, 25, 2, 56, "error", "abcdefgh")
	if len(got) != size {
		t.Fatalf("request is %d bytes, want %d", len(got), size)
	}
	for off := 0; off < size; off += 8 {
		if !bytes.Equal(got[off:off+8], w[off:off+8]) {
			t.Errorf("bytes %d-%d: got %x, want %x", off, off+8, got[off:off+8], []byte(w[off:off+8]))
		}
	}
}

func TestTableLoadWritable(t *testing.T) {
	got, err := tableLoad("data", false, []Target{{Length: 8, Type: "linear", Params: "/dev/vdb 0"}})
	if err != nil {
		t.Fatal(err)
	}
	if flags := binary.NativeEndian.Uint32(got[offFlags:]); flags != 0 {
		t.Errorf("flags %#x for a writable table, want 0", flags)
	}
}

func TestTableLoadRefuses(t *testing.T) {
	for _, tc := range []struct {
		targets []Target
		want    string
	}{
		{nil, "empty table"},
		{[]Target{{Length: 8, Params: "x"}}, "no target type"},
		{[]Target{{Length: 8, Type: "a-type-name-too-long", Params: "x"}}, "longer than 15 bytes"},
		{[]Target{{Length: 8, Type: "linear", Params: "/dev/vda\x000"}}, "NUL"},
		{[]Target{{Type: "linear", Params: "/dev/vda 0"}}, "length 0"},
		{[]Target{{Length: 8, Type: "linear", Params: "/dev/vda 0"}, {Start: 8, Type: "zero"}}, "target 1: zero target has length 0"},
	} {
		if _, err := tableLoad("x", true, tc.targets); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want an error containing %q", tc.targets, err, tc.want)
		}
	}
}

func TestCheckName(t *testing.T) {
	for _, name := range []string{"", ".", "..", "a/b", "a\x00b", strings.Repeat("n", 128)} {
		if checkName(name) == nil {
			t.Errorf("name %q accepted", name)
		}
	}
	for _, name := range []string{"verity-root", strings.Repeat("n", 127)} {
		if err := checkName(name); err != nil {
			t.Errorf("name %q refused: %v", name, err)
		}
	}
	// The longest name still ends with the NUL the kernel looks for.
	h := header(strings.Repeat("n", 127))
	if h[offName+127] != 0 {
		t.Error("a 127-byte name is not NUL-terminated")
	}
}

func TestParseDev(t *testing.T) {
	major, minor, err := parseDev("10:236\n")
	if err != nil || major != 10 || minor != 236 {
		t.Errorf(`parseDev("10:236\n") = %d, %d, %v; want 10, 236`, major, minor, err)
	}
	for _, s := range []string{"", "10", "10:", ":236", "a:b", "10:236:1"} {
		if _, _, err := parseDev(s); err == nil {
			t.Errorf("parseDev(%q) accepted", s)
		}
	}
}

func TestCmdNames(t *testing.T) {
	for c, want := range map[cmd]string{
		cmdDevCreate: "DM_DEV_CREATE", cmdTableLoad: "DM_TABLE_LOAD",
		cmdDevSuspend: "DM_DEV_SUSPEND", cmdDevRemove: "DM_DEV_REMOVE",
	} {
		if c.String() != want {
			t.Errorf("%#x is named %s, want %s", uint(c), c, want)
		}
	}
}
