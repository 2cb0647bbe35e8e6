package controller

import (
	"cmp"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	memdb "github.com/hashicorp/go-memdb"

	"github.com/plinth-os/plinth/host/job"
)

// App is a user's application: its releases are numbered from 1, one of
// them serves (Release), and Scale says how many instances of each of
// its process types run. The deployer makes the formations that run
// them; the API's writers own Scale and Strategy only.
type App struct {
	// Name is a DNS label of at most MaxAppName characters: it names
	// the app's web service, its formations and its registry repository.
	Name string `json:"name"`
	// Release is the serving release's number; 0 until a deploy ends.
	Release int `json:"release"`
	// LastRelease is the highest release number made.
	LastRelease int `json:"last_release"`
	// Scale is how many instances of each process type to run. A type
	// not named runs DefaultScale of them.
	Scale map[string]int `json:"scale,omitempty"`
	// Strategy is the deploys' default: StrategyRolling (the default)
	// or StrategyAllAtOnce.
	Strategy string `json:"strategy,omitempty"`
	// Created is when the app was made.
	Created time.Time `json:"created,omitzero"`
	Meta
}

func (a *App) key() string { return a.Name }

// Deploy strategies.
const (
	StrategyRolling   = "rolling"
	StrategyAllAtOnce = "all-at-once"
)

// Limits of apps and their releases.
const (
	MaxAppName     = 30
	maxProcessName = 12
	maxProcesses   = 16
	maxScale       = 100
	maxConfigVars  = 200
	maxConfigValue = 32 << 10
)

// DefaultScale is how many instances of a process type run when the app
// says nothing: one web (Heroku's idiom), none of the others.
func DefaultScale(typ string) int {
	if typ == WebProcess {
		return 1
	}
	return 0
}

// WebProcess is the process type whose service is named after the app:
// the one HTTP routes usually point at.
const WebProcess = "web"

// ScaleOf is how many instances of typ the app asks for.
func (a *App) ScaleOf(typ string) int {
	if n, ok := a.Scale[typ]; ok {
		return n
	}
	return DefaultScale(typ)
}

var processName = regexp.MustCompile(`^[a-z][a-z0-9-]*$`)

// CheckProcessName reports a process type name that cannot name a
// formation and a service.
func CheckProcessName(typ string) error {
	if len(typ) > maxProcessName || !processName.MatchString(typ) || strings.HasSuffix(typ, "-") {
		return fmt.Errorf("process type %q: use 1 to %d of a-z, 0-9 and '-', starting with a letter", typ, maxProcessName)
	}
	return nil
}

func checkApp(o object) error {
	a := o.(*App)
	if len(a.Name) > MaxAppName || !isDNSLabel(a.Name) {
		return fmt.Errorf("%w: app name %q: use 1 to %d of a-z, 0-9 and '-', starting and ending with a letter or digit", ErrInvalid, a.Name, MaxAppName)
	}
	switch a.Strategy {
	case "", StrategyRolling, StrategyAllAtOnce:
	default:
		return fmt.Errorf("%w: app %s: strategy %q: use %s or %s", ErrInvalid, a.Name, a.Strategy, StrategyRolling, StrategyAllAtOnce)
	}
	for typ, n := range a.Scale {
		if err := CheckProcessName(typ); err != nil {
			return fmt.Errorf("%w: app %s: scale: %v", ErrInvalid, a.Name, err)
		}
		if n < 0 || n > maxScale {
			return fmt.Errorf("%w: app %s: scale %s=%d: give 0 to %d", ErrInvalid, a.Name, typ, n, maxScale)
		}
	}
	return nil
}

// keepApp carries what the platform owns of an app over an API write:
// its release numbers and creation time.
func keepApp(old, obj object) {
	o, a := old.(*App), obj.(*App)
	a.Release, a.LastRelease, a.Created = o.Release, o.LastRelease, o.Created
}

// admitApp dates a new app.
func admitApp(_ *memdb.Txn, _ uint64, t time.Time, o object) error {
	a := o.(*App)
	if a.Created.IsZero() {
		a.Created = t
	}
	return nil
}

