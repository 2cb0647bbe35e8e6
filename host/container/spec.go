// Package container runs one job's process isolated with libcontainer: its
// own mount, PID, UTS, IPC, cgroup and (unless it shares the host's)
// network namespace, cgroup limits, a minimal capability set,
// no-new-privileges and masked /proc paths. It also finds containers a
// previous hostd started, so they can be adopted without a restart.
//
// It does not fetch images, wire networks, keep job records or apply
// restart policies: hostd does, above it. It is its own package because
// the binary that uses it must let libcontainer re-execute it as
// "<binary> init" (see Init).
package container

import (
	"cmp"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/opencontainers/runtime-spec/specs-go"
)

// Spec is what to run and how it is confined.
type Spec struct {
	// ID names the container: 1 to 64 of a-z, 0-9, '_', '.', '-',
	// starting with a letter or digit. It is also its cgroup's name.
	ID string
	// CgroupParent is the cgroup the container's goes under; default
	// DefaultCgroupParent.
	CgroupParent string
	// Rootfs is the root directory, an absolute path.
	Rootfs string
	// Args is the command; Args[0] is looked up in the container's PATH.
	Args []string
	// Env is KEY=value pairs; PATH defaults to the usual directories.
	Env []string
	// Cwd is the working directory inside the container; default "/".
	Cwd string
	// UID and GID run the process; 0 is root inside the container, with
	// only DefaultCapabilities.
	UID, GID uint32
	// Hostname inside the container; default the ID.
	Hostname string
	// ReadonlyRootfs mounts the root read-only.
	ReadonlyRootfs bool
	// HostNetwork shares the host's network namespace instead of a new,
	// empty one.
	HostNetwork bool
	// NetnsPath, if set, is a network namespace prepared for the job (a
	// bind-mounted nsfs file) to join instead of a new, empty one.
	NetnsPath string
	// Init is the host path of a static init (Debian's tini-static) to run
	// as the container's PID 1, bound read-only at InitPath. A process
	// that is PID 1 ignores signals it has no handler for and must reap
	// orphans; the init forwards signals to the command and reaps.
	// Empty: the command itself is PID 1.
	Init string
	// UserNS runs the container in a user namespace of its own: its root
	// (and every ID up to 65535) is an unprivileged ID range on the host,
	// from UserNSBase. Files of the rootfs owned by host root look owned by
	// nobody inside, so such a job reads but does not write them.
	UserNS bool
	// Mounts are bind mounts from the host (volumes) and tmpfs mounts,
	// made in order after the standard ones, so a mount may go inside an
	// earlier one (a tmpfs makes room for binds on a read-only root).
	Mounts    []Mount
	Resources Resources
}

// Mount binds the host path Source at Target in the container or, with
// Tmpfs, mounts a new, empty tmpfs there (Source empty), owned by the
// container's root, mode 0755.
type Mount struct {
	Source, Target string
	ReadOnly       bool
	Tmpfs          bool
}

// Resources are the container's cgroup limits; zero means unlimited.
type Resources struct {
	// MemoryBytes caps memory; the kernel OOM-kills the container above it.
	// Below MinMemory the runtime itself cannot start.
	MemoryBytes int64
	// CPUWeight is the share of CPU under contention, 1 to 10000 (cgroup
	// v2 cpu.weight; 100 is the default of an unconfined process).
	CPUWeight uint64
	// CPUQuota caps CPU time in cores (0.5 = half a core).
	CPUQuota float64
	// Pids caps the number of processes and threads.
	Pids int64
}

// UserNSBase is the first host ID that a user-namespaced container's
// root maps to; its UserNSSize IDs are not used by anything on the host.
const (
	UserNSBase = 1 << 20
	UserNSSize = 1 << 16
)

// InitPath is where Spec.Init appears inside the container: in the /dev
// tmpfs the container gets, so that it can be mounted whatever the root
// filesystem holds and even when that is read-only.
const InitPath = "/dev/init"

// MinMemory is the smallest memory limit a container starts with: the
// runtime's own init (this binary, re-executed) must fit before it execs
// the job's command.
const MinMemory = 8 << 20

// DefaultCapabilities are all a container's root keeps: sending signals
// within the container, binding ports below 1024, writing audit records.
var DefaultCapabilities = []string{"CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"}

