// Package labels checks and encodes host labels: key=value pairs an
// operator gives a host in its machine config ("zone=eu-1", "disk=ssd"),
// advertised over gossip and matched by formations' constraints.
package labels

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Limits. Serf carries all of a host's tags in at most 512 bytes, which
// the host's ID, name, addresses, version and roles share with labels.
const (
	MaxLabels  = 8
	maxKey     = 32
	maxValue   = 63
	maxEncoded = 200
)

// Reserved are the constraint keys a host has without labels; a label
// may not shadow them.
var Reserved = []string{"role", "hostname", "id", "version"}

// CheckKey accepts 1 to 32 of lowercase letters, digits, '-', '_' and
// '.', starting with a letter, other than a reserved key.
func CheckKey(k string) error {
	if k == "" || len(k) > maxKey {
		return fmt.Errorf("label key %q: use 1 to %d characters", k, maxKey)
	}
	if k[0] < 'a' || k[0] > 'z' {
		return fmt.Errorf("label key %q: start it with a lowercase letter", k)
	}
	for _, r := range k {
		if !('a' <= r && r <= 'z' || '0' <= r && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("label key %q: %q is not allowed; use lowercase letters, digits, '-', '_' and '.'", k, string(r))
		}
	}
	if slices.Contains(Reserved, k) {
		return fmt.Errorf("label key %q is what every host has already (%s); pick another key", k, strings.Join(Reserved, ", "))
	}
	return nil
}

// CheckValue accepts 1 to 63 of letters, digits, '-', '_', '.', '/' and
// ':' (no ',' or '=', which encode a host's labels in one tag).
func CheckValue(v string) error {
	if v == "" || len(v) > maxValue {
		return fmt.Errorf("label value %q: use 1 to %d characters", v, maxValue)
	}
	for _, r := range v {
		if !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || strings.ContainsRune("-_./:", r)) {
			return fmt.Errorf("label value %q: %q is not allowed; use letters, digits, '-', '_', '.', '/' and ':'", v, string(r))
		}
	}
	return nil
}

// Parse splits "key=value" and checks both.
func Parse(s string) (key, value string, err error) {
	key, value, ok := strings.Cut(s, "=")
	if !ok {
		return "", "", fmt.Errorf("label %q: write it as key=value, such as zone=eu-1", s)
	}
	if err := CheckKey(key); err != nil {
		return "", "", err
	}
	if err := CheckValue(value); err != nil {
		return "", "", fmt.Errorf("label %s: %w", key, err)
	}
	return key, value, nil
}

// FromList turns "key=value" entries into a map: each is parsed, a key
// given twice is refused, and the whole must fit Check's limits.
func FromList(list []string) (map[string]string, error) {
	if len(list) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(list))
	for _, s := range list {
		k, v, err := Parse(s)
		if err != nil {
			return nil, err
		}
		if old, ok := m[k]; ok {
			return nil, fmt.Errorf("label %s is given twice (%s=%s and %s); keep one", k, k, old, s)
		}
		m[k] = v
	}
	return m, Check(m)
}

// Check accepts at most MaxLabels valid labels whose encoding fits
// maxEncoded bytes.
func Check(m map[string]string) error {
	if len(m) > MaxLabels {
		return fmt.Errorf("%d labels; at most %d are allowed", len(m), MaxLabels)
	}
	for k, v := range m {
		if err := CheckKey(k); err != nil {
			return err
		}
		if err := CheckValue(v); err != nil {
			return fmt.Errorf("label %s: %w", k, err)
		}
	}
	if n := len(Encode(m)); n > maxEncoded {
		return fmt.Errorf("labels take %d bytes; at most %d fit the host's gossip tags, shorten them", n, maxEncoded)
	}
	return nil
}

// Encode writes m as "k1=v1,k2=v2", sorted by key.
func Encode(m map[string]string) string {
	parts := make([]string, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, ",")
}

// Decode reads what Encode wrote; entries that do not parse (a newer
// host's) are skipped.
func Decode(s string) map[string]string {
	if s == "" {
		return nil
	}
	m := map[string]string{}
	for part := range strings.SplitSeq(s, ",") {
		if k, v, ok := strings.Cut(part, "="); ok && k != "" {
			m[k] = v
		}
	}
	return m
}
