package controller

import (
	"context"
	"net/http"
	"net/url"
)

// Routes lists the routes.
func (c *Client) Routes(ctx context.Context, q QueryOptions) ([]Route, QueryMeta, error) {
	return listOf[Route](c, ctx, "routes", q)
}

// Route reads one route.
func (c *Client) Route(ctx context.Context, id string, q QueryOptions) (Route, error) {
	var out Route
	_, err := c.call(ctx, http.MethodGet, queryPath("/v1/routes/"+url.PathEscape(id), q), nil, &out)
	return out, err
}

// AddRoute writes a new route and returns it as stored: with its ID and,
// for a TCP route that gave none, its port.
func (c *Client) AddRoute(ctx context.Context, r Route) (Route, error) {
	var out Route
	_, err := c.call(ctx, http.MethodPost, "/v1/routes", r, &out)
	return out, err
}

// PutRoute writes the route with r.ID, under compare-and-set when cas is
// set.
func (c *Client) PutRoute(ctx context.Context, r Route, cas *uint64) (Route, error) {
	var out Route
	_, err := c.call(ctx, http.MethodPut, casPath("/v1/routes/"+url.PathEscape(r.ID), cas), r, &out)
	return out, err
}

// DeleteRoute removes a route; the routers stop taking new work for it.
func (c *Client) DeleteRoute(ctx context.Context, id string) error {
	_, err := c.call(ctx, http.MethodDelete, "/v1/routes/"+url.PathEscape(id), nil, nil)
	return err
}

// DrainInstance marks an instance draining (or, with drain false,
// serving again): the routers send it no new work. Its work in flight is
// what the routers' counts show.
func (c *Client) DrainInstance(ctx context.Context, id string, drain bool) (Instance, error) {
	action := "/drain"
	if !drain {
		action = "/undrain"
	}
	var out Instance
	_, err := c.call(ctx, http.MethodPost, "/v1/instances/"+id+action, nil, &out)
	return out, err
}