// ValidID reports whether id can name a container (and the job that owns
// it): 1 to 64 of a-z, 0-9, '_', '.', '-', starting with a letter or
// digit. A loop, not a regexp: the {0,63} repetition compiles to a large
// program at package init, which every container start pays for again
// in the re-executed "<binary> init".
func ValidID(id string) bool {
	if len(id) == 0 || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9':
		case i > 0 && (c == '_' || c == '.' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// Check reports the first problem with s, phrased for the API's caller.
func (s *Spec) Check() error {
	switch {
	case !ValidID(s.ID):
		return fmt.Errorf("container id %q: use 1 to 64 of a-z, 0-9, '_', '.', '-', starting with a letter or digit", s.ID)
	case !filepath.IsAbs(s.Rootfs):
		return fmt.Errorf("rootfs %q is not an absolute path", s.Rootfs)
	case len(s.Args) == 0 || s.Args[0] == "":
		return fmt.Errorf("no command: give the arguments to run")
	case s.Init != "" && !filepath.IsAbs(s.Init):
		return fmt.Errorf("init %q is not an absolute path", s.Init)
	case s.Resources.MemoryBytes != 0 && s.Resources.MemoryBytes < MinMemory:
		return fmt.Errorf("memory limit %d bytes is below the runtime's floor of %d (8 MiB)", s.Resources.MemoryBytes, MinMemory)
	case s.Resources.MemoryBytes < 0 || s.Resources.Pids < 0 || s.Resources.CPUQuota < 0:
		return fmt.Errorf("resource limits cannot be negative")
	case s.Resources.CPUWeight > 10000:
		return fmt.Errorf("cpu weight %d: use 1 to 10000", s.Resources.CPUWeight)
	}
	for _, m := range s.Mounts {
		switch {
		case m.Tmpfs && m.Source != "":
			return fmt.Errorf("tmpfs mount at %s: a tmpfs has no source; leave it empty", m.Target)
		case m.Tmpfs && !filepath.IsAbs(m.Target):
			return fmt.Errorf("tmpfs mount at %s: the target must be absolute", m.Target)
		case !m.Tmpfs && (!filepath.IsAbs(m.Source) || !filepath.IsAbs(m.Target)):
			return fmt.Errorf("mount %s -> %s: both paths must be absolute", m.Source, m.Target)
		}
	}
	for _, e := range s.Env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			return fmt.Errorf("environment entry %q is not KEY=value", e)
		}
	}
	return nil
}

// DefaultPath is the PATH of a container whose Spec.Env sets none.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// DefaultCgroupParent groups every container's cgroup, so the jobs of a
// host can be accounted and limited together.
const DefaultCgroupParent = "/plinth"

