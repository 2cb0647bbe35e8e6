package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/spf13/cobra"

	"github.com/plinth-os/plinth/host/imagestore"
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/services/appspec"
	"github.com/plinth-os/plinth/services/controller"
)

// deployFlags are what every command that deploys takes.
type deployFlags struct {
	strategy      string
	healthTimeout time.Duration
	wait          time.Duration
	detach        bool
}

func (d *deployFlags) register(cmd *cobra.Command) {
	fl := cmd.PersistentFlags()
	fl.StringVar(&d.strategy, "strategy", "", "rolling (one new instance at a time) or all-at-once (default: the app's)")
	fl.DurationVar(&d.healthTimeout, "health-timeout", 0, "how long each batch of new instances gets to pass its health checks (default 1m)")
	fl.DurationVar(&d.wait, "wait", 30*time.Minute, "how long to follow the deploy")
	fl.BoolVar(&d.detach, "detach", false, "start the deploy and return; plinth deploys -a APP follows up")
}

func (d *deployFlags) timeout() time.Duration { return d.wait + time.Minute }

func (d *deployFlags) request() controller.ReleaseRequest {
	return controller.ReleaseRequest{Deploy: true, Strategy: d.strategy, HealthTimeout: job.Duration{Duration: d.healthTimeout}}
}

// deployRelease makes the release q asks for with its deploy, and
// follows the deploy to its end, printing its steps.
func deployRelease(ctx context.Context, c *controller.Client, app string, q controller.ReleaseRequest, detach bool) error {
	res, err := c.NewRelease(ctx, app, q)
	if err != nil {
		return err
	}
	fmt.Printf("release v%d of %s: %s\n", res.Release.Version, app, res.Release.Description)
	if res.Deploy == nil {
		return nil
	}
	if detach {
		fmt.Printf("deploy %s started; follow it with: plinth deploys -a %s\n", res.Deploy.ID, app)
		return nil
	}
	return followDeploy(ctx, c, res.Deploy.ID)
}

// followDeploy prints a deploy's log lines as they come, and fails when
// the deploy does.
func followDeploy(ctx context.Context, c *controller.Client, id string) error {
	printed := 0
	// The first read at the leader: a follower may not have the deploy
	// yet.
	q := controller.QueryOptions{Consistent: true}
	for {
		d, m, err := c.Deploy(ctx, id, q)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("stopped following deploy %s, which goes on (plinth deploys -a %s)", id, d.App)
			}
			return err
		}
		for _, s := range d.Log[min(printed, len(d.Log)):] {
			fmt.Printf("  %s  %s\n", s.Time.Local().Format("15:04:05"), s.Text)
		}
		printed = len(d.Log)
		switch d.State {
		case controller.DeployDone:
			fmt.Printf("deployed v%d of %s in %s\n", d.To, d.App, d.Ended.Sub(d.Started).Round(100*time.Millisecond))
			return nil
		case controller.DeployFailed:
			return fmt.Errorf("deploy of v%d failed, v%d serves: %s", d.To, d.From, d.Reason)
		}
		q = controller.QueryOptions{Index: m.Index, Wait: controller.MaxWait}
	}
}

