// Package mountinfo reads /proc/self/mountinfo, for init (its mounts,
// shutdown order) and hostd (which disks are in use).
package mountinfo

import (
	"os"
	"strconv"
	"strings"
)

// Self is the calling process's mount table.
const Self = "/proc/self/mountinfo"

// Mount is one line of a mountinfo file.
type Mount struct {
	Dev     string // major:minor of the mounted device (0:N for tmpfs, proc...)
	Target  string // unescaped
	Options string // per-mount options, e.g. "ro,relatime"
	FSType  string
	Source  string
}

// ReadOnly says the mount's options include ro.
func (m Mount) ReadOnly() bool {
	for _, o := range strings.Split(m.Options, ",") {
		if o == "ro" {
			return true
		}
	}
	return false
}

// Read parses a mountinfo file (Self) into its mounts, in mount order;
// malformed lines are skipped.
func Read(path string) ([]Mount, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var ms []Mount
	for line := range strings.Lines(string(data)) {
		// id parent major:minor root target options [optional...] - fstype source superopts
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		a, b := strings.Fields(pre), strings.Fields(post)
		if len(a) < 6 || len(b) < 2 {
			continue
		}
		ms = append(ms, Mount{Dev: a[2], Target: Unescape(a[4]), Options: a[5], FSType: b[0], Source: b[1]})
	}
	return ms, nil
}

// Unescape undoes mountinfo's octal escapes (\040 for a space) in a
// path.
func Unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
