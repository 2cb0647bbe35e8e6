package controller

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"strconv"
	"time"
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
	var err error
	switch s.Key {
	case TCPPortsSetting:
		_, _, err = ParsePortRange(s.Value)
	case DefaultCertSetting:
		err = checkCertPEM(s.Value)
	case DefaultKeySetting:
		err = checkKeyPEM(s.Value)
	case KeepReleasesSetting:
		if n, perr := strconv.Atoi(s.Value); perr != nil || n < 1 || n > 1000 {
			err = fmt.Errorf("%q: give 1 to 1000 releases", s.Value)
		}
	case GCGraceSetting:
		if d, perr := time.ParseDuration(s.Value); perr != nil || d < 0 {
			err = fmt.Errorf("%q: give a duration such as 1h", s.Value)
		}
	}
	if err != nil {
		return fmt.Errorf("%w: setting %s: %v", ErrInvalid, s.Key, err)
	}
	return nil
}

// checkCertPEM: PEM certificates that parse (whether they pair with the
// key, a setting of its own, the routers find out).
func checkCertPEM(v string) error {
	rest, n := []byte(v), 0
	for {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if _, err := x509.ParseCertificate(b.Bytes); b.Type != "CERTIFICATE" || err != nil {
			return fmt.Errorf("PEM block %d is not a certificate that parses", n+1)
		}
		n++
	}
	if n == 0 {
		return fmt.Errorf("no PEM certificate: give the certificate chain")
	}
	return nil
}

// checkKeyPEM: a PEM private key that parses.
func checkKeyPEM(v string) error {
	b, _ := pem.Decode([]byte(v))
	if b == nil {
		return fmt.Errorf("no PEM private key")
	}
	if _, err := x509.ParsePKCS8PrivateKey(b.Bytes); err == nil {
		return nil
	}
	if _, err := x509.ParseECPrivateKey(b.Bytes); err == nil {
		return nil
	}
	if _, err := x509.ParsePKCS1PrivateKey(b.Bytes); err == nil {
		return nil
	}
	return fmt.Errorf("the PEM block is not a private key that parses (PKCS#8, EC or PKCS#1)")
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
