package mountinfo

import "testing"

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		"/var":               "/var",
		`/mnt/a\040b`:        "/mnt/a b",
		`/x\011y\134z`:       "/x\ty\\z",
		`/trailing\04`:       `/trailing\04`,
		`/not\999octal`:      `/not\999octal`,
		`\040\040`:           "  ",
		`/end\040`:           "/end ",
		`/short\0`:           `/short\0`,
		`/ok\1341`:           `/ok\1`,
		`/high\377`:          "/high\xff",
		`/over\400`:          `/over\400`,
		`/multi\040a\040b/c`: "/multi a b/c",
	} {
		if got := Unescape(in); got != want {
			t.Errorf("Unescape(%q) = %q, want %q", in, got, want)
		}
	}
}
