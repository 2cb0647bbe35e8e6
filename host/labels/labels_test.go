package labels

import (
	"maps"
	"strings"
	"testing"
)

func TestFromList(t *testing.T) {
	m, err := FromList([]string{"zone=eu-1", "disk=ssd", "rack.row=r7/42", "gpu_model=A100:80GB"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"zone": "eu-1", "disk": "ssd", "rack.row": "r7/42", "gpu_model": "A100:80GB"}
	if !maps.Equal(m, want) {
		t.Fatalf("got %v, want %v", m, want)
	}
	enc := Encode(m)
	if enc != "disk=ssd,gpu_model=A100:80GB,rack.row=r7/42,zone=eu-1" {
		t.Errorf("encoded %q", enc)
	}
	if back := Decode(enc); !maps.Equal(back, m) {
		t.Errorf("decoded %v, want %v", back, m)
	}
	if m, err := FromList(nil); err != nil || m != nil {
		t.Errorf("no labels: %v, %v", m, err)
	}
}

func TestBadLabels(t *testing.T) {
	long := strings.Repeat("v", 60)
	for _, tc := range []struct {
		list []string
		want string
	}{
		{[]string{"zone"}, "write it as key=value"},
		{[]string{"=eu"}, "use 1 to 32 characters"},
		{[]string{"1zone=a"}, "start it with a lowercase letter"},
		{[]string{"zo ne=a"}, `" " is not allowed`},
		{[]string{strings.Repeat("k", 33) + "=a"}, "use 1 to 32 characters"},
		{[]string{"hostname=a"}, "what every host has already"},
		{[]string{"role=db"}, "pick another key"},
		{[]string{"zone="}, "use 1 to 63 characters"},
		{[]string{"zone=a=b"}, `"=" is not allowed`},
		{[]string{"zone=a,b"}, `"," is not allowed`},
		{[]string{"zone=" + strings.Repeat("v", 64)}, "use 1 to 63 characters"},
		{[]string{"zone=a", "zone=b"}, "given twice (zone=a and zone=b)"},
		{[]string{"a=1", "b=1", "c=1", "d=1", "e=1", "f=1", "g=1", "h=1", "i=1"}, "9 labels; at most 8"},
		{[]string{"a=" + long, "b=" + long, "c=" + long, "d=" + long}, "at most 200 fit"},
	} {
		if _, err := FromList(tc.list); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.list, err, tc.want)
		}
	}
}

// A newer host's tag that this version cannot read yields what it can.
func TestDecodeSkipsWhatItCannotRead(t *testing.T) {
	got := Decode("zone=eu-1,garbage,=x,disk=ssd")
	if want := map[string]string{"zone": "eu-1", "disk": "ssd"}; !maps.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}
