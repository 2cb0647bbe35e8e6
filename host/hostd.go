package host

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/plinth-os/plinth/host/bundle"
	"github.com/plinth-os/plinth/host/cnet"
	"github.com/plinth-os/plinth/host/container"
	"github.com/plinth-os/plinth/host/imagestore"
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/image"
	"github.com/plinth-os/plinth/version"
)

// Files hostd keeps in Config.StateDir besides the node ID.
const (
	// LocalBundleFile is the single-host bundle of a host given none.
	LocalBundleFile = "bundle.toml"
	// LocalCredentialsFile holds client credentials for root on this host,
	// so `plinth members` works there without flags.
	LocalCredentialsFile = "client.toml"
)

// localCluster names the single-host bundle hostd makes for itself.
const localCluster = "local"

// Options are the hooks a caller of hostd provides.
type Options struct {
	// Log receives one line per event; nil discards.
	Log *slog.Logger
	// Ready is called once the API is serving and the member is gossiping.
	Ready func()
}

// Daemon is one running hostd.
type Daemon struct {
	cfg      Config
	opts     Options
	log      *slog.Logger
	id       string
	hostname string
	bundle   *bundle.Bundle
	started  time.Time
	members  *membership
	jobs     *job.Manager
	subnet   netip.Prefix // the container subnet, with ContainerNetwork
	images   *imagestore.Store
	// registryTransport pulls jobs' images from the platform's
	// registries, with the host's certificate.
	registryTransport http.RoundTripper
	// advertise is the address gossip starts on.
	advertise netip.Addr
	// pulls are the image pulls under way, by reference (mu).
	pulls map[string]*pulling
	// upgrades writes upgrades into this host's other disk slot.
	upgrades *upgrader
	// bootHealthy: the host was healthy after its boot (reportHealthy).
	bootHealthy atomic.Bool

	mu      sync.Mutex
	apiAddr net.Addr
}

// New prepares hostd: it checks cfg, creates the state directory, and
// loads or makes the node ID and, without a cluster bundle, the local one.
func New(cfg Config, opts Options) (*Daemon, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// Others may walk through but not list it: a user-namespaced job's
	// root, an unprivileged ID, walks to its root filesystem below. The
	// secrets in it are files of mode 0600.
	if err := os.MkdirAll(cfg.StateDir, 0o711); err != nil {
		return nil, fmt.Errorf("hostd: state directory: %w", err)
	}
	if err := os.Chmod(cfg.StateDir, 0o711); err != nil {
		return nil, fmt.Errorf("hostd: state directory: %w", err)
	}
	id, created, err := loadOrCreateNodeID(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("hostd: %w", err)
	}
	if created {
		log.Info("new node ID", "id", id, "file", filepath.Join(cfg.StateDir, nodeIDFile))
	}
	hostname := cfg.Hostname
	if hostname == "" {
		hostname, _ = os.Hostname()
	}
	d := &Daemon{cfg: cfg, opts: opts, log: log, id: id, hostname: hostname}
	b := cfg.Bundle
	switch {
	case b != nil:
	case cfg.JoinToken != "":
		// Fetched by an earlier start, or else by Run from a seed.
		if b, err = loadJoinedBundle(cfg.StateDir, cfg.JoinToken); err != nil && !errors.Is(err, fs.ErrNotExist) {
			log.Warn("kept cluster bundle unusable; fetching it again", "err", err)
		}
	default:
		if b, err = localBundle(cfg.StateDir, log); err != nil {
			return nil, fmt.Errorf("hostd: %w", err)
		}
	}
	if b != nil {
		d.useBundle(b)
	}
	return d, nil
}

// useBundle makes b the cluster's bundle and its Serf key the gossip key.
func (d *Daemon) useBundle(b *bundle.Bundle) {
	d.bundle = b
	d.members = newMembership(d.cfg, d.id, d.hostname, b.SerfKey, d.log)
}

// ID returns the node ID.
func (d *Daemon) ID() string { return d.id }

// localBundle loads the host's own single-host bundle, making it on first
// use.
func localBundle(dir string, log *slog.Logger) (*bundle.Bundle, error) {
	path := filepath.Join(dir, LocalBundleFile)
	b, err := bundle.Load(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return b, err
	}
	if b, err = bundle.Create(localCluster); err != nil {
		return nil, err
	}
	data, err := b.Marshal()
	if err != nil {
		return nil, err
	}
	if err := bundle.WriteFile(path, data); err != nil {
		return nil, err
	}
	log.Info("no cluster bundle given; made a single-host one", "file", path)
	return b, nil
}

