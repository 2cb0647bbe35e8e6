package controller

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"log/slog"
	"sync"
	"time"
)

// SettingsCache reads the cluster's settings at most once per TTL, for a
// service that consults them on every request.
type SettingsCache struct {
	Controller *Client
	TTL        time.Duration
	Log        *slog.Logger

	mu     sync.Mutex
	values map[string]string
	read   time.Time
}

// Get returns the setting key, "" when it is absent; when the settings
// cannot be read, what was read before.
func (s *SettingsCache) Get(ctx context.Context, key string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if time.Since(s.read) > s.TTL {
		all, _, err := s.Controller.Settings(ctx, QueryOptions{})
		if err != nil {
			if s.Log != nil {
				s.Log.Warn("read settings", "err", err)
			}
		} else {
			s.values = map[string]string{}
			for _, st := range all {
				s.values[st.Key] = st.Value
			}
			s.read = time.Now()
		}
	}
	return s.values[key]
}

// TokenOK reports whether token hashes (hex SHA-256) to the value of the
// setting key. A token made a moment ago is not in the settings read
// before it, so a miss reads them again, at most once a second.
func (s *SettingsCache) TokenOK(ctx context.Context, key, token string) bool {
	if token == "" {
		return false
	}
	sum := sha256.Sum256([]byte(token))
	got := []byte(hex.EncodeToString(sum[:]))
	if subtle.ConstantTimeCompare(got, []byte(s.Get(ctx, key))) == 1 {
		return true
	}
	s.mu.Lock()
	stale := time.Since(s.read) > time.Second
	if stale {
		s.read = time.Time{}
	}
	s.mu.Unlock()
	return stale && subtle.ConstantTimeCompare(got, []byte(s.Get(ctx, key))) == 1
}
