package builder

import (
	"archive/tar"
	"cmp"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/storer"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/services/appspec"
	"github.com/plinth-os/plinth/services/controller"
	"github.com/plinth-os/plinth/services/deployer"
)

// Where a build finds things in its container.
const (
	// AppDir holds the pushed tree; it is the build's and the release's
	// working directory.
	AppDir = "/app"
	// CacheDir is the app's build cache, kept on the build host from
	// one build to the next.
	CacheDir = "/cache"
	// CacheRoot holds the caches on a host, one directory per app.
	CacheRoot = "/var/lib/plinth/build-cache"
	// deployWait bounds how long a push follows its deploy.
	deployWait = 30 * time.Minute
)

// build builds commit of repo, makes a release of it and deploys it,
// saying each step on p; an error is the reason the push of ref fails,
// with the serving release left as it was.
func (b *Builder) build(ctx context.Context, repo *repo, ref plumbing.ReferenceName, commit plumbing.Hash, p *progress) (err error) {
	c := b.cfg.Controller
	app, err := c.App(ctx, repo.app, controller.QueryOptions{Consistent: true})
	if err != nil {
		return fmt.Errorf("app %s: %v", repo.app, err)
	}
	cm, err := object.GetCommit(repo.storer, commit)
	if err != nil {
		return err
	}
	decl, err := declaration(cm)
	if err != nil {
		p.say("%v", err)
		return err
	}
	procs := decl.ReleaseProcesses()
	if procs == nil && app.LastRelease == 0 {
		err := errors.New("no process types: add a Procfile (web: COMMAND) or [processes] to plinth.toml")
		p.say("%v", err)
		return err
	}
	spec := decl.Build
	timeout := cmp.Or(spec.Timeout.Duration, appspec.DefaultBuildTimeout)

	rec, err := c.StartBuild(ctx, controller.Build{App: app.Name, Commit: commit.String(), Ref: ref.String(),
		State: controller.BuildRunning, Deadline: time.Now().Add(timeout + deployWait + 5*time.Minute)})
	if err != nil {
		p.say("%v", err)
		return fmt.Errorf("refused: %v", err)
	}
	var logMu sync.Mutex
	var log strings.Builder
	// The record keeps the end of the output; a build that says much
	// keeps its start in memory no longer than that.
	p.setTee(func(line string) {
		logMu.Lock()
		defer logMu.Unlock()
		log.WriteString(line + "\n")
		if log.Len() > 4*controller.MaxBuildLog {
			rest := controller.LogTail(log.String(), controller.MaxBuildLog)
			log.Reset()
			log.WriteString(rest)
		}
	})
	defer func() {
		p.setTee(nil)
		rec.State, rec.Reason = controller.BuildSucceeded, ""
		if err != nil {
			rec.State, rec.Reason = controller.BuildFailed, err.Error()
		}
		logMu.Lock()
		rec.Log = controller.LogTail(log.String(), controller.MaxBuildLog)
		logMu.Unlock()
		// The push's context may be gone (a client that went away): the
		// record is written in any case.
		wctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, uerr := c.UpdateBuild(wctx, rec, rec.ModifyIndex); uerr != nil {
			b.log.Warn("record build end", "build", rec.ID, "err", uerr)
		}
	}()

	work, err := os.MkdirTemp(b.cfg.TempDir, "build-")
	if err != nil {
		return failf(p, "%v", err)
	}
	defer os.RemoveAll(work)
	start := time.Now()
	p.say("-----> build %d of %s: %.12s (%s)", rec.Number, app.Name, commit, firstLine(cm.Message))
	base, err := b.image(ctx, spec.Base)
	if err != nil {
		return failf(p, "base image %s: %v: push it to the cluster's registry first (docs/builds.md)", spec.Base, err)
	}
	src, err := sourceLayer(cm, repo.storer, work)
	if err != nil {
		return failf(p, "pack the tree: %v", err)
	}
	img, err := mutate.AppendLayers(base, src)
	if err != nil {
		return failf(p, "add the tree to %s: %v", spec.Base, err)
	}
	if img, err = withWorkingDir(img, AppDir); err != nil {
		return failf(p, "%v", err)
	}
	if len(spec.Command) > 0 {
		if img, err = b.runBuild(ctx, &rec, img, spec, timeout, work, p); err != nil {
			return err
		}
	} else {
		p.say("-----> no build command: the tree is added to %s as it is", spec.Base)
	}
	ref2, err := b.push(ctx, b.cfg.Registry, app.Name, img)
	if err != nil {
		return failf(p, "push the image to the registry: %v", err)
	}
	p.say("-----> built %s in %s", strings.TrimPrefix(ref2, app.Name+"@")[:19], time.Since(start).Round(100*time.Millisecond))

	q := controller.ReleaseRequest{Image: ref2, Processes: procs, ReleaseCommand: decl.Release, Deploy: true,
		Strategy: decl.Deploy.Strategy, HealthTimeout: job.Duration{Duration: decl.Deploy.HealthTimeout.Duration},
		Description: fmt.Sprintf("git push %.12s", commit)}
	res, err := c.NewRelease(ctx, app.Name, q)
	if err != nil {
		return failf(p, "release: %v", err)
	}
	rec.Release = res.Release.Version
	p.say("-----> release v%d; deploying", res.Release.Version)
	if res.Deploy == nil {
		return failf(p, "release v%d has no deploy", res.Release.Version)
	}
	// Followed to its end even if the client goes away: the deploy goes
	// on, and the build's record and the branch say how it ended.
	if err := b.followDeploy(context.WithoutCancel(ctx), app.Name, res.Deploy.ID, p); err != nil {
		return failf(p, "%v", err)
	}
	p.say("-----> v%d of %s serves%s", res.Release.Version, app.Name, b.where(ctx, res.Release))
	return nil
}

