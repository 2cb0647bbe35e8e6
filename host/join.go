package host

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/plinth-os/plinth/host/bundle"
)

// A host given only a join token fetches the cluster bundle from a seed:
// GET /v1/cluster/bundle on the seed's host API, authorised by the token's
// secret, over TLS pinned to the CA the token names. The bundle is then
// kept in the state directory, so later starts need no seed.

// bundlePath is GET /v1/cluster/bundle.
const bundlePath = "/v1/cluster/bundle"

// maxBundleSize bounds a fetched bundle (a real one is about 1.5 kB).
const maxBundleSize = 64 << 10

// loadJoinedBundle returns the bundle kept in dir if it matches token.
func loadJoinedBundle(dir, token string) (*bundle.Bundle, error) {
	b, err := bundle.Load(filepath.Join(dir, LocalBundleFile))
	if err != nil {
		return nil, err
	}
	if !b.CheckToken(token) {
		return nil, fmt.Errorf("%s belongs to another cluster than the join token", filepath.Join(dir, LocalBundleFile))
	}
	return b, nil
}

// fetchBundle asks the seeds in turn for the bundle until one hands it
// over or ctx ends, with backoff from 1 to 30 s between rounds, and keeps
// it in dir.
func (d *Daemon) fetchBundle(ctx context.Context) (*bundle.Bundle, error) {
	token, dir := d.cfg.JoinToken, d.cfg.StateDir
	conf, err := bundle.TokenTLS(token)
	if err != nil {
		return nil, err
	}
	client := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: conf, DialContext: (&net.Dialer{Timeout: 3 * time.Second}).DialContext},
	}
	defer client.CloseIdleConnections()
	wait := time.Second
	for attempt := 1; ; attempt++ {
		var errs []error
		for _, seed := range d.cfg.Join {
			b, err := fetchFrom(ctx, client, seedAPI(seed, d.cfg.APIPort), token)
			if err == nil {
				if err := keepBundle(dir, b); err != nil {
					return nil, err
				}
				d.log.Info("cluster bundle fetched with the join token", "from", seed, "bundle", b)
				return b, nil
			}
			errs = append(errs, fmt.Errorf("%s: %w", seed, err))
		}
		if attempt == 1 || attempt%10 == 0 {
			d.log.Warn("fetch cluster bundle: no seed handed it over; retrying", "attempts", attempt, "err", errors.Join(errs...))
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("fetch cluster bundle with the join token: %w", errors.Join(errs...))
		case <-time.After(wait):
		}
		wait = min(2*wait, 30*time.Second)
	}
}

// seedAPI is the host API address of a seed given as a gossip address:
// the same host at the cluster's API port.
func seedAPI(seed string, apiPort int) string {
	h, _, err := net.SplitHostPort(seed)
	if err != nil {
		h = strings.Trim(seed, "[]")
	}
	return net.JoinHostPort(h, strconv.Itoa(apiPort))
}

func fetchFrom(ctx context.Context, client *http.Client, addr, token string) (*bundle.Bundle, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+bundlePath, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBundleSize+1))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(data)))
	}
	if len(data) > maxBundleSize {
		return nil, fmt.Errorf("bundle larger than %d bytes", maxBundleSize)
	}
	b, err := bundle.Parse("bundle from "+addr, data)
	if err != nil {
		return nil, err
	}
	// The TLS pin proved the CA; the token's secret must match too, or the
	// seed serves another cluster under the same CA.
	if !b.CheckToken(token) {
		return nil, errors.New("the bundle handed over does not match the join token")
	}
	return b, nil
}

// keepBundle stores a fetched bundle in dir, replacing one of another
// cluster.
func keepBundle(dir string, b *bundle.Bundle) error {
	data, err := b.Marshal()
	if err != nil {
		return err
	}
	path := filepath.Join(dir, LocalBundleFile)
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	return bundle.WriteFile(path, data)
}

// serveBundle hands the bundle to a host that presents the join token.
func (d *Daemon) serveBundle(w http.ResponseWriter, r *http.Request) {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || !d.bundle.CheckToken(token) {
		d.log.Warn("refused a cluster bundle request: wrong or missing join token", "from", r.RemoteAddr)
		writeJSON(w, http.StatusForbidden, apiError{"join token missing or not this cluster's; use the join_token of this cluster's bundle.toml"})
		return
	}
	data, err := d.bundle.Marshal()
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, apiError{err.Error()})
		return
	}
	d.log.Info("handed the cluster bundle to a joining host", "to", r.RemoteAddr)
	w.Header().Set("Content-Type", "application/toml")
	w.Write(data)
}
