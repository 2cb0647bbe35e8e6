package builder

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/format/pktline"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp/capability"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp/sideband"
	"github.com/go-git/go-git/v5/plumbing/storer"
	"github.com/go-git/go-git/v5/plumbing/transport"
	"github.com/go-git/go-git/v5/plumbing/transport/server"
)

// git's smart HTTP protocol (gitprotocol-http), on go-git's encoders and
// decoders: GET /<app>.git/info/refs, POST /<app>.git/git-upload-pack
// (clone, fetch) and POST /<app>.git/git-receive-pack (push). The push
// side is ours, because a push here is a build: its output goes back on
// git's progress band as it runs, and the branch moves only once the
// build serves.

const (
	uploadPack  = "git-upload-pack"
	receivePack = "git-receive-pack"
)

// splitGitPath reads "/<app>.git/<rest>" (".git" optional).
func splitGitPath(p string) (app, rest string, ok bool) {
	p = strings.TrimPrefix(p, "/")
	app, rest, ok = strings.Cut(p, "/")
	app = strings.TrimSuffix(app, ".git")
	return app, rest, ok && app != ""
}

// serveGit routes a git request for an app that exists.
func (b *Builder) serveGit(w http.ResponseWriter, r *http.Request, app, rest string) {
	switch {
	case r.Method == http.MethodGet && rest == "info/refs":
		b.serveRefs(w, r, app, r.URL.Query().Get("service"))
	case r.Method == http.MethodPost && rest == uploadPack:
		b.serveUploadPack(w, r, app)
	case r.Method == http.MethodPost && rest == receivePack:
		b.serveReceivePack(w, r, app)
	default:
		http.Error(w, "not a git smart HTTP request: use git clone or git push with this URL", http.StatusNotFound)
	}
}

// serveRefs answers the advertisement that starts a fetch or a push.
func (b *Builder) serveRefs(w http.ResponseWriter, r *http.Request, app, service string) {
	if service != uploadPack && service != receivePack {
		http.Error(w, "dumb HTTP is not served: use a git client of 1.6.6 or later (smart HTTP)", http.StatusForbidden)
		return
	}
	// A push is refused at once while another holds the app; a fetch
	// waits for it.
	open := b.repos.open
	if service == receivePack {
		open = b.repos.tryOpen
	}
	repo, err := open(r.Context(), app)
	if err != nil {
		b.gitError(w, app, err)
		return
	}
	defer repo.unlock()
	var ar *packp.AdvRefs
	if service == uploadPack {
		sess, err := uploadSession(repo.storer)
		if err == nil {
			ar, err = sess.AdvertisedReferencesContext(r.Context())
		}
		if errors.Is(err, transport.ErrEmptyRemoteRepository) {
			ar, err = packp.NewAdvRefs(), nil
		}
		if err != nil {
			b.gitError(w, app, err)
			return
		}
	} else {
		ar, err = receiveAdvertisement(repo.storer)
		if err != nil {
			b.gitError(w, app, err)
			return
		}
	}
	ar.Prefix = [][]byte{[]byte("# service=" + service), pktline.Flush}
	w.Header().Set("Content-Type", "application/x-"+service+"-advertisement")
	w.Header().Set("Cache-Control", "no-cache")
	if err := ar.Encode(w); err != nil {
		b.log.Warn("git: advertise", "app", app, "err", err)
	}
}

// receiveAdvertisement lists a repository's branches and tags with what
// the receive side can do.
func receiveAdvertisement(s storer.Storer) (*packp.AdvRefs, error) {
	ar := packp.NewAdvRefs()
	for _, c := range []capability.Capability{capability.ReportStatus, capability.DeleteRefs, capability.Sideband64k, capability.OFSDelta, capability.Quiet} {
		if err := ar.Capabilities.Set(c); err != nil {
			return nil, err
		}
	}
	if err := ar.Capabilities.Set(capability.Agent, "plinth"); err != nil {
		return nil, err
	}
	refs, err := s.IterReferences()
	if err != nil {
		return nil, err
	}
	err = refs.ForEach(func(ref *plumbing.Reference) error {
		if ref.Type() == plumbing.HashReference {
			ar.References[ref.Name().String()] = ref.Hash()
		}
		return nil
	})
	return ar, err
}

