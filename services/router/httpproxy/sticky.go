package httpproxy

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"

	"github.com/plinth-os/plinth/services/router/backend"
)

// stickyCookie names the cookie that keeps a client on one instance. Its
// value is the instance ID and an HMAC of it, both base64url, so that a
// client cannot steer itself to an instance of its choosing.
const stickyCookie = "plinth_sticky"

func (s *Server) stickyValue(id string) string {
	m := hmac.New(sha256.New, s.stickyKey)
	m.Write([]byte(id))
	enc := base64.RawURLEncoding
	return enc.EncodeToString([]byte(id)) + "." + enc.EncodeToString(m.Sum(nil))
}

// stickyID returns the instance ID a cookie value names, "" when the
// value is not one this router signed.
func (s *Server) stickyID(v []byte) string {
	dot := -1
	for i, c := range v {
		if c == '.' {
			dot = i
			break
		}
	}
	if dot < 0 {
		return ""
	}
	enc := base64.RawURLEncoding
	id, err := enc.DecodeString(string(v[:dot]))
	if err != nil {
		return ""
	}
	sig, err := enc.DecodeString(string(v[dot+1:]))
	if err != nil {
		return ""
	}
	m := hmac.New(sha256.New, s.stickyKey)
	m.Write(id)
	if !hmac.Equal(sig, m.Sum(nil)) {
		return ""
	}
	return string(id)
}

// cookieValue finds name in Cookie field values.
func cookieValue(cookies [][]byte, name string) []byte {
	for _, line := range cookies {
		for len(line) > 0 {
			var pair []byte
			if i := indexByte2(line, ';', ';'); i >= 0 {
				pair, line = line[:i], line[i+1:]
			} else {
				pair, line = line, nil
			}
			pair = trimOWS(pair)
			if len(pair) > len(name) && string(pair[:len(name)]) == name && pair[len(name)] == '=' {
				v := pair[len(name)+1:]
				if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
					v = v[1 : len(v)-1]
				}
				return v
			}
		}
	}
	return nil
}

// pick chooses the backend for a request: the sticky cookie's when the
// route is sticky and it is in the set, else the next in turn. setCookie
// is true when the client must be told a new sticky backend.
func (s *Server) pick(r *Route, set *backend.Set, cookie []byte) (b *backend.Backend, setCookie bool) {
	if !r.Sticky {
		return set.Pick(), false
	}
	if len(cookie) > 0 {
		if id := s.stickyID(cookie); id != "" {
			if b := set.ByID(id); b != nil {
				return b, false
			}
		}
	}
	return set.Pick(), true
}

// appendStickyCookie appends the Set-Cookie field for b.
func (s *Server) appendStickyCookie(out []byte, b *backend.Backend) []byte {
	out = append(out, "Set-Cookie: "+stickyCookie+"="...)
	out = append(out, s.stickyValue(b.ID)...)
	return append(out, "; Path=/; HttpOnly; SameSite=Lax\r\n"...)
}