// writeLocalCredentials keeps StateDir/client.toml valid for b: it is
// written when missing or when it belongs to another CA (the host was
// given a new bundle).
func writeLocalCredentials(dir string, b *bundle.Bundle) error {
	path := filepath.Join(dir, LocalCredentialsFile)
	if c, err := bundle.LoadCredentials(path); err == nil && c.CACert.Equal(b.CACert) &&
		time.Until(c.Cert.Leaf.NotAfter) > 30*24*time.Hour {
		return nil
	}
	c, err := b.IssueClient("root@local", 365*24*time.Hour)
	if err != nil {
		return err
	}
	data, err := c.Marshal()
	if err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	return bundle.WriteFile(path, data)
}

// serverTLS is the bundle's server config, except that a client may come
// without a certificate: a host with only a join token does so to fetch
// the bundle. The handler refuses every other request that has no
// verified certificate, and one with a certificate from another CA fails
// the handshake as before.
func (d *Daemon) serverTLS(cert tls.Certificate) *tls.Config {
	conf := d.bundle.ServerTLS(cert)
	conf.ClientAuth = tls.VerifyClientCertIfGiven
	return conf
}

// Info describes this host, as GET /v1/host returns it. Like Members, it
// may be called once Run has reported ready.
func (d *Daemon) Info() HostInfo {
	local := d.members.Local()
	total, avail := memInfo()
	return HostInfo{
		ID: d.id, Hostname: d.hostname, Cluster: d.bundle.Cluster, Version: imageVersion(), Binary: version.Version,
		Addr: local.Addr, API: local.API, Roles: d.cfg.Roles, Labels: d.cfg.Labels, StartedAt: d.started,
		MemoryBytes: total, MemoryAvailableBytes: avail, CPUs: runtime.NumCPU(),
		Slots: d.upgrades.info(), BootHealthy: d.bootHealthy.Load(),
	}
}

// memInfo reads the machine's total and available memory from
// /proc/meminfo; zeros when it cannot.
func memInfo() (total, avail int64) {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, 0
	}
	for line := range strings.Lines(string(data)) {
		var name string
		var kb int64
		if _, err := fmt.Sscanf(line, "%s %d", &name, &kb); err != nil {
			continue
		}
		switch name {
		case "MemTotal:":
			total = kb << 10
		case "MemAvailable:":
			avail = kb << 10
		}
	}
	return total, avail
}