// uploadSession is go-git's upload side over one repository.
func uploadSession(s storer.Storer) (transport.UploadPackSession, error) {
	ep, err := transport.NewEndpoint("/repo")
	if err != nil {
		return nil, err
	}
	return server.NewServer(server.MapLoader{ep.String(): s}).NewUploadPackSession(ep, nil)
}

// serveUploadPack sends what a clone or fetch wants.
func (b *Builder) serveUploadPack(w http.ResponseWriter, r *http.Request, app string) {
	body, err := requestBody(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	req := packp.NewUploadPackRequest()
	if err := req.Decode(io.LimitReader(body, 16<<20)); err != nil {
		http.Error(w, "git-upload-pack request: "+err.Error(), http.StatusBadRequest)
		return
	}
	repo, err := b.repos.open(r.Context(), app)
	if err != nil {
		b.gitError(w, app, err)
		return
	}
	defer repo.unlock()
	sess, err := uploadSession(repo.storer)
	if err != nil {
		b.gitError(w, app, err)
		return
	}
	resp, err := sess.UploadPack(r.Context(), req)
	if err != nil {
		b.gitError(w, app, err)
		return
	}
	defer resp.Close()
	w.Header().Set("Content-Type", "application/x-git-upload-pack-result")
	if err := resp.Encode(w); err != nil {
		b.log.Warn("git: upload-pack", "app", app, "err", err)
	}
}

// requestBody is r's body, gunzipped when git compressed it.
func requestBody(r *http.Request) (io.Reader, error) {
	if r.Header.Get("Content-Encoding") != "gzip" {
		return r.Body, nil
	}
	zr, err := gzip.NewReader(r.Body)
	if err != nil {
		return nil, fmt.Errorf("gzip request body: %w", err)
	}
	return zr, nil
}

// gitError answers a request that could not be served.
func (b *Builder) gitError(w http.ResponseWriter, app string, err error) {
	status := http.StatusInternalServerError
	var ue *userError
	if errors.As(err, &ue) {
		status = ue.status
	} else {
		b.log.Warn("git", "app", app, "err", err)
	}
	http.Error(w, err.Error(), status)
}

// userError is a refusal said to the git client, with its HTTP status.
type userError struct {
	status int
	msg    string
}

func (e *userError) Error() string { return e.msg }

func refuse(status int, format string, args ...any) error {
	return &userError{status, fmt.Sprintf(format, args...)}
}

// progress is git's progress band of a receive-pack response: each line
// shows as "remote: <line>" at the client as soon as it is written. A
// client that asked for no side band sees nothing until the end.
type progress struct {
	mu    sync.Mutex
	mux   *sideband.Muxer
	flush func()
	err   error
	// tee gets every line too (the build's log).
	tee func(string)
}

// setTee makes tee get every line said from now on (nil: none).
func (p *progress) setTee(tee func(string)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tee = tee
}

func (p *progress) say(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tee != nil {
		p.tee(line)
	}
	if p.mux == nil || p.err != nil {
		return
	}
	if _, p.err = p.mux.WriteChannel(sideband.ProgressMessage, []byte(line+"\n")); p.err == nil {
		p.flush()
	}
}

// report ends a receive-pack response with the status of each ref.
func (p *progress) report(w io.Writer, rs *packp.ReportStatus) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mux == nil {
		return rs.Encode(w)
	}
	var buf bytes.Buffer
	if err := rs.Encode(&buf); err != nil {
		return err
	}
	if _, err := p.mux.Write(buf.Bytes()); err != nil {
		return err
	}
	_, err := w.Write(pktline.FlushPkt)
	p.flush()
	return err
}