// Release is one immutable, numbered version of an app: an image and
// the configuration it runs with. Every deploy, configuration change and
// rollback makes a new one.
type Release struct {
	// ID is "<app>/v<version>".
	ID      string `json:"id"`
	App     string `json:"app"`
	Version int    `json:"version"`
	// Image is the image in the cluster's registry, "<repo>@sha256:<hex>".
	Image string `json:"image"`
	// Config is the environment every process of the release gets.
	Config map[string]string `json:"config,omitempty"`
	// Processes are the release's process types.
	Processes map[string]Process `json:"processes"`
	// ReleaseCommand, when set, runs once before any instance of the
	// release starts (a migration); the deploy stops if it fails.
	ReleaseCommand []string `json:"release_command,omitempty"`
	// Description says what made it ("deploy sha256:…", "set FOO",
	// "rollback to v3").
	Description string    `json:"description"`
	Created     time.Time `json:"created,omitzero"`
	Meta
}

func (r *Release) key() string { return r.ID }

// ReleaseID names release version of app.
func ReleaseID(app string, version int) string { return app + "/v" + strconv.Itoa(version) }

// Process is one process type of a release.
type Process struct {
	// Cmd is what the process runs; empty, the image's entrypoint and
	// command.
	Cmd []string `json:"cmd,omitempty"`
	// Port, when set, is where the process listens (it gets it as
	// $PORT): each instance is then an instance of the type's service,
	// which routes send traffic to.
	Port  int    `json:"port,omitempty"`
	Proto string `json:"proto,omitempty"` // tcp (default) or udp
	// Check is the instances' health check; nil with a TCP port checks
	// that the port accepts connections.
	Check *job.Check `json:"check,omitempty"`
	// Resources limit each instance.
	Resources job.Resources `json:"resources,omitzero"`
}

// ServiceName is the discovery service of typ's instances: the app's
// name for web, "<app>-<type>" for the others.
func ServiceName(app, typ string) string {
	if typ == WebProcess {
		return app
	}
	return app + "-" + typ
}

// HealthCheck is p's health check with its defaults: a TCP port's
// connection when none is given, nil for a UDP port or none.
func (p Process) HealthCheck() *job.Check {
	if p.Check != nil {
		c := p.Check.WithDefaults()
		return &c
	}
	if p.Port == 0 || p.Proto == "udp" {
		return nil
	}
	c := job.Check{Type: job.CheckTCP}.WithDefaults()
	return &c
}

func checkRelease(r *Release) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: release of %s: %s", ErrInvalid, r.App, fmt.Sprintf(format, args...))
	}
	if r.Image == "" {
		return bad("no image: deploy one first (plinth deploy -a %s --image FILE|REF)", r.App)
	}
	repo, digest, ok := strings.Cut(r.Image, "@")
	if !ok || !validRepo(repo) || !validDigest(digest) {
		return bad("image %q: want <repository>@sha256:<64 hex digits>", r.Image)
	}
	if len(r.Processes) == 0 {
		return bad("no process types: name one in a Procfile or plinth.toml, or give the image an entrypoint")
	}
	if len(r.Processes) > maxProcesses {
		return bad("%d process types: at most %d", len(r.Processes), maxProcesses)
	}
	for typ, p := range r.Processes {
		if err := CheckProcessName(typ); err != nil {
			return bad("%v", err)
		}
		s := job.Service{Name: ServiceName(r.App, typ), Port: p.Port, Proto: p.Proto, Check: p.Check}
		if p.Port != 0 {
			if err := job.CheckServices([]job.Service{s}, job.NetworkBridge); err != nil {
				return bad("process %s: %v", typ, err)
			}
		} else if p.Check != nil {
			return bad("process %s: a health check needs a port", typ)
		}
		if p.Resources.MemoryBytes < 0 || p.Resources.CPUQuota < 0 || p.Resources.Pids < 0 {
			return bad("process %s: resources cannot be negative", typ)
		}
	}
	if len(r.Config) > maxConfigVars {
		return bad("%d config vars: at most %d", len(r.Config), maxConfigVars)
	}
	for k, v := range r.Config {
		if err := CheckConfigVar(k, v); err != nil {
			return bad("%v", err)
		}
	}
	return nil
}

var configName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// CheckConfigVar reports a config var the processes could not get as an
// environment variable.
func CheckConfigVar(k, v string) error {
	switch {
	case !configName.MatchString(k):
		return fmt.Errorf("config var %q: names are letters, digits and '_', not starting with a digit", k)
	case strings.HasPrefix(k, "PLINTH_") || k == "PORT":
		return fmt.Errorf("config var %s: PORT and PLINTH_* are set by the platform", k)
	case len(v) > maxConfigValue:
		return fmt.Errorf("config var %s: %d bytes, at most %d", k, len(v), maxConfigValue)
	case strings.ContainsRune(v, 0):
		return fmt.Errorf("config var %s: the value holds a NUL byte", k)
	}
	return nil
}

