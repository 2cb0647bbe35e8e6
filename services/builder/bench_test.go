package builder_test

import (
	"archive/tar"
	"bufio"
	"bytes"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/plinth-os/plinth/host/imagestore"
	"github.com/plinth-os/plinth/internal/platformtest"
	"github.com/plinth-os/plinth/internal/testwait"
	"github.com/plinth-os/plinth/services/controller"
)

// BenchmarkBuild: `git push` of a small app on three netns hosts, from
// the push to the new page served through a router, against the floor:
// the same image made by hand (the tree and the page as a layer on the
// base), pushed to the registry and released and deployed through the
// controller's API, until served. Two apps: "site", whose build step
// writes the page (a job the floor does not run), and "static", whose
// tree holds it (no build step). Rounds alternate plinth and the floor;
// each pushes a new commit.
func BenchmarkBuild(b *testing.B) {
	p := platformtest.New(b, "plbb", "10.70.0", 3, platformtest.WithContainerNetwork())
	p.Bootstrap(3 * time.Minute)
	pushBase(b, p)
	for _, app := range []string{"site", "static"} {
		benchApp(b, p, app)
	}
}

func benchApp(b *testing.B, p *platformtest.Platform, app string) {
	static := app == "static"
	domain := app + ".test"
	if out, err := p.CLI(testwait.Ctx(b, 30*time.Second), "apps", "create", app); err != nil {
		b.Fatal(err, out)
	}
	repo := b.TempDir()
	git := gitIn(b, p, repo)
	git("init", "-q", "-b", "main")
	write(b, repo, "Procfile", procfile)
	page := func(n int, msg string) string { return fmt.Sprintf("build %d: %s", n, msg) }
	commit := func(n int, msg string) {
		if static {
			os.MkdirAll(repo+"/public", 0o755)
			write(b, repo, "public/index.html", page(n, msg)+"\n")
		} else {
			write(b, repo, "message.txt", msg)
		}
		git("add", ".")
		git("commit", "-q", "-m", msg)
	}
	if static {
		write(b, repo, "plinth.toml", "app = \"static\"\n[build]\nbase = \"busybox:base\"\n")
	} else {
		write(b, repo, "plinth.toml", plinthTOML)
		write(b, repo, "build.sh", buildSh)
	}
	commit(1, "round 0")
	gitCLI(b, p, repo, "git", "remote", "-a", app)
	git("push", "plinth", "main")
	if out, err := p.CLI(testwait.Ctx(b, 30*time.Second), "routes", "add", "http", domain, "--service", app); err != nil {
		b.Fatal(err, out)
	}
	waitPage(b, p, domain, page(1, "round 0"))

	const rounds = 5
	var plinth, floor []time.Duration
	phases := map[string][]time.Duration{}
	for round := 1; round <= rounds; round++ {
		msg := fmt.Sprintf("round %d", round)
		commit(2*round, msg)
		// Served is when every router serves the new page, which may be
		// before git push returns (the builder then saves the
		// repository to the registry and says so).
		start := time.Now()
		served := make(chan time.Duration, 1)
		go func() {
			waitPage(b, p, domain, page(2*round, msg))
			served <- time.Since(start)
		}()
		for phase, at := range timedPush(b, p, repo) {
			phases[phase] = append(phases[phase], at.Sub(start))
		}
		phases["git push returned"] = append(phases["git push returned"], time.Since(start))
		plinth = append(plinth, <-served)

		// The floor: the same page, made here, released by hand.
		want := page(2*round+1, msg)
		start = time.Now()
		handRelease(b, p, app, repo, want+"\n")
		waitPage(b, p, domain, want)
		floor = append(floor, time.Since(start))
		// The next push's build numbers on from the cache's count.
		bumpCache(b, p, app)
	}
	med := func(d []time.Duration) time.Duration {
		s := slices.Clone(d)
		slices.Sort(s)
		return s[len(s)/2]
	}
	ratio := float64(med(plinth)) / float64(med(floor))
	b.ReportMetric(ratio, app+"-ratio")
	b.Logf("%s: push → served: plinth %v, floor (image by hand, release by API) %v: %.3fs vs %.3fs, ratio %.2f",
		app, plinth, floor, med(plinth).Seconds(), med(floor).Seconds(), ratio)
	for _, phase := range slices.Sorted(maps.Keys(phases)) {
		b.Logf("  %-20s at %v (median of %d)", phase, med(phases[phase]).Round(10*time.Millisecond), len(phases[phase]))
	}
}