func deployCommand() *cobra.Command {
	f := &appFlags{}
	var df deployFlags
	var image, procfile, file string
	cmd := &cobra.Command{
		Use:   "deploy",
		Short: "Deploy an image to an app: a new release, rolled out with health checks",
		Long: `Deploy --image to the app: a docker-save archive or an OCI layout (a directory
or a tar of one) is pushed to the cluster's registry first; anything else is
an image already in the registry (pushed with docker, podman, skopeo or
crane), as REPO:TAG or REPO@sha256:DIGEST.

The process types come from plinth.toml's [processes] and the Procfile, in
the current directory unless --file and --procfile say otherwise; without
either, the app keeps its release's processes, and a first deploy runs the
image's entrypoint as web on the port the image exposes (else 8080, given
as $PORT).`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if image == "" {
				return errors.New("give --image FILE (docker save, OCI layout) or --image REF (in the cluster's registry)")
			}
			decl, err := readDeclaration(file, procfile)
			if err != nil {
				return err
			}
			if f.app == "" && decl != nil && decl.App != "" {
				f.app = decl.App
			}
			return f.withApp(df.timeout(), func(ctx context.Context, c *controller.Client, app controller.App) error {
				ref, cfg, err := resolveImage(ctx, &f.clusterFlags, app.Name, image)
				if err != nil {
					return err
				}
				q := df.request()
				q.Image = ref
				q.Description = "deploy " + shortImage(image, ref)
				if decl != nil {
					q.Processes = decl.ReleaseProcesses()
					q.ReleaseCommand = decl.Release
					if q.Strategy == "" {
						q.Strategy = decl.Deploy.Strategy
					}
					if q.HealthTimeout.Duration == 0 {
						q.HealthTimeout.Duration = decl.Deploy.HealthTimeout.Duration
					}
				}
				if q.Processes == nil && app.LastRelease == 0 {
					q.Processes = map[string]controller.Process{controller.WebProcess: {Port: exposedPort(cfg)}}
				}
				if err := checkCommands(q.Processes, cfg); err != nil {
					return err
				}
				return deployRelease(ctx, c, app.Name, q, df.detach)
			})
		},
	}
	f.register(cmd)
	df.register(cmd)
	fl := cmd.Flags()
	fl.StringVar(&image, "image", "", "an image archive (docker save, OCI layout) or a reference in the cluster's registry")
	fl.StringVar(&procfile, "procfile", "", "the Procfile (default: ./Procfile if there is one)")
	fl.StringVar(&file, "file", "", "the app's plinth.toml (default: ./plinth.toml if there is one)")
	return cmd
}

// readDeclaration reads plinth.toml and the Procfile (the given paths, or
// those of the current directory when they exist); nil when there is
// neither.
func readDeclaration(file, procfile string) (*appspec.File, error) {
	var decl *appspec.File
	path, must := file, file != ""
	if path == "" {
		path = appFile
	}
	if data, err := os.ReadFile(path); err == nil {
		if decl, err = appspec.ParseFile(path, data); err != nil {
			return nil, err
		}
	} else if must || !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	path, must = procfile, procfile != ""
	if path == "" {
		path = "Procfile"
	}
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		p, err := appspec.ParseProcfile(path, data)
		if err != nil {
			return nil, err
		}
		if decl == nil {
			decl = &appspec.File{}
		}
		decl.WithProcfile(p)
	case must || !errors.Is(err, os.ErrNotExist):
		return nil, err
	}
	return decl, nil
}

// checkCommands refuses processes that name no command when the image
// has none to run either.
func checkCommands(procs map[string]controller.Process, cfg *v1.ConfigFile) error {
	if cfg == nil {
		return nil
	}
	for typ, p := range procs {
		if len(p.Cmd) == 0 && len(cfg.Config.Entrypoint) == 0 && len(cfg.Config.Cmd) == 0 {
			return fmt.Errorf("process %s names no command and the image has no entrypoint or command: give one in the Procfile or plinth.toml", typ)
		}
	}
	return nil
}

// exposedPort is the lowest TCP port the image exposes, else 8080.
func exposedPort(cfg *v1.ConfigFile) int {
	best := 0
	if cfg != nil {
		for p := range cfg.Config.ExposedPorts {
			num, proto, _ := strings.Cut(p, "/")
			n, err := strconv.Atoi(num)
			if err == nil && (proto == "" || proto == "tcp") && n > 0 && (best == 0 || n < best) {
				best = n
			}
		}
	}
	if best == 0 {
		return 8080
	}
	return best
}

func shortImage(arg, ref string) string {
	_, digest, _ := strings.Cut(ref, "@sha256:")
	return filepath.Base(arg) + " (" + digest[:min(12, len(digest))] + ")"
}

