package controller

import (
	"fmt"
	"unicode/utf8"
)

func (s *Setting) key() string { return s.Key }

// Limits on settings, so one bad write cannot bloat every snapshot.
const (
	maxKeyLen   = 256
	maxValueLen = 64 << 10
)

func checkSetting(o object) error {
	s := o.(*Setting)
	if err := checkKey(s.Key, len(s.Value), utf8.ValidString(s.Value)); err != nil {
		return err
	}
	if s.Key == TCPPortsSetting {
		if _, _, err := ParsePortRange(s.Value); err != nil {
			return fmt.Errorf("%w: setting %s: %v", ErrInvalid, s.Key, err)
		}
	}
	return nil
}

// checkKey validates a key of a writable collection and the size of its
// value.
func checkKey(key string, valueLen int, validUTF8 bool) error {
	switch {
	case key == "" || len(key) > maxKeyLen:
		return fmt.Errorf("%w: key must be 1 to %d bytes", ErrInvalid, maxKeyLen)
	case !utf8.ValidString(key):
		return fmt.Errorf("%w: key is not valid UTF-8", ErrInvalid)
	case valueLen > maxValueLen:
		return fmt.Errorf("%w: value is %d bytes, the limit is %d", ErrInvalid, valueLen, maxValueLen)
	case !validUTF8:
		return fmt.Errorf("%w: value is not valid UTF-8", ErrInvalid)
	}
	for _, r := range key {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%w: key %q has control characters", ErrInvalid, key)
		}
	}
	return nil
}
