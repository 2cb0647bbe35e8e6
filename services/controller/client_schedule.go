package controller

import (
	"context"
	"net/http"
	"net/url"
	"time"

	"github.com/plinth-os/plinth/host/job"
)

// Formations lists the formations with the scheduler's status.
func (c *Client) Formations(ctx context.Context, q QueryOptions) ([]Formation, QueryMeta, error) {
	return listOf[Formation](c, ctx, "formations", q)
}

// Formation returns one formation.
func (c *Client) Formation(ctx context.Context, name string, q QueryOptions) (Formation, error) {
	var f Formation
	_, err := c.call(ctx, http.MethodGet, queryPath("/v1/formations/"+url.PathEscape(name), q), nil, &f)
	return f, err
}

// PutFormation writes a formation, under the cas rule of PutSetting.
func (c *Client) PutFormation(ctx context.Context, f Formation, cas *uint64) (Formation, error) {
	var out Formation
	_, err := c.call(ctx, http.MethodPut, casPath("/v1/formations/"+url.PathEscape(f.Name), cas), f, &out)
	return out, err
}

// DeleteFormation removes a formation; the scheduler then stops its jobs.
func (c *Client) DeleteFormation(ctx context.Context, name string, cas *uint64) error {
	_, err := c.call(ctx, http.MethodDelete, casPath("/v1/formations/"+url.PathEscape(name), cas), nil, nil)
	return err
}

// Placements lists the scheduler's placements.
func (c *Client) Placements(ctx context.Context, q QueryOptions) ([]Placement, QueryMeta, error) {
	return listOf[Placement](c, ctx, "placements", q)
}

// Leases lists the leases.
func (c *Client) Leases(ctx context.Context, q QueryOptions) ([]Lease, QueryMeta, error) {
	return listOf[Lease](c, ctx, "leases", q)
}

// Lease takes or renews lease name for holder (on host) for ttl; another
// holder's live lease gives IsConflict(err). A ttl of 0 gives it up.
func (c *Client) Lease(ctx context.Context, name, holder, host string, ttl time.Duration) (Lease, error) {
	var l Lease
	req := LeaseRequest{Holder: holder, Host: host, TTL: job.Duration{Duration: ttl}}
	_, err := c.call(ctx, http.MethodPut, "/v1/leases/"+url.PathEscape(name), req, &l)
	return l, err
}

// Schedule writes one scheduler step under its fence; a deposed holder
// gets IsConflict(err). It returns the write's index.
func (c *Client) Schedule(ctx context.Context, s Schedule) (uint64, error) {
	var out struct {
		Index uint64 `json:"index"`
	}
	_, err := c.call(ctx, http.MethodPost, "/v1/schedule", s, &out)
	return out.Index, err
}

// Drain cordons a host and has the scheduler move its jobs away.
func (c *Client) Drain(ctx context.Context, id string) (Host, error) {
	var h Host
	_, err := c.call(ctx, http.MethodPost, "/v1/hosts/"+url.PathEscape(id)+"/drain", nil, &h)
	return h, err
}