// ociSpec turns s into the OCI runtime spec libcontainer converts.
func (s *Spec) ociSpec(cgroupNS bool) *specs.Spec {
	hostname := s.Hostname
	if hostname == "" {
		hostname = s.ID
	}
	caps := slices.Clone(DefaultCapabilities)
	nss := []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace},
		{Type: specs.UTSNamespace}, {Type: specs.MountNamespace}}
	if !s.HostNetwork {
		nss = append(nss, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: s.NetnsPath})
	}
	// A cgroup namespace hides the host's cgroup tree from the job; it
	// needs the unified (v2) hierarchy to be meaningful.
	if cgroupNS {
		nss = append(nss, specs.LinuxNamespace{Type: specs.CgroupNamespace})
	}
	if s.UserNS {
		nss = append(nss, specs.LinuxNamespace{Type: specs.UserNamespace})
	}
	spec := &specs.Spec{
		Version: specs.Version,
		Root:    &specs.Root{Path: s.Rootfs, Readonly: s.ReadonlyRootfs},
		Process: &specs.Process{
			User: specs.User{UID: s.UID, GID: s.GID},
			Args: s.args(), Env: s.env(), Cwd: cmp.Or(s.Cwd, "/"),
			NoNewPrivileges: true,
			Capabilities: &specs.LinuxCapabilities{
				Bounding: caps, Permitted: caps, Effective: caps,
			},
			Rlimits: []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1 << 16, Soft: 1 << 16}},
		},
		Hostname: hostname,
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "mode=1777"}},
		},
		Linux: &specs.Linux{
			CgroupsPath: cmp.Or(s.CgroupParent, DefaultCgroupParent) + "/" + s.ID,
			Namespaces:  nss,
			MaskedPaths: []string{"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
				"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"},
			ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
			Resources:     s.resources(),
		},
	}
	if s.UserNS {
		ids := []specs.LinuxIDMapping{{ContainerID: 0, HostID: UserNSBase, Size: UserNSSize}}
		spec.Linux.UIDMappings, spec.Linux.GIDMappings = ids, ids
		if s.HostNetwork || s.NetnsPath != "" {
			// sysfs cannot be mounted from a user namespace that does not
			// own the network namespace (the host's, or one prepared for
			// the job): bind the host's, read-only all through. It must
			// be a recursive bind (the kernel refuses to uncover, from a
			// user namespace, what mounts on it hide), so the mounts
			// under it are masked: the cgroup tree of every job, debug
			// and tracing. Its /sys/class/net lists the host's links.
			for i, m := range spec.Mounts {
				if m.Destination == "/sys" {
					spec.Mounts[i] = specs.Mount{Destination: "/sys", Type: "bind", Source: "/sys", Options: []string{"rbind", "rro", "nosuid", "noexec", "nodev"}}
				}
			}
			spec.Linux.MaskedPaths = append(spec.Linux.MaskedPaths, "/sys/fs/cgroup", "/sys/fs/bpf", "/sys/kernel/debug",
				"/sys/kernel/tracing", "/sys/kernel/security", "/sys/kernel/config", "/sys/fs/fuse/connections")
		}
	}
	if s.Init != "" {
		spec.Mounts = append(spec.Mounts, specs.Mount{Destination: InitPath, Type: "bind", Source: s.Init,
			Options: []string{"bind", "ro", "nosuid", "nodev"}})
	}
	for _, m := range s.Mounts {
		mount := specs.Mount{Destination: m.Target, Type: "bind", Source: m.Source, Options: []string{"rbind", "nosuid", "nodev"}}
		if m.Tmpfs {
			mount = specs.Mount{Destination: m.Target, Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "mode=755"}}
		}
		if m.ReadOnly {
			mount.Options = append(mount.Options, "ro")
		}
		spec.Mounts = append(spec.Mounts, mount)
	}
	return spec
}

// env is the processes' environment: Env, with the default PATH unless
// it sets one.
func (s *Spec) env() []string {
	if slices.ContainsFunc(s.Env, func(e string) bool { return strings.HasPrefix(e, "PATH=") }) {
		return slices.Clone(s.Env)
	}
	return append([]string{"PATH=" + DefaultPath}, s.Env...)
}

// args is the command line of the container's first process.
func (s *Spec) args() []string {
	if s.Init == "" {
		return s.Args
	}
	return append([]string{InitPath, "--"}, s.Args...)
}

// cpuPeriod is the CFS period the quota is a share of (the kernel's
// default, 100 ms).
const cpuPeriod = 100_000

func (s *Spec) resources() *specs.LinuxResources {
	r := &specs.LinuxResources{
		// No device nodes beyond the standard ones libcontainer creates.
		Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
	}
	res := s.Resources
	if res.MemoryBytes > 0 {
		limit := res.MemoryBytes
		// Swap would let the job exceed its limit unseen; equal limits
		// forbid it.
		r.Memory = &specs.LinuxMemory{Limit: &limit, Swap: &limit}
	}
	if res.CPUWeight > 0 || res.CPUQuota > 0 {
		r.CPU = &specs.LinuxCPU{}
		if res.CPUWeight > 0 {
			// OCI carries cgroup v1 shares (2..262144); libcontainer maps
			// them to v2 weight. Weight w is shares ≈ w × 1024 / 100.
			shares := max(2, res.CPUWeight*1024/100)
			r.CPU.Shares = &shares
		}
		if res.CPUQuota > 0 {
			quota, period := int64(res.CPUQuota*cpuPeriod), uint64(cpuPeriod)
			r.CPU.Quota, r.CPU.Period = &quota, &period
		}
	}
	if res.Pids > 0 {
		r.Pids = &specs.LinuxPids{Limit: &res.Pids}
	}
	return r
}
