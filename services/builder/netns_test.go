package builder_test

import (
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/plinth-os/plinth/host/imagestore"
	"github.com/plinth-os/plinth/internal/platformtest"
	"github.com/plinth-os/plinth/internal/testwait"
	"github.com/plinth-os/plinth/services/builder"
	"github.com/plinth-os/plinth/services/controller"
)

func TestMain(m *testing.M) { platformtest.Main(m) }

// The app: busybox's httpd serves public/, which the build writes from
// message.txt and a counter it keeps in the build cache.
const (
	plinthTOML = `app = "site"
[build]
base = "busybox:base"
command = "sh build.sh"
timeout = "2m"
`
	procfile = "web: busybox httpd -f -p $PORT -h /app/public\n"
	buildSh  = `set -e
n=$(cat /cache/count 2>/dev/null || echo 0)
echo "the cache says $n builds before this one"
n=$((n+1))
echo $n > /cache/count
mkdir -p public
echo "build $n: $(cat message.txt)" > public/index.html
`
)

// TestGitPushBuildsAndDeploys pushes an app with the system git client
// through a router: it is built on a busybox base with its build step,
// deployed and served; a second push reuses the build cache; a failing
// build, a timeout, a push without credentials, a push too large and a
// tree without [build] are refused with the old release serving.
func TestGitPushBuildsAndDeploys(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Fatal("git is not installed: run scripts/deps.sh")
	}
	p := platformtest.New(t, "plbu", "10.71.0", 3, platformtest.WithContainerNetwork())
	p.Bootstrap(3 * time.Minute)
	cli := func(timeout time.Duration, args ...string) string {
		t.Helper()
		out, err := p.CLI(testwait.Ctx(t, timeout), args...)
		if err != nil {
			t.Fatalf("plinth %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	pushBase(t, p)
	cli(30*time.Second, "apps", "create", "site")

	repo := t.TempDir()
	git := gitIn(t, p, repo)
	git("init", "-q", "-b", "main")
	write(t, repo, "plinth.toml", plinthTOML)
	write(t, repo, "Procfile", procfile)
	write(t, repo, "build.sh", buildSh)
	write(t, repo, "message.txt", "hello")
	git("add", ".")
	git("commit", "-q", "-m", "first")

	// Without credentials: refused, nothing stored.
	git("remote", "add", "anon", fmt.Sprintf("https://%s:%d/site.git", builder.ServerName, builder.GitPort))
	out, err := gitErr(t, p, repo, "-c", "http.sslVerify=false", "-c", resolve(p), "push", "anon", "main")
	if err == nil || !strings.Contains(out, "401") && !strings.Contains(out, "Authentication failed") && !strings.Contains(out, "could not read Username") {
		t.Fatalf("a push without credentials: %v\n%s", err, out)
	}
	c := p.Controllers()
	if builds, _, _ := c.Builds(testwait.Ctx(t, 10*time.Second), controller.QueryOptions{Consistent: true}); len(builds) != 0 {
		t.Fatalf("a refused push started builds: %+v", builds)
	}

	// The token, as git's extra header.
	token := strings.TrimSpace(cli(30*time.Second, "registry", "token"))
	gitCLI(t, p, repo, "git", "remote", "-a", "site", "--token", token)
	start := time.Now()
	out = git("push", "plinth", "main")
	t.Logf("first push: built and deployed in %.1fs", time.Since(start).Seconds())
	for _, want := range []string{"remote: -----> build 1 of site", "the cache says 0 builds", "release v1", "v1 of site serves (no route yet"} {
		if !strings.Contains(out, want) {
			t.Fatalf("push output lacks %q:\n%s", want, out)
		}
	}
	cli(30*time.Second, "routes", "add", "http", "site.test", "--service", "site")
	waitBody(t, p, "build 1: hello")

	// Again, with the client certificate: the cache holds the count.
	gitCLI(t, p, repo, "git", "remote", "-a", "site")
	write(t, repo, "message.txt", "world")
	git("commit", "-q", "-am", "second")
	out = git("push", "plinth", "main")
	if !strings.Contains(out, "the cache says 1 builds") || !strings.Contains(out, "release v2") || !strings.Contains(out, "v2 of site serves at http://site.test") {
		t.Fatalf("second push:\n%s", out)
	}
	waitBody(t, p, "build 2: world")

	// A failing build: refused, v2 serves, the branch stays.
	write(t, repo, "build.sh", "echo compiling; exit 3\n")
	git("commit", "-q", "-am", "broken")
	out, err = gitErr(t, p, repo, "push", "plinth", "main")
	if err == nil || !strings.Contains(out, "the build command exited 3") || !strings.Contains(out, "compiling") {
		t.Fatalf("a failing build: %v\n%s", err, out)
	}
	waitBody(t, p, "build 2: world")
	if remote := strings.Fields(git("ls-remote", "plinth", "refs/heads/main")); len(remote) == 0 || remote[0] != strings.TrimSpace(git("rev-parse", "HEAD~1")) {
		t.Fatalf("after a failed build the branch is at %v, want the second commit", remote)
	}

	// A forced push that drops the broken commit: allowed, said so;
	// but a build that outlives its timeout is refused.
	git("reset", "-q", "--hard", "HEAD~1")
	write(t, repo, "plinth.toml", strings.Replace(plinthTOML, `"2m"`, `"2s"`, 1))
	write(t, repo, "build.sh", "sleep 60\n")
	git("commit", "-q", "-am", "slow")
	out, err = gitErr(t, p, repo, "push", "--force", "plinth", "main")
	if err == nil || !strings.Contains(out, "did not end within 2s") {
		t.Fatalf("a build over its timeout: %v\n%s", err, out)
	}

	// A push whose client goes away cancels its build.
	write(t, repo, "plinth.toml", plinthTOML)
	write(t, repo, "build.sh", "echo started; sleep 60\n")
	git("commit", "-q", "-am", "abandoned")
	canceledPush(t, p, repo)

	// No [build]: a clear message.
	git("reset", "-q", "--hard", "HEAD~1")
	write(t, repo, "plinth.toml", "app = \"site\"\n")
	git("commit", "-q", "-am", "no build")
	out, err = gitErr(t, p, repo, "push", "plinth", "main")
	if err == nil || !strings.Contains(out, "plinth.toml has no [build]") {
		t.Fatalf("a tree without [build]: %v\n%s", err, out)
	}
	git("reset", "-q", "--hard", "HEAD~1")

	// Too large: refused with the limit, nothing kept.
	cli(30*time.Second, "settings", "set", builder.MaxPushSetting, "200000")
	big := make([]byte, 400000)
	rand.Read(big)
	write(t, repo, "big.bin", string(big))
	git("add", "big.bin")
	git("commit", "-q", "-m", "big")
	out, err = gitErr(t, p, repo, "push", "plinth", "main")
	if err == nil || !strings.Contains(out, "the push is over 200000 bytes (setting builder.max_push_bytes)") {
		t.Fatalf("a push over the limit: %v\n%s", err, out)
	}
	waitBody(t, p, "build 2: world")
	git("reset", "-q", "--hard", "HEAD~1")
	cli(30*time.Second, "settings", "unset", builder.MaxPushSetting)

	// A first push without process types.
	cli(30*time.Second, "apps", "create", "bare")
	bare := t.TempDir()
	gitIn(t, p, bare)("init", "-q", "-b", "main")
	write(t, bare, "plinth.toml", "app = \"bare\"\n[build]\nbase = \"busybox:base\"\n")
	gitIn(t, p, bare)("add", ".")
	gitIn(t, p, bare)("commit", "-q", "-m", "no processes")
	gitCLI(t, p, bare, "git", "remote", "-a", "bare")
	if out, err := gitErr(t, p, bare, "push", "plinth", "main"); err == nil || !strings.Contains(out, "no process types: add a Procfile") {
		t.Fatalf("a first push without process types: %v\n%s", err, out)
	}

	// Unknown app.
	git("remote", "add", "nope", fmt.Sprintf("https://%s:%d/nope.git", builder.ServerName, builder.GitPort))
	if out, err := gitErr(t, p, repo, "push", "nope", "main"); err == nil || !strings.Contains(out, "not found") && !strings.Contains(out, "no app nope") {
		t.Fatalf("a push to an unknown app: %v\n%s", err, out)
	}

	// An annotated tag and a branch are stored without a build; pushes
	// that only delete them carry no pack.
	git("tag", "-a", "v1", "-m", "the first")
	git("push", "plinth", "v1", "main:refs/heads/topic")
	if out := git("ls-remote", "plinth"); !strings.Contains(out, "refs/tags/v1") || !strings.Contains(out, "refs/heads/topic") {
		t.Fatalf("after pushing a tag and a branch:\n%s", out)
	}
	git("push", "plinth", ":refs/tags/v1", ":refs/heads/topic")
	if out := git("ls-remote", "plinth"); strings.Contains(out, "refs/tags/v1") || strings.Contains(out, "topic") {
		t.Fatalf("after deleting them:\n%s", out)
	}

	// The builds, as plinth builds lists them.
	out = cli(30*time.Second, "builds", "-a", "site")
	for _, want := range []string{"succeeded", "failed", "v2"} {
		if !strings.Contains(out, want) {
			t.Fatalf("plinth builds lacks %q:\n%s", want, out)
		}
	}
	if out := cli(30*time.Second, "builds", "-a", "site", "2"); !strings.Contains(out, "the cache says 1 builds") {
		t.Fatalf("plinth builds -a site 2:\n%s", out)
	}

	// Another repository fetches the pushed history back.
	clone := t.TempDir()
	gitIn(t, p, clone)("init", "-q", "-b", "main")
	gitCLI(t, p, clone, "git", "remote", "-a", "site")
	gitIn(t, p, clone)("pull", "-q", "plinth", "main")
	if got, _ := os.ReadFile(filepath.Join(clone, "message.txt")); string(got) != "world" {
		t.Fatalf("the fetched message.txt: %q", got)
	}
}

// canceledPush starts a push whose build sleeps, kills the git client
// once the build runs, and waits for the build to end failed, canceled.
func canceledPush(t *testing.T, p *platformtest.Platform, repo string) {
	t.Helper()
	cmd := p.Seg.Command(p.Client, "git", "-C", repo, "push", "--force", "plinth", "main")
	cmd.Env = gitEnv(repo)
	// Its own process group, killed whole as Ctrl-C would: git push runs
	// helpers that hold the connection.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	c := p.Controllers()
	var running controller.Build
	testwait.For(t, "the build to run", time.Minute, func() error {
		builds, _, err := c.Builds(testwait.Ctx(t, 10*time.Second), controller.QueryOptions{Consistent: true})
		if err != nil {
			return err
		}
		for _, b := range builds {
			if b.State == controller.BuildRunning && strings.Contains(out.String(), "started") {
				running = b
				return nil
			}
		}
		return fmt.Errorf("no running build that has started; push says:\n%s", out.String())
	})
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-done
	killed := time.Now()
	testwait.For(t, "the abandoned build to end", 30*time.Second, func() error {
		b, _, err := c.Build(testwait.Ctx(t, 10*time.Second), running.ID, controller.QueryOptions{Consistent: true})
		if err != nil {
			return err
		}
		if b.State != controller.BuildFailed || !strings.Contains(b.Reason, "canceled") {
			return fmt.Errorf("build %s is %s: %s", b.ID, b.State, b.Reason)
		}
		return nil
	})
	t.Logf("build canceled %.1fs after its git client was killed", time.Since(killed).Seconds())
}

// syncBuffer is output written by one goroutine and read by another.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// pushBase pushes a busybox image, the build's base, to the registry.
func pushBase(t testing.TB, p *platformtest.Platform) {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skip("needs busybox-static (scripts/deps.sh)")
	}
	archive := filepath.Join(t.TempDir(), "base.tar")
	f, err := os.Create(archive)
	if err != nil {
		t.Fatal(err)
	}
	files := []imagestore.File{
		{Name: "bin/", Mode: 0o755}, {Name: "tmp/", Mode: 0o1777},
		{Name: "bin/busybox", Data: bb, Mode: 0o755}, {Name: "bin/sh", Link: "busybox"},
	}
	if err := imagestore.WriteArchive(f, "busybox:base", files, imagestore.ImageConfig{Env: []string{"PATH=/bin"}}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	imgs, cleanup, err := imagestore.ReadArchive(archive, t.TempDir())
	defer cleanup()
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(fmt.Sprintf("%s:%d/busybox:base", p.Hosts[0].NS.Addr, controller.RegistryPort))
	if err != nil {
		t.Fatal(err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig, tr.DialContext = p.Creds.TLS(), p.Seg.DialContext(p.Client)
	if err := remote.Write(ref, imgs[0].Image, remote.WithTransport(imagestore.HTTPSOnly(tr)), remote.WithContext(testwait.Ctx(t, time.Minute))); err != nil {
		t.Fatal(err)
	}
}

func write(t testing.TB, dir, name, data string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// resolve maps the builder's name to the first host, for git -c.
func resolve(p *platformtest.Platform) string {
	return fmt.Sprintf("http.curloptResolve=%s:%d:%s", builder.ServerName, builder.GitPort, p.Hosts[0].NS.Addr)
}

// gitIn runs git in dir in the client namespace, failing the test when
// it fails.
func gitIn(t testing.TB, p *platformtest.Platform, dir string) func(args ...string) string {
	return func(args ...string) string {
		t.Helper()
		out, err := gitErr(t, p, dir, args...)
		if err != nil {
			t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
}

func gitErr(t testing.TB, p *platformtest.Platform, dir string, args ...string) (string, error) {
	t.Helper()
	cmd := p.Seg.Command(p.Client, "git", append([]string{"-C", dir}, args...)...)
	cmd.Env = gitEnv(dir)
	timer := time.AfterFunc(5*time.Minute, func() {
		if cmd.Process != nil {
			cmd.Process.Kill()
		}
	})
	defer timer.Stop()
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// gitEnv is git's environment for a test repository in dir.
func gitEnv(dir string) []string {
	// GIT_SSL_CAINFO (set on some machines) would win over the remote's
	// http.sslCAInfo.
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "GIT_SSL_CAINFO=") })
	return append(env, "HOME="+dir, "GIT_TERMINAL_PROMPT=0",
		"GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@test", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@test")
}

// gitCLI runs a plinth command in the repository's directory.
func gitCLI(t testing.TB, p *platformtest.Platform, dir string, args ...string) {
	t.Helper()
	cmd := p.Seg.Command(p.Client, p.Bin, append(args, "--credentials", p.CredsFile, "--host", p.Hosts[0].NS.Addr)...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("plinth %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// waitBody waits until site.test's page through every router is want.
func waitBody(t testing.TB, p *platformtest.Platform, want string) {
	t.Helper()
	waitPage(t, p, "site.test", want)
}

// waitPage waits until domain's index.html through every router is want.
func waitPage(t testing.TB, p *platformtest.Platform, domain, want string) {
	t.Helper()
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: p.Seg.DialContext(p.Client), DisableKeepAlives: true}}
	deadline := time.Now().Add(time.Minute)
	for _, h := range p.Hosts {
		var last string
		for {
			req, _ := http.NewRequest(http.MethodGet, "http://"+h.NS.Addr+"/index.html", nil)
			req.Host = domain
			resp, err := hc.Do(req)
			if err == nil {
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				last = fmt.Sprintf("%s %q", resp.Status, body)
				if strings.TrimSpace(string(body)) == want {
					break
				}
			} else {
				last = err.Error()
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s through %s: %s, want %q", domain, h.NS.Name, last, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}