// serveReceivePack takes a push: the objects first, then each ref; the
// deploy branch moves only after its commit is built, released and
// deployed.
func (b *Builder) serveReceivePack(w http.ResponseWriter, r *http.Request, app string) {
	ctx := r.Context()
	body, err := requestBody(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	limit := b.maxPush(ctx)
	counted := &limitReader{r: body, left: limit}
	req := packp.NewReferenceUpdateRequest()
	if err := req.Decode(counted); err != nil {
		http.Error(w, "git-receive-pack request: "+err.Error(), http.StatusBadRequest)
		return
	}
	repo, err := b.repos.tryOpen(ctx, app)
	if err != nil {
		b.gitError(w, app, err)
		return
	}
	defer repo.unlock()

	w.Header().Set("Content-Type", "application/x-git-receive-pack-result")
	w.Header().Set("Cache-Control", "no-cache")
	flusher, _ := w.(http.Flusher)
	p := &progress{flush: func() {
		if flusher != nil {
			flusher.Flush()
		}
	}}
	if req.Capabilities.Supports(capability.Sideband64k) {
		p.mux = sideband.NewMuxer(sideband.Sideband64k, w)
	} else if req.Capabilities.Supports(capability.Sideband) {
		p.mux = sideband.NewMuxer(sideband.Sideband, w)
	}
	rs := packp.NewReportStatus()
	rs.UnpackStatus = "ok"
	var pack *bufio.Reader
	if req.Packfile != nil {
		defer req.Packfile.Close()
		// A push that only deletes refs sends no pack at all.
		pack = bufio.NewReader(req.Packfile)
		if _, err := pack.Peek(1); err != nil {
			pack = nil
		}
	}
	if pack != nil {
		err := repo.receive(ctx, pack, counted, limit)
		if err != nil {
			rs.UnpackStatus = err.Error()
			for _, c := range req.Commands {
				rs.CommandStatuses = append(rs.CommandStatuses, &packp.CommandStatus{ReferenceName: c.Name, Status: "unpacker error"})
			}
			p.say("push refused: %v", err)
			p.report(w, rs)
			return
		}
	}
	for _, c := range req.Commands {
		status := "ok"
		if err := b.update(ctx, repo, c, p); err != nil {
			status = err.Error()
		}
		rs.CommandStatuses = append(rs.CommandStatuses, &packp.CommandStatus{ReferenceName: c.Name, Status: status})
	}
	// Saved whether or not the client is still there: the branch may
	// have moved.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
	defer cancel()
	if err := repo.save(sctx); err != nil {
		b.log.Warn("git: save repository", "app", app, "err", err)
		p.say("warning: the repository was not saved to the registry (%v); the next push sends what is missing", err)
	}
	if err := p.report(w, rs); err != nil {
		b.log.Debug("git: report", "app", app, "err", err)
	}
}

// update applies one ref command of a push: a push to the deploy branch
// builds and deploys its commit first.
func (b *Builder) update(ctx context.Context, repo *repo, c *packp.Command, p *progress) error {
	name := c.Name
	if !strings.HasPrefix(name.String(), "refs/heads/") && !strings.HasPrefix(name.String(), "refs/tags/") {
		return fmt.Errorf("only branches and tags are taken")
	}
	cur, err := repo.ref(name)
	if err != nil {
		return err
	}
	if cur != c.Old {
		return fmt.Errorf("stale: %s is at %.12s here; fetch and push again", name.Short(), cur)
	}
	if c.Action() == packp.Delete {
		if isDeployBranch(name) {
			return fmt.Errorf("the deploy branch cannot be deleted")
		}
		return repo.setRef(name, plumbing.ZeroHash)
	}
	if strings.HasPrefix(name.String(), "refs/tags/") {
		if !repo.hasObject(c.New) {
			return fmt.Errorf("%.12s is not an object this push sent", c.New)
		}
		return repo.setRef(name, c.New)
	}
	if !repo.hasCommit(c.New) {
		return fmt.Errorf("%.12s is not a commit this push sent", c.New)
	}
	if c.Action() == packp.Update && !repo.isAncestor(c.Old, c.New) {
		p.say("note: forced push: %s's history is rewritten (%.12s is not in %.12s's); allowed", name.Short(), c.Old, c.New)
	}
	if isDeployBranch(name) {
		if err := b.build(ctx, repo, name, c.New, p); err != nil {
			return err
		}
	} else if strings.HasPrefix(name.String(), "refs/heads/") {
		p.say("branch %s stored; only a push to main or master builds and deploys", name.Short())
	}
	return repo.setRef(name, c.New)
}

func isDeployBranch(n plumbing.ReferenceName) bool {
	return n == "refs/heads/main" || n == "refs/heads/master"
}

// limitReader fails a push that sends more than left bytes.
type limitReader struct {
	r    io.Reader
	left int64
	over bool
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.left <= 0 {
		l.over = true
		return 0, errTooLarge
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	return n, err
}

var errTooLarge = errors.New("push too large")