// startJobs creates the configured StartJobs that do not exist, and
// creates again those that ended without succeeding (a reboot cut them
// short, say): a one-time job runs until it has succeeded once. A job
// that needs the container network waits for it (ErrUnavailable).
func (d *Daemon) startJobs(ctx context.Context) {
	for _, spec := range d.cfg.StartJobs {
		if j, err := d.jobs.Get(spec.ID); err == nil {
			if j.Status.State != job.StateExited || succeeded(j.Status.Exit) {
				continue
			}
			d.log.Info("configured job ended without succeeding; starting it again", "job", spec.ID, "exit", j.Status.Exit, "error", j.Status.Error)
			if err := d.jobs.Remove(ctx, spec.ID, true); err != nil {
				d.log.Error("remove configured job", "job", spec.ID, "err", err)
				continue
			}
		}
		for ctx.Err() == nil {
			_, err := d.jobs.Create(spec)
			if err == nil {
				d.log.Info("started configured job", "job", spec.ID)
				break
			}
			if !errors.Is(err, job.ErrUnavailable) {
				d.log.Error("start configured job", "job", spec.ID, "err", err)
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

func succeeded(e *container.Exit) bool {
	return e != nil && e.Code == 0 && e.Signal == "" && !e.Unknown
}

// Members lists the members this host knows.
func (d *Daemon) Members() []Member { return d.members.Members() }

// APIAddr returns the address the API listens on, once Run has started it.
func (d *Daemon) APIAddr() net.Addr {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.apiAddr
}

// Run serves the host API and gossips until ctx ends, then leaves the
// cluster so the others see a departure rather than a failure.
func (d *Daemon) Run(ctx context.Context) error {
	d.started = time.Now().UTC()
	if fault, _ := os.ReadFile(image.FaultPath); strings.TrimSpace(string(fault)) == image.FaultHostd {
		// A test image that must never become healthy (see image.Config).
		return fmt.Errorf("hostd: test fault %s in this image: failing on purpose", image.FaultHostd)
	}
	d.upgrades = openUpgrader(d.log)
	if d.bundle == nil {
		b, err := d.fetchBundle(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil // stopped while waiting for a seed: a shutdown, not a failure
			}
			return fmt.Errorf("hostd: %w", err)
		}
		d.useBundle(b)
	}
	adv, err := currentAdvertise(d.cfg.Advertise, d.cfg.containerRange())
	d.advertise = adv
	if err != nil {
		// The member moves once an address appears (followAddress).
		d.log.Warn("no address to advertise yet; using loopback until one appears", "err", err)
		adv = netip.MustParseAddr("127.0.0.1")
	}
	if d.cfg.ContainerNetwork {
		// Known before gossip starts: the subnet is one of this host's tags.
		if d.subnet, err = pickSubnet(d.cfg, d.id, nil); err != nil {
			return fmt.Errorf("hostd: %w", err)
		}
		d.members.subnet = d.subnet.String()
	}

	images, err := imagestore.Open(filepath.Join(d.cfg.StateDir, "images"))
	if err != nil {
		return fmt.Errorf("hostd: %w", err)
	}
	d.images = images
	jobs, err := job.New(job.Config{
		StateDir:       filepath.Join(d.cfg.StateDir, "jobs"),
		RunDir:         filepath.Join(d.cfg.RunDir, "containers"),
		CgroupParent:   d.cfg.CgroupParent,
		VolumeRoot:     d.cfg.VolumeRoot,
		Init:           d.cfg.Init,
		Images:         images,
		Credentials:    d.jobCredentials,
		JobDNS:         d.cfg.JobDNS,
		HostResolvConf: d.cfg.HostResolvConf,
		Log:            d.log,
	})
	if err != nil {
		return fmt.Errorf("hostd: %w", err)
	}
	defer jobs.Close()
	// Before the API serves: running jobs are adopted, resurrect jobs
	// started again after a reboot.
	if err := jobs.Restore(); err != nil {
		return fmt.Errorf("hostd: %w", err)
	}
	d.jobs = jobs
	ln, err := net.Listen("tcp", net.JoinHostPort(d.cfg.APIBind, strconv.Itoa(d.cfg.APIPort)))
	if err != nil {
		return fmt.Errorf("hostd: listen for the host API: %w", err)
	}
	d.mu.Lock()
	d.apiAddr = ln.Addr()
	d.mu.Unlock()
	if d.cfg.APIPort == 0 {
		d.members.cfg.APIPort = ln.Addr().(*net.TCPAddr).Port
	}
	cert, err := d.bundle.HostCertificate(d.id, d.hostname, nil)
	if err != nil {
		ln.Close()
		return fmt.Errorf("hostd: host certificate: %w", err)
	}
	d.mu.Lock()
	d.registryTransport = imagestore.TLSTransport(d.bundle.ClientTLS(cert))
	d.mu.Unlock()
	d.members.slots = d.upgrades.info()
	if err := d.members.start(adv); err != nil {
		ln.Close()
		return fmt.Errorf("hostd: %w", err)
	}
	srv := &http.Server{
		Handler:           d.handler(),
		TLSConfig:         d.serverTLS(cert),
		ReadHeaderTimeout: 10 * time.Second,
		// Clients that never close a keep-alive connection (one per
		// joining host and per host.Client) must not hold it forever.
		IdleTimeout: 2 * time.Minute,
		// Refused handshakes (no or foreign client certificate) are the
		// client's problem to report; keep them out of the console.
		ErrorLog: log.New(serfLog{d.log}, "", 0),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(tls.NewListener(ln, srv.TLSConfig)) }()

	local := d.members.Local()
	d.log.Info("hostd ready", "id", d.id, "bundle", d.bundle, "gossip", local.Addr, "api", ln.Addr().String())
	if d.opts.Ready != nil {
		d.opts.Ready()
	}
	// After ready: issuing a certificate costs ~30 ms of a TCG guest's
	// boot, and nothing before ready needs the file.
	if err := writeLocalCredentials(d.cfg.StateDir, d.bundle); err != nil {
		d.log.Error("write local client credentials", "err", err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	if d.cfg.ContainerNetwork {
		go d.setUpNetwork(runCtx, adv)
	}
	go d.startJobs(runCtx)
	go d.announceJobs(runCtx)
	go d.reportHealthy(runCtx)
	go d.followSlots(runCtx)
	go func() {
		if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("host API stopped", "err", err)
		}
		cancel()
	}()
	d.members.run(runCtx)

	shutCtx, done := context.WithTimeout(context.Background(), 2*time.Second)
	defer done()
	if srv.Shutdown(shutCtx) != nil {
		// An event stream to a client that stopped reading blocks in a
		// write that Shutdown does not interrupt.
		srv.Close()
	}
	if ctx.Err() == nil {
		return errors.New("hostd: host API stopped")
	}
	return nil
}

// jobCredentials issues the credentials file of a job that asks for
// them: a certificate of this host's, good for serving and for calling,
// so that platform services can speak mutual TLS with each other and
// call hosts, with names added to its DNS names.
func (d *Daemon) jobCredentials(jobID string, names []string) ([]byte, error) {
	// The host's advertised address is in it, so that clients that check
	// the name they dialled (docker, skopeo pushing to the registry)
	// accept a platform service reached by the host's address. A job
	// gets a new one at each start, after an address change too.
	var ips []net.IP
	if ip := d.members.localIP(); ip != nil {
		ips = append(ips, ip)
	} else if d.advertise.IsValid() {
		ips = append(ips, d.advertise.AsSlice()) // before gossip starts
	}
	cert, err := d.bundle.HostCertificate(d.id, d.hostname, ips, names...)
	if err != nil {
		return nil, err
	}
	c := bundle.Credentials{Cluster: d.bundle.Cluster, CACert: d.bundle.CACert, Cert: cert}
	return c.Marshal()
}

// setUpNetwork makes the container network, retrying while the kernel
// lacks what it needs (on a plinth machine bridge, veth and vxlan load in
// the background after ready), then hands it to the jobs and follows the
// overlay's peers.
func (d *Daemon) setUpNetwork(ctx context.Context, adv netip.Addr) {
	for attempt := 1; ; attempt++ {
		n, err := d.containerNetwork(adv)
		if err == nil {
			d.jobs.SetNetwork(n)
			d.followPeers(ctx, n)
			return
		}
		if attempt == 1 || attempt%60 == 0 {
			d.log.Warn("container network not ready; retrying", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// containerNetwork sets up the host's container bridge on its subnet and
// the overlay from the advertised address.
func (d *Daemon) containerNetwork(adv netip.Addr) (*cnet.Network, error) {
	subnet := d.subnet
	var vtep netip.Addr
	if !adv.IsLoopback() {
		vtep = adv
	} else {
		d.log.Warn("no address for the container overlay; jobs reach only this host's jobs")
	}
	n, err := cnet.New(cnet.Config{Range: d.cfg.ContainerRange, Subnet: subnet,
		NetnsDir: filepath.Join(d.cfg.RunDir, "netns"), VTEP: vtep})
	if err != nil {
		return nil, err
	}
	d.log.Info("container network", "subnet", subnet, "gateway", n.Gateway(), "vtep", vtep)
	return n, nil
}

// followPeers keeps the overlay's peers equal to the alive members that
// have a container subnet, and reports a subnet another member also
// claims.
func (d *Daemon) followPeers(ctx context.Context, n *cnet.Network) {
	events, cancel := d.members.subscribe()
	defer cancel()
	conflicts := map[string]bool{} // reported once per member
	update := func() {
		// This host's own address may have moved (DHCP): the overlay's
		// local end follows it.
		if ap, err := netip.ParseAddrPort(d.members.Local().Addr); err == nil && !ap.Addr().IsLoopback() {
			if err := n.SetVTEP(ap.Addr()); err != nil {
				d.log.Warn("move the container overlay", "to", ap.Addr(), "err", err)
			}
		}
		var vteps []netip.Addr
		for _, m := range d.members.Members() {
			if m.ID == d.id || m.Status != StatusAlive || m.Subnet == "" {
				continue
			}
			if m.Subnet == d.members.subnet && !conflicts[m.ID] {
				conflicts[m.ID] = true
				d.log.Error("container subnet conflict: another host uses ours; give one of them another with container_subnet", "subnet", m.Subnet, "other", m.ID)
			}
			if ap, err := netip.ParseAddrPort(m.Addr); err == nil {
				vteps = append(vteps, ap.Addr())
			}
		}
		if err := n.SetPeers(vteps); err != nil {
			d.log.Warn("overlay peers", "err", err)
		}
	}
	update()
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-events:
			if !ok {
				return
			}
			update()
		}
	}
}
