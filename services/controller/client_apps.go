package controller

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
)

// Apps lists the apps.
func (c *Client) Apps(ctx context.Context, q QueryOptions) ([]App, QueryMeta, error) {
	return listOf[App](c, ctx, "apps", q)
}

// App reads one app.
func (c *Client) App(ctx context.Context, name string, q QueryOptions) (App, error) {
	var out App
	_, err := c.call(ctx, http.MethodGet, queryPath("/v1/apps/"+url.PathEscape(name), q), nil, &out)
	return out, err
}

// PutApp writes an app's scale and strategy (cas 0 creates it); the
// platform keeps its release numbers.
func (c *Client) PutApp(ctx context.Context, a App, cas *uint64) (App, error) {
	var out App
	_, err := c.call(ctx, http.MethodPut, casPath("/v1/apps/"+url.PathEscape(a.Name), cas), a, &out)
	return out, err
}

// DestroyApp removes an app, its releases, deploys and routes; the
// deployer then removes its formations and the scheduler its instances.
func (c *Client) DestroyApp(ctx context.Context, name string, cas *uint64) error {
	_, err := c.call(ctx, http.MethodDelete, casPath("/v1/apps/"+url.PathEscape(name), cas), nil, nil)
	return err
}

// Releases lists every app's releases.
func (c *Client) Releases(ctx context.Context, q QueryOptions) ([]Release, QueryMeta, error) {
	return listOf[Release](c, ctx, "releases", q)
}

// Release reads release version of app.
func (c *Client) Release(ctx context.Context, app string, version int, q QueryOptions) (Release, error) {
	var out Release
	_, err := c.call(ctx, http.MethodGet, queryPath("/v1/releases/"+url.PathEscape(app)+"/v"+strconv.Itoa(version), q), nil, &out)
	return out, err
}

// NewRelease makes a release of app, and its deploy when q.Deploy.
func (c *Client) NewRelease(ctx context.Context, app string, q ReleaseRequest) (ReleaseResult, error) {
	var out ReleaseResult
	_, err := c.call(ctx, http.MethodPost, "/v1/apps/"+url.PathEscape(app)+"/releases", q, &out)
	return out, err
}

// Deploys lists every app's deploys.
func (c *Client) Deploys(ctx context.Context, q QueryOptions) ([]Deploy, QueryMeta, error) {
	return listOf[Deploy](c, ctx, "deploys", q)
}

// Deploy reads one deploy.
func (c *Client) Deploy(ctx context.Context, id string, q QueryOptions) (Deploy, QueryMeta, error) {
	var out Deploy
	m, err := c.call(ctx, http.MethodGet, queryPath("/v1/deploys/"+id, q), nil, &out)
	return out, m, err
}

// UpdateDeploy records a deployer's progress: d's state, reason, log
// and end, under compare-and-set with cas.
func (c *Client) UpdateDeploy(ctx context.Context, d Deploy, cas uint64) (Deploy, error) {
	var out Deploy
	_, err := c.call(ctx, http.MethodPut, casPath("/v1/deploys/"+d.ID, &cas), d, &out)
	return out, err
}

// Builds lists every app's builds.
func (c *Client) Builds(ctx context.Context, q QueryOptions) ([]Build, QueryMeta, error) {
	return listOf[Build](c, ctx, "builds", q)
}

// Build reads one build ("<app>/<number>").
func (c *Client) Build(ctx context.Context, id string, q QueryOptions) (Build, QueryMeta, error) {
	var out Build
	m, err := c.call(ctx, http.MethodGet, queryPath("/v1/builds/"+id, q), nil, &out)
	return out, m, err
}

// StartBuild starts a build of b.App (its commit, ref and deadline); a
// conflict while another build of the app runs.
func (c *Client) StartBuild(ctx context.Context, b Build) (Build, error) {
	var out Build
	_, err := c.call(ctx, http.MethodPost, "/v1/apps/"+url.PathEscape(b.App)+"/builds", b, &out)
	return out, err
}

// UpdateBuild records a builder's progress on a running build: its
// state, reason, host, release, log and deadline.
func (c *Client) UpdateBuild(ctx context.Context, b Build, cas uint64) (Build, error) {
	var out Build
	_, err := c.call(ctx, http.MethodPut, casPath("/v1/builds/"+b.ID, &cas), b, &out)
	return out, err
}

// Images lists the images pushed to the cluster's registry.
func (c *Client) Images(ctx context.Context, q QueryOptions) ([]Image, QueryMeta, error) {
	return listOf[Image](c, ctx, "images", q)
}

// Image reads one image by ID ("<repo>@sha256:…").
func (c *Client) Image(ctx context.Context, id string, q QueryOptions) (Image, error) {
	var out Image
	_, err := c.call(ctx, http.MethodGet, queryPath("/v1/images/"+id, q), nil, &out)
	return out, err
}

// PutImage records an image the registry stored.
func (c *Client) PutImage(ctx context.Context, i Image) (Image, error) {
	var out Image
	_, err := c.call(ctx, http.MethodPut, "/v1/images/"+i.ID, i, &out)
	return out, err
}

// DeleteImage forgets an image; the registries remove the blobs no
// image refers to any more.
func (c *Client) DeleteImage(ctx context.Context, id string) error {
	_, err := c.call(ctx, http.MethodDelete, "/v1/images/"+id, nil, nil)
	return err
}

// Tags lists the registry's tags.
func (c *Client) Tags(ctx context.Context, q QueryOptions) ([]Tag, QueryMeta, error) {
	return listOf[Tag](c, ctx, "tags", q)
}

// Tag reads one tag by ID ("<repo>:<tag>").
func (c *Client) Tag(ctx context.Context, id string, q QueryOptions) (Tag, error) {
	var out Tag
	_, err := c.call(ctx, http.MethodGet, queryPath("/v1/tags/"+id, q), nil, &out)
	return out, err
}

// PutTag points a tag at an image.
func (c *Client) PutTag(ctx context.Context, t Tag) (Tag, error) {
	var out Tag
	_, err := c.call(ctx, http.MethodPut, "/v1/tags/"+t.ID, t, &out)
	return out, err
}

// DeleteTag removes a tag.
func (c *Client) DeleteTag(ctx context.Context, id string) error {
	_, err := c.call(ctx, http.MethodDelete, "/v1/tags/"+id, nil, nil)
	return err
}

// DeleteRelease removes an old release; one that serves or is being
// deployed stays (409).
func (c *Client) DeleteRelease(ctx context.Context, app string, version int) error {
	_, err := c.call(ctx, http.MethodDelete, "/v1/releases/"+url.PathEscape(app)+"/v"+strconv.Itoa(version), nil, nil)
	return err
}