var (
	repoName   = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$`)
	digestName = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
)

func validRepo(s string) bool   { return len(s) <= 255 && repoName.MatchString(s) }
func validDigest(s string) bool { return digestName.MatchString(s) }

// ReleaseRequest asks for a new release of an app: the serving one (or,
// before any deploy, the last one made), or From, with the changes
// given; Deploy also starts its deploy, in the same write.
type ReleaseRequest struct {
	// From is the release to start from; 0: the serving one. A rollback
	// names the old release and changes nothing.
	From int `json:"from,omitempty"`
	// Image, Processes and ReleaseCommand replace the base's when given.
	Image          string             `json:"image,omitempty"`
	Processes      map[string]Process `json:"processes,omitempty"`
	ReleaseCommand []string           `json:"release_command,omitempty"`
	// Set and Unset change config vars.
	Set   map[string]string `json:"set,omitempty"`
	Unset []string          `json:"unset,omitempty"`
	// ReplaceConfig replaces the base's config with Set.
	ReplaceConfig bool   `json:"replace_config,omitempty"`
	Description   string `json:"description,omitempty"`
	// Deploy starts the release's deploy; refused, with no release
	// made, while another deploy of the app runs.
	Deploy   bool   `json:"deploy,omitempty"`
	Strategy string `json:"strategy,omitempty"`
	// HealthTimeout bounds the wait for each batch of new instances to
	// be healthy; 0 is DefaultHealthTimeout.
	HealthTimeout job.Duration `json:"health_timeout,omitzero"`
}

// ReleaseResult is what a release request made.
type ReleaseResult struct {
	Release Release `json:"release"`
	Deploy  *Deploy `json:"deploy,omitempty"`
}

func checkReleaseRequest(q *ReleaseRequest) error {
	if q.From < 0 {
		return fmt.Errorf("%w: from %d: give a release number", ErrInvalid, q.From)
	}
	for k, v := range q.Set {
		if err := CheckConfigVar(k, v); err != nil {
			return fmt.Errorf("%w: %v", ErrInvalid, err)
		}
	}
	for _, k := range q.Unset {
		if _, ok := q.Set[k]; ok {
			return fmt.Errorf("%w: config var %s is both set and unset", ErrInvalid, k)
		}
	}
	switch q.Strategy {
	case "", StrategyRolling, StrategyAllAtOnce:
	default:
		return fmt.Errorf("%w: strategy %q: use %s or %s", ErrInvalid, q.Strategy, StrategyRolling, StrategyAllAtOnce)
	}
	if q.HealthTimeout.Duration < 0 || q.HealthTimeout.Duration > maxHealthTimeout {
		return fmt.Errorf("%w: health timeout %s: give up to %s", ErrInvalid, q.HealthTimeout, maxHealthTimeout)
	}
	if len(q.Description) > 200 {
		return fmt.Errorf("%w: description: at most 200 bytes", ErrInvalid)
	}
	return nil
}

// applyRelease makes release LastRelease+1 of the app named by c.Key from
// c.Release, and its deploy when asked, in one write.
func applyRelease(txn *memdb.Txn, index uint64, c *command, events *eventLog) error {
	q := c.Release
	raw, err := txn.First("apps", "id", c.Key)
	if err != nil {
		return err
	}
	if raw == nil {
		return fmt.Errorf("%w: app %s (plinth apps create %s)", ErrNotFound, c.Key, c.Key)
	}
	app := *raw.(*App)
	if q.Deploy {
		if d, err := runningDeploy(txn, app.Name); err != nil {
			return err
		} else if d != nil {
			return fmt.Errorf("%w: deploy %s of %s is running (v%d → v%d); wait for it (plinth deploys -a %s) and try again: no release was made", ErrConflict, d.ID, app.Name, d.From, d.To, app.Name)
		}
	}
	base := Release{App: app.Name, Processes: map[string]Process{}}
	from := cmp.Or(q.From, app.Release, app.LastRelease)
	if from > 0 {
		raw, err := txn.First("releases", "id", ReleaseID(app.Name, from))
		if err != nil {
			return err
		}
		if raw == nil {
			return fmt.Errorf("%w: release v%d of %s (plinth releases -a %s)", ErrNotFound, from, app.Name, app.Name)
		}
		base = *raw.(*Release)
	}
	r := base
	r.Version = app.LastRelease + 1
	r.ID = ReleaseID(app.Name, r.Version)
	r.Created = c.Time
	r.Meta = Meta{}
	if q.Image != "" {
		r.Image = q.Image
	}
	if q.Processes != nil {
		r.Processes = q.Processes
		r.ReleaseCommand = q.ReleaseCommand
	}
	r.Config = maps.Clone(base.Config)
	if q.ReplaceConfig {
		r.Config = nil
	}
	if r.Config == nil {
		r.Config = map[string]string{}
	}
	maps.Copy(r.Config, q.Set)
	for _, k := range q.Unset {
		delete(r.Config, k)
	}
	r.Description = cmp.Or(q.Description, describeRelease(q, from))
	if err := checkRelease(&r); err != nil {
		return err
	}
	if err := put(txn, "releases", &r, index, new(uint64)); err != nil {
		return err
	}
	app.LastRelease = r.Version
	if err := put(txn, "apps", &app, index, nil); err != nil {
		return err
	}
	events.add(txn, index, c.Time, "release", app.Name, fmt.Sprintf("%s v%d: %s", app.Name, r.Version, r.Description))
	if !q.Deploy {
		return nil
	}
	d := &Deploy{
		ID: DeployID(app.Name, r.Version), App: app.Name, From: app.Release, To: r.Version,
		Strategy:      cmp.Or(q.Strategy, app.Strategy, StrategyRolling),
		HealthTimeout: job.Duration{Duration: cmp.Or(q.HealthTimeout.Duration, DefaultHealthTimeout)},
		State:         DeployRunning, Started: c.Time,
	}
	if err := put(txn, "deploys", d, index, new(uint64)); err != nil {
		return err
	}
	events.add(txn, index, c.Time, "deploy-started", app.Name, fmt.Sprintf("%s: deploy of v%d started (%s)", app.Name, r.Version, d.Strategy))
	return nil
}

// describeRelease says what a request without a description changes.
func describeRelease(q *ReleaseRequest, from int) string {
	var parts []string
	if q.Image != "" {
		parts = append(parts, "deploy "+shortDigest(q.Image))
	}
	if len(q.Set) > 0 {
		parts = append(parts, "set "+strings.Join(slices.Sorted(maps.Keys(q.Set)), ", "))
	}
	if len(q.Unset) > 0 {
		parts = append(parts, "unset "+strings.Join(q.Unset, ", "))
	}
	if q.From != 0 && len(parts) == 0 {
		return fmt.Sprintf("rollback to v%d", from)
	}
	if len(parts) == 0 {
		return "restart"
	}
	return strings.Join(parts, "; ")
}

// shortDigest is an image's digest cut to 12 hex digits, as people say
// it.
func shortDigest(image string) string {
	_, d, _ := strings.Cut(image, "@sha256:")
	if len(d) >= 12 {
		return d[:12]
	}
	return image
}

// applyDestroyApp removes an app with its releases, deploys, the routes
// to its services and its repository's images and tags; the deployer
// removes its formations.
func applyDestroyApp(txn *memdb.Txn, index uint64, c *command, events *eventLog) error {
	raw, err := txn.First("apps", "id", c.Key)
	if err != nil {
		return err
	}
	if raw == nil {
		return fmt.Errorf("%w: app %s", ErrNotFound, c.Key)
	}
	app := raw.(*App)
	if err := remove(txn, "apps", app.Name, index, c.CAS); err != nil {
		return err
	}
	services := map[string]bool{}
	releases, err := list[*Release](txn, "releases")
	if err != nil {
		return err
	}
	for _, r := range releases {
		if r.App != app.Name {
			continue
		}
		for typ := range r.Processes {
			services[ServiceName(app.Name, typ)] = true
		}
		if err := remove(txn, "releases", r.ID, index, nil); err != nil {
			return err
		}
	}
	deploys, err := list[*Deploy](txn, "deploys")
	if err != nil {
		return err
	}
	for _, d := range deploys {
		if d.App == app.Name {
			if err := remove(txn, "deploys", d.ID, index, nil); err != nil {
				return err
			}
		}
	}
	builds, err := appBuilds(txn, app.Name)
	if err != nil {
		return err
	}
	for _, b := range builds {
		if err := remove(txn, "builds", b.ID, index, nil); err != nil {
			return err
		}
	}
	routes, err := list[*Route](txn, "routes")
	if err != nil {
		return err
	}
	for _, r := range routes {
		if services[r.Service] {
			if err := remove(txn, "routes", r.ID, index, nil); err != nil {
				return err
			}
		}
	}
	// The app's repository goes too; the registries then collect its
	// blobs that no other image uses.
	for _, table := range []string{"images", "tags"} {
		it, err := txn.Get(table, "repo", app.Name)
		if err != nil {
			return err
		}
		var keys []string
		for raw := it.Next(); raw != nil; raw = it.Next() {
			keys = append(keys, raw.(object).key())
		}
		for _, k := range keys {
			if err := remove(txn, table, k, index, nil); err != nil {
				return err
			}
		}
	}
	events.add(txn, index, c.Time, "app-destroyed", app.Name, fmt.Sprintf("app %s destroyed", app.Name))
	return nil
}

// Job tags of an app's instances, besides FormationTag.
const (
	AppTag     = "plinth.app"
	ReleaseTag = "plinth.release"
	TypeTag    = "plinth.type"
)

// RegistryPort is where every host's registry listens; hosts pull the
// images of releases from their own, which finds missing blobs on its
// peers.
const RegistryPort = 7951

// ProcessFormationName is the formation that runs process type typ of
// release version of app.
func ProcessFormationName(app, typ string, version int) string {
	return fmt.Sprintf("%s.%s.v%d", app, typ, version)
}

// ProcessFormation is the formation that runs count instances of process
// type typ of r: each on the container bridge with $PORT, the release's
// config and the process's service and health check.
func ProcessFormation(r *Release, typ string, count int) Formation {
	p := r.Processes[typ]
	spec := releaseJob(r, typ, p.Cmd)
	spec.Resources = p.Resources
	spec.Restart = job.Restart{Policy: job.RestartAlways}
	spec.Resurrect = true
	if p.Port != 0 {
		spec.Env = append(spec.Env, "PORT="+strconv.Itoa(p.Port))
		spec.Services = []job.Service{{Name: ServiceName(r.App, typ), Port: p.Port, Proto: p.Proto, Check: p.HealthCheck()}}
	}
	return Formation{Name: ProcessFormationName(r.App, typ, r.Version), Count: count, Job: spec}
}

// OneOffJob is a job that runs cmd once with r's image and config (the
// release command, plinth run): typ names it in $PLINTH_PROCESS_TYPE.
func OneOffJob(r *Release, id, typ string, cmd []string) job.Spec {
	spec := releaseJob(r, typ, cmd)
	spec.ID = id
	spec.Restart = job.Restart{Policy: job.RestartNever}
	return spec
}

// releaseJob is what every job of r runs with: its image, its config and
// the PLINTH_* variables, on the container bridge.
func releaseJob(r *Release, typ string, cmd []string) job.Spec {
	env := make([]string, 0, len(r.Config)+4)
	for _, k := range slices.Sorted(maps.Keys(r.Config)) {
		env = append(env, k+"="+r.Config[k])
	}
	env = append(env, "PLINTH_APP="+r.App, "PLINTH_RELEASE="+strconv.Itoa(r.Version), "PLINTH_PROCESS_TYPE="+typ)
	return job.Spec{
		Image:   RegistryImage(r.Image),
		Cmd:     cmd,
		Env:     env,
		Network: job.NetworkBridge,
		// Root in an app's container is never root on its host where
		// the host can idmap the image.
		PreferUserNamespace: true,
		Tags:                map[string]string{AppTag: r.App, ReleaseTag: strconv.Itoa(r.Version), TypeTag: typ},
	}
}

// RegistryImage is the reference a host pulls image (a release's) by:
// from its own registry.
func RegistryImage(image string) string {
	return "127.0.0.1:" + strconv.Itoa(RegistryPort) + "/" + image
}

// Retention settings: how many releases of each app are kept with their
// images, and how long an image or blob nothing refers to is kept (a
// push in progress refers to nothing yet).
const (
	KeepReleasesSetting = "apps.keep_releases"
	GCGraceSetting      = "registry.gc_grace"
)

// Retention defaults.
const (
	DefaultKeepReleases = 10
	DefaultGCGrace      = time.Hour
)

// checkRemoveRelease refuses to remove a release that serves or that a
// running deploy moves from or to.
func checkRemoveRelease(txn *memdb.Txn, key string) error {
	raw, err := txn.First("releases", "id", key)
	if err != nil || raw == nil {
		return err
	}
	r := raw.(*Release)
	if a, err := txn.First("apps", "id", r.App); err != nil {
		return err
	} else if a != nil && a.(*App).Release == r.Version {
		return fmt.Errorf("%w: release %s serves", ErrConflict, r.ID)
	}
	d, err := runningDeploy(txn, r.App)
	if err != nil {
		return err
	}
	if d != nil && (d.From == r.Version || d.To == r.Version) {
		return fmt.Errorf("%w: release %s is being deployed", ErrConflict, r.ID)
	}
	return nil
}