func failf(p *progress, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	p.say("-----> build failed: %v", err)
	return err
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	if len(s) > 60 {
		s = s[:57] + "..."
	}
	return s
}

// declaration reads plinth.toml and the Procfile at the root of the
// commit's tree; it needs a [build] base.
func declaration(cm *object.Commit) (*appspec.File, error) {
	tree, err := cm.Tree()
	if err != nil {
		return nil, err
	}
	read := func(n string) ([]byte, error) {
		f, err := tree.File(n)
		if errors.Is(err, object.ErrFileNotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		s, err := f.Contents()
		return []byte(s), err
	}
	file, err := read("plinth.toml")
	if err != nil {
		return nil, err
	}
	procfile, err := read("Procfile")
	if err != nil {
		return nil, err
	}
	decl, err := appspec.ParseTree(file, procfile)
	if err != nil {
		return nil, err
	}
	if decl == nil || decl.Build == nil {
		return nil, errors.New(`plinth.toml has no [build]: add one naming the image to build on, as [build] base = "busybox:latest" (an image in the cluster's registry; docs/builds.md)`)
	}
	return decl, nil
}

// sourceLayer packs the commit's tree under app/ as an image layer (a
// file in dir), each file dated as the commit, owned by root.
func sourceLayer(cm *object.Commit, objs storer.EncodedObjectStorer, dir string) (v1.Layer, error) {
	tree, err := cm.Tree()
	if err != nil {
		return nil, err
	}
	f, err := os.Create(path.Join(dir, "source.tar.gz"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	zw := gzip.NewWriter(f)
	tw := tar.NewWriter(zw)
	when := cm.Committer.When.UTC()
	root := strings.TrimPrefix(AppDir, "/")
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: root + "/", Mode: 0o755, ModTime: when}); err != nil {
		return nil, err
	}
	walker := object.NewTreeWalker(tree, true, nil)
	defer walker.Close()
	for {
		n, e, err := walker.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		hdr := &tar.Header{Name: path.Join(root, n), ModTime: when, Mode: 0o644}
		switch e.Mode {
		case filemode.Dir:
			hdr.Typeflag, hdr.Name, hdr.Mode = tar.TypeDir, hdr.Name+"/", 0o755
		case filemode.Symlink:
			hdr.Typeflag = tar.TypeSymlink
			blob, err := tree.TreeEntryFile(&e)
			if err != nil {
				return nil, err
			}
			target, err := blob.Contents()
			if err != nil {
				return nil, err
			}
			hdr.Linkname, hdr.Mode = target, 0o777
		case filemode.Regular, filemode.Deprecated, filemode.Executable:
			hdr.Typeflag = tar.TypeReg
			if e.Mode == filemode.Executable {
				hdr.Mode = 0o755
			}
		default:
			continue // submodules: not in this repository
		}
		if hdr.Typeflag != tar.TypeReg {
			if err := tw.WriteHeader(hdr); err != nil {
				return nil, err
			}
			continue
		}
		blob, err := object.GetBlob(objs, e.Hash)
		if err != nil {
			return nil, err
		}
		hdr.Size = blob.Size
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		rd, err := blob.Reader()
		if err != nil {
			return nil, err
		}
		_, err = io.Copy(tw, rd)
		rd.Close()
		if err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	return tarball.LayerFromFile(f.Name())
}

func withWorkingDir(img v1.Image, dir string) (v1.Image, error) {
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg := cf.Config
	cfg.WorkingDir = dir
	return mutate.Config(img, cfg)
}

// image is ref (REPO:TAG or REPO@sha256:…) in the cluster's registry.
func (b *Builder) image(ctx context.Context, ref string) (v1.Image, error) {
	r, err := name.ParseReference(b.cfg.Registry + "/" + ref)
	if err != nil {
		return nil, err
	}
	return remote.Image(r, append(b.regOpts, remote.WithContext(ctx))...)
}

// push writes img to app's repository by digest in the registry at reg
// and returns the release image name, "<app>@sha256:…".
func (b *Builder) push(ctx context.Context, reg, app string, img v1.Image) (string, error) {
	d, err := img.Digest()
	if err != nil {
		return "", err
	}
	ref, err := name.NewDigest(reg + "/" + app + "@" + d.String())
	if err != nil {
		return "", err
	}
	if err := remote.Write(ref, img, append(b.regOpts, remote.WithContext(ctx))...); err != nil {
		return "", err
	}
	return app + "@" + d.String(), nil
}

// runBuild runs the build command in a job on the app's build host, on
// img (the base with the tree), and returns img with what the command
// wrote on top.
func (b *Builder) runBuild(ctx context.Context, rec *controller.Build, img v1.Image, spec *appspec.Build, timeout time.Duration, work string, p *progress) (v1.Image, error) {
	hosts, _, err := b.cfg.Controller.Hosts(ctx, controller.QueryOptions{})
	if err != nil {
		return nil, failf(p, "read hosts: %v", err)
	}
	h, err := BuildHost(hosts, rec.App)
	if err != nil {
		return nil, failf(p, "%v", err)
	}
	rec.Host = h.ID
	// Pushed to the build host's own registry, which its hostd pulls
	// from: no copy between registries before the job starts.
	ip, _, err := net.SplitHostPort(h.API)
	if err != nil {
		return nil, failf(p, "host %s: API address %q: %v", h.ID, h.API, err)
	}
	stageRef, err := b.push(ctx, net.JoinHostPort(ip, strconv.Itoa(controller.RegistryPort)), rec.App, img)
	if err != nil {
		return nil, failf(p, "push the build's image to %s: %v", cmp.Or(h.Hostname, h.ID), err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	env := append(slices.Clone(cf.Config.Env), "PLINTH_APP="+rec.App, "PLINTH_COMMIT="+rec.Commit,
		"PLINTH_BUILD="+fmt.Sprint(rec.Number), "APP_DIR="+AppDir, "CACHE_DIR="+CacheDir)
	mem := int64(appspec.DefaultBuildMemory)
	if spec.Memory != "" {
		mem, _ = appspec.ParseBytes(spec.Memory)
	}
	js := job.Spec{
		ID:         fmt.Sprintf("%s.build.%d", rec.App, rec.Number),
		Image:      fmt.Sprintf("127.0.0.1:%d/%s", controller.RegistryPort, stageRef),
		Cmd:        spec.Command,
		Env:        env,
		WorkingDir: AppDir,
		Network:    job.NetworkBridge,
		Resources:  job.Resources{MemoryBytes: mem, CPUQuota: spec.CPUs},
		Volumes:    []job.Volume{{Source: path.Join(CacheRoot, rec.App), Target: CacheDir}},
		Tags:       map[string]string{controller.AppTag: rec.App, "plinth.build": fmt.Sprint(rec.Number)},
	}
	p.say("-----> running %s on %s (timeout %s, cache %s)", strings.Join(spec.Command, " "), cmp.Or(h.Hostname, h.ID), timeout, CacheDir)
	api := b.cfg.Dial(h.API)
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var layer v1.Layer
	began := time.Now()
	j, err := deployer.RunJobThen(rctx, api, js, func(l job.LogLine) { p.say("       %s", l.Text) }, func(j job.Job) error {
		if deployer.ExitCode(j) != 0 {
			return nil
		}
		var lerr error
		layer, lerr = changes(ctx, api, js.ID, work)
		return lerr
	})
	switch {
	case ctx.Err() != nil:
		return nil, failf(p, "canceled: the push's connection closed")
	case err != nil && rctx.Err() != nil:
		return nil, failf(p, "the build command did not end within %s (set [build] timeout)", timeout)
	case err != nil:
		return nil, failf(p, "build job: %v", err)
	case deployer.ExitCode(j) != 0:
		return nil, failf(p, "the build command exited %d after %s", deployer.ExitCode(j), time.Since(began).Round(100*time.Millisecond))
	}
	p.say("-----> build command done in %s", time.Since(began).Round(100*time.Millisecond))
	return mutate.AppendLayers(img, layer)
}

// changes reads what build job id wrote, as a layer (a file in dir,
// compressed as it comes).
func changes(ctx context.Context, api HostAPI, id, dir string) (v1.Layer, error) {
	rc, err := api.JobChanges(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("read the build's output: %w", err)
	}
	defer rc.Close()
	f, err := os.Create(path.Join(dir, "changes.tar.gz"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	zw := gzip.NewWriter(f)
	// Read through as a tar while it is copied: a stream cut short is an
	// error here, never a layer with files missing.
	tr := tar.NewReader(io.TeeReader(rc, zw))
	for {
		_, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read the build's output: %w", err)
		}
	}
	// The tar's end-of-archive blocks and padding are copied too.
	if _, err := io.Copy(zw, rc); err != nil {
		return nil, fmt.Errorf("read the build's output: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	return tarball.LayerFromFile(f.Name())
}

// BuildHost is where app's builds run: the same host each time while it
// is up (its cache is there), by rendezvous hashing over the alive,
// uncordoned hosts.
func BuildHost(hosts []controller.Host, app string) (controller.Host, error) {
	ok := slices.DeleteFunc(slices.Clone(hosts), func(h controller.Host) bool {
		return h.Status != controller.HostAlive || h.Cordoned || h.API == ""
	})
	if len(ok) == 0 {
		return controller.Host{}, errors.New("no alive, uncordoned host to build on (plinth status)")
	}
	return controller.Rendezvous(ok, func(h controller.Host) string { return h.ID }, app)[0], nil
}

// followDeploy says a deploy's steps as they come, until it ends.
func (b *Builder) followDeploy(ctx context.Context, app, id string, p *progress) error {
	c := b.cfg.Controller
	dctx, cancel := context.WithTimeout(ctx, deployWait)
	defer cancel()
	printed := 0
	q := controller.QueryOptions{Consistent: true}
	for {
		d, m, err := c.Deploy(dctx, id, q)
		if err != nil {
			if dctx.Err() != nil {
				return fmt.Errorf("stopped following deploy %s after %s; it goes on (plinth deploys -a %s)", id, deployWait, app)
			}
			if !controller.Sleep(dctx, time.Second) {
				continue
			}
			q = controller.QueryOptions{Consistent: true}
			continue
		}
		for _, s := range d.Log[min(printed, len(d.Log)):] {
			p.say("       %s", s.Text)
		}
		printed = len(d.Log)
		switch d.State {
		case controller.DeployDone:
			return nil
		case controller.DeployFailed:
			return fmt.Errorf("deploy of v%d failed, v%d serves: %s", d.To, d.From, d.Reason)
		}
		q = controller.QueryOptions{Index: m.Index, Wait: controller.MaxWait}
	}
}

// where says how the release's processes are reached: their routes.
func (b *Builder) where(ctx context.Context, rel controller.Release) string {
	routes, _, err := b.cfg.Controller.Routes(ctx, controller.QueryOptions{})
	if err != nil {
		return ""
	}
	services := map[string]bool{}
	for typ := range rel.Processes {
		services[controller.ServiceName(rel.App, typ)] = true
	}
	var at []string
	for _, r := range routes {
		if !services[r.Service] {
			continue
		}
		switch r.Type {
		case controller.RouteHTTP:
			at = append(at, "http://"+r.Domain+r.Path)
		default:
			at = append(at, fmt.Sprintf("%s port %d", r.Type, r.Port))
		}
	}
	if len(at) == 0 {
		return fmt.Sprintf(" (no route yet: plinth routes add http DOMAIN --service %s)", controller.ServiceName(rel.App, controller.WebProcess))
	}
	slices.Sort(at)
	return " at " + strings.Join(at, ", ")
}