// registryAddr is the registry of the host the CLI talks to.
func (f *clusterFlags) registryAddr() string {
	h := f.hostAddr
	if host, _, err := net.SplitHostPort(h); err == nil {
		h = host
	}
	return net.JoinHostPort(h, strconv.Itoa(controller.RegistryPort))
}

// resolveImage returns the release image ("<repo>@sha256:…") arg names
// and its config: an archive on disk is pushed to the app's repository
// first.
func resolveImage(ctx context.Context, f *clusterFlags, app, arg string) (string, *v1.ConfigFile, error) {
	creds, err := f.credentials()
	if err != nil {
		return "", nil, err
	}
	opts := []remote.Option{remote.WithContext(ctx), remote.WithTransport(imagestore.TLSTransport(creds.TLS()))}
	reg := f.registryAddr()
	if _, err := os.Stat(arg); err != nil {
		// A reference in the cluster's registry.
		ref, err := name.ParseReference(reg + "/" + arg)
		if err != nil {
			return "", nil, fmt.Errorf("image %q is no file and no reference (REPO:TAG or REPO@sha256:…): %w", arg, err)
		}
		img, err := remote.Image(ref, opts...)
		if err != nil {
			return "", nil, fmt.Errorf("image %s in the cluster's registry: %w", arg, err)
		}
		return imageRef(ref.Context().RepositoryStr(), img)
	}
	imgs, cleanup, err := imagestore.ReadArchive(arg, os.TempDir())
	defer cleanup()
	if err != nil {
		return "", nil, err
	}
	if len(imgs) != 1 {
		return "", nil, fmt.Errorf("%s holds %d images: save one image per archive", arg, len(imgs))
	}
	img := imgs[0].Image
	ref, err := name.ParseReference(reg + "/" + app + ":latest")
	if err != nil {
		return "", nil, err
	}
	if err := pushWithProgress(ctx, ref, img, opts); err != nil {
		return "", nil, err
	}
	return imageRef(app, img)
}

func imageRef(repo string, img v1.Image) (string, *v1.ConfigFile, error) {
	digest, err := img.Digest()
	if err != nil {
		return "", nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return "", nil, fmt.Errorf("image config: %w", err)
	}
	return repo + "@" + digest.String(), cfg, nil
}

// pushWithProgress pushes img to ref, drawing a progress bar on a
// terminal and a line per quarter otherwise.
func pushWithProgress(ctx context.Context, ref name.Reference, img v1.Image, opts []remote.Option) error {
	updates := make(chan v1.Update, 16)
	done := make(chan error, 1)
	go func() { done <- remote.Write(ref, img, append(opts, remote.WithProgress(updates))...) }()
	fi, _ := os.Stderr.Stat()
	tty := fi != nil && fi.Mode()&os.ModeCharDevice != 0
	start := time.Now()
	quarter := int64(-1)
	var last v1.Update
	for u := range updates {
		if u.Error != nil && !errors.Is(u.Error, io.EOF) {
			break
		}
		last = u
		if u.Total <= 0 {
			continue
		}
		if tty {
			const width = 30
			n := int(u.Complete * width / u.Total)
			fmt.Fprintf(os.Stderr, "\rpushing [%s%s] %s / %s", strings.Repeat("#", n), strings.Repeat(".", width-n), mib(u.Complete), mib(u.Total))
		} else if q := u.Complete * 4 / u.Total; q != quarter {
			quarter = q
			fmt.Fprintf(os.Stderr, "pushing: %s of %s\n", mib(u.Complete), mib(u.Total))
		}
	}
	err := <-done
	if tty {
		fmt.Fprintln(os.Stderr)
	}
	if err != nil {
		return fmt.Errorf("push to the cluster's registry: %w", err)
	}
	fmt.Fprintf(os.Stderr, "pushed %s in %s\n", mib(last.Total), time.Since(start).Round(100*time.Millisecond))
	return nil
}

func mib(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }
