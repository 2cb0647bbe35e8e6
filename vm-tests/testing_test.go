package vmtest

import "testing"

func TestSafePathName(t *testing.T) {
	for in, want := range map[string]string{
		"TestBoot":              "TestBoot",
		"TestBoot/sub_test-1.x": "TestBoot_sub_test-1.x",
		"TestA/b c//d":          "TestA_b_c_d",
		"Tést":                  "T_st",
		"":                      "",
		"a::b":                  "a_b",
	} {
		if got := safePathName(in); got != want {
			t.Errorf("safePathName(%q) = %q, want %q", in, got, want)
		}
	}
}
