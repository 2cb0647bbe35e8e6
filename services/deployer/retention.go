package deployer

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/plinth-os/plinth/services/controller"
)

// Retention is what the deployer reads and removes to keep the last
// releases of each app and their images only; *controller.Client has it.
type Retention interface {
	Settings(ctx context.Context, q controller.QueryOptions) ([]controller.Setting, controller.QueryMeta, error)
	Releases(ctx context.Context, q controller.QueryOptions) ([]controller.Release, controller.QueryMeta, error)
	DeleteRelease(ctx context.Context, app string, version int) error
	Images(ctx context.Context, q controller.QueryOptions) ([]controller.Image, controller.QueryMeta, error)
	Tags(ctx context.Context, q controller.QueryOptions) ([]controller.Tag, controller.QueryMeta, error)
	DeleteImage(ctx context.Context, id string) error
}

var _ Retention = (*controller.Client)(nil)

// prune removes each app's releases beyond the last apps.keep_releases
// (never the serving one, nor those a deploy moves between), then the
// images of the apps' repositories that no release left refers to, no
// tag names, and that were pushed more than registry.gc_grace ago. The
// registries then remove the blobs, and the hosts the images they
// pulled.
func (d *Deployer) prune(ctx context.Context) error {
	c := d.cfg.Retention
	// At the leader: a follower behind it could show a deploy ended but
	// not yet the release it made serving.
	q := controller.QueryOptions{Consistent: true}
	settings, _, err := c.Settings(ctx, q)
	if err != nil {
		return err
	}
	keep, grace := controller.DefaultKeepReleases, controller.DefaultGCGrace
	for _, s := range settings {
		switch s.Key {
		case controller.KeepReleasesSetting:
			if n, err := strconv.Atoi(s.Value); err == nil && n > 0 {
				keep = n
			}
		case controller.GCGraceSetting:
			if v, err := time.ParseDuration(s.Value); err == nil {
				grace = v
			}
		}
	}
	apps, _, err := d.cfg.Controller.Apps(ctx, q)
	if err != nil {
		return err
	}
	deploys, _, err := d.cfg.Controller.Deploys(ctx, q)
	if err != nil {
		return err
	}
	releases, _, err := c.Releases(ctx, q)
	if err != nil {
		return err
	}
	kept, drop := keptReleases(apps, deploys, releases, keep)
	for _, r := range drop {
		if err := c.DeleteRelease(ctx, r.App, r.Version); err != nil && !controller.IsConflict(err) && !controller.IsNotFound(err) {
			return fmt.Errorf("remove release %s: %w", r.ID, err)
		}
		d.log.Info("release removed", "release", r.ID, "keep", keep)
	}
	images, _, err := c.Images(ctx, q)
	if err != nil {
		return err
	}
	tags, _, err := c.Tags(ctx, q)
	if err != nil {
		return err
	}
	for _, img := range unusedImages(apps, kept, images, tags, time.Now().Add(-grace)) {
		if err := c.DeleteImage(ctx, img.ID); err != nil && !controller.IsNotFound(err) {
			return fmt.Errorf("remove image %s: %w", img.ID, err)
		}
		d.log.Info("image removed", "image", img.ID)
	}
	return nil
}

// keptReleases splits the releases into those kept (the last keep of
// each app, its serving one, those a running deploy moves between) and
// those to remove.
func keptReleases(apps []controller.App, deploys []controller.Deploy, releases []controller.Release, keep int) (kept, drop []controller.Release) {
	pinned := map[string]bool{}
	for _, a := range apps {
		pinned[controller.ReleaseID(a.Name, a.Release)] = true
	}
	for _, dep := range deploys {
		if dep.State == controller.DeployRunning {
			pinned[controller.ReleaseID(dep.App, dep.From)] = true
			pinned[controller.ReleaseID(dep.App, dep.To)] = true
		}
	}
	byApp := map[string][]controller.Release{}
	for _, r := range releases {
		byApp[r.App] = append(byApp[r.App], r)
	}
	for _, rs := range byApp {
		slices.SortFunc(rs, func(a, b controller.Release) int { return b.Version - a.Version })
		for i, r := range rs {
			if i < keep || pinned[r.ID] {
				kept = append(kept, r)
			} else {
				drop = append(drop, r)
			}
		}
	}
	return kept, drop
}

// unusedImages are the images of the apps' repositories that no kept
// release runs and no tag names, pushed before cutoff.
func unusedImages(apps []controller.App, kept []controller.Release, images []controller.Image, tags []controller.Tag, cutoff time.Time) []controller.Image {
	repos := map[string]bool{}
	for _, a := range apps {
		repos[a.Name] = true
	}
	used := map[string]bool{}
	for _, r := range kept {
		used[r.Image] = true
	}
	for _, t := range tags {
		used[controller.ImageID(t.Repo, t.Digest)] = true
	}
	var out []controller.Image
	for _, img := range images {
		if repos[img.Repo] && !used[img.ID] && img.Pushed.Before(cutoff) {
			out = append(out, img)
		}
	}
	return out
}