// timedPush pushes and returns when each step line of the push's output
// came.
func timedPush(b *testing.B, p *platformtest.Platform, repo string) map[string]time.Time {
	b.Helper()
	cmd := p.Seg.Command(p.Client, "git", "-C", repo, "push", "--progress", "plinth", "main")
	cmd.Env = gitEnv(repo)
	r, w := io.Pipe()
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	go func() { w.CloseWithError(cmd.Wait()) }()
	steps := map[string]string{
		"running ":           "build job started",
		"build command done": "build command done",
		"-----> built ":      "image pushed",
		"-----> release v":   "release made",
		"deploy done":        "deploy done",
	}
	at := map[string]time.Time{}
	var out strings.Builder
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		out.WriteString(line + "\n")
		for k, name := range steps {
			if _, seen := at[name]; !seen && strings.Contains(line, k) {
				at[name] = time.Now()
			}
		}
	}
	if err := sc.Err(); err != nil {
		b.Fatalf("git push: %v\n%s", err, out.String())
	}
	return at
}

// handRelease makes the release image here (the tree with the page the
// build would write, on the base), pushes it and deploys it through the
// controller's API.
func handRelease(b *testing.B, p *platformtest.Platform, app, repo, page string) {
	b.Helper()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig, tr.DialContext = p.Creds.TLS(), p.Seg.DialContext(p.Client)
	opts := []remote.Option{remote.WithTransport(imagestore.HTTPSOnly(tr)), remote.WithContext(testwait.Ctx(b, time.Minute))}
	reg := fmt.Sprintf("%s:%d/", p.Hosts[0].NS.Addr, controller.RegistryPort)
	baseRef, _ := name.ParseReference(reg + "busybox:base")
	base, err := remote.Image(baseRef, opts...)
	if err != nil {
		b.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	entries, _ := os.ReadDir(repo)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "app/", Mode: 0o755})
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "app/public/", Mode: 0o755})
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "app/public/index.html", Mode: 0o644, Size: int64(len(page))})
	tw.Write([]byte(page))
	for _, e := range entries {
		if e.IsDir() || e.Name() == "public" {
			continue
		}
		data, _ := os.ReadFile(repo + "/" + e.Name())
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "app/" + e.Name(), Mode: 0o644, Size: int64(len(data))})
		tw.Write(data)
	}
	tw.Close()
	data := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		b.Fatal(err)
	}
	img, err := mutate.AppendLayers(base, layer)
	if err != nil {
		b.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cfg := cf.Config
	cfg.WorkingDir = "/app"
	if img, err = mutate.Config(img, cfg); err != nil {
		b.Fatal(err)
	}
	d, _ := img.Digest()
	ref, _ := name.NewDigest(reg + app + "@" + d.String())
	if err := remote.Write(ref, img, opts...); err != nil {
		b.Fatal(err)
	}
	c := p.Controllers()
	res, err := c.NewRelease(testwait.Ctx(b, 30*time.Second), app, controller.ReleaseRequest{Image: app + "@" + d.String(), Deploy: true})
	if err != nil {
		b.Fatal(err)
	}
	testwait.For(b, "the hand-made release's deploy", 2*time.Minute, func() error {
		dep, _, err := c.Deploy(testwait.Ctx(b, 10*time.Second), res.Deploy.ID, controller.QueryOptions{Consistent: true})
		if err != nil {
			return err
		}
		if dep.State != controller.DeployDone {
			return fmt.Errorf("deploy %s", dep.State)
		}
		return nil
	})
}

// bumpCache counts the hand-made release in the build cache, as a build
// would have: the next push's page says the number it expects.
func bumpCache(b *testing.B, p *platformtest.Platform, app string) {
	b.Helper()
	for _, h := range p.Hosts {
		path := h.Dir + "/volumes/var/lib/plinth/build-cache/" + app + "/count"
		data, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		var n int
		fmt.Sscan(string(data), &n)
		os.WriteFile(path, []byte(fmt.Sprintf("%d\n", n+1)), 0o644)
	}
}
