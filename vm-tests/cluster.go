package vmtest

import (
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/bundle"
)

// FWCfgBundle is the fw_cfg name under which ClusterNode hands the guest
// the cluster bundle; a machine config reads it with bundle = "fw_cfg".
const FWCfgBundle = "opt/plinth/bundle"

// ClusterNode returns the config of node i (0-based) of an n-node plinth
// cluster on seg: hostname node<i+1>, address 10.60.0.<i+1>/24 on lan0,
// joining every other node, with the cluster bundle at bundlePath. A
// second NIC on QEMU's user network forwards the host API to the
// caller's loopback (see HostClient), and the controller API's port
// too. roles are the node's machine-config roles ("demo" when none).
func ClusterNode(i, n int, kernel, initrd string, seg *Segment, bundlePath string, roles ...string) Config {
	return ClusterNodeAt(i, n, ClusterAddr, 24, kernel, initrd, seg, bundlePath, roles...)
}

// ClusterNodeAt is ClusterNode with node j's lan0 address addr(j)/bits,
// for example on an IPv6-only segment.
func ClusterNodeAt(i, n int, addr func(int) string, bits int, kernel, initrd string, seg *Segment, bundlePath string, roles ...string) Config {
	if len(roles) == 0 {
		roles = []string{"demo"}
	}
	quoted := make([]string, len(roles))
	for j, r := range roles {
		quoted[j] = fmt.Sprintf("%q", r)
	}
	var seeds []string
	for j := range n {
		seeds = append(seeds, fmt.Sprintf("%q", addr(j)))
	}
	name := fmt.Sprintf("node%d", i+1)
	lanMAC := fmt.Sprintf("52:54:00:60:00:%02x", i+1)
	mgmtMAC := fmt.Sprintf("52:54:00:60:01:%02x", i+1)
	return Config{
		Name: name, Kernel: kernel, Initrd: initrd,
		NICs: []NIC{
			{MAC: lanMAC, Segment: seg},
			{MAC: mgmtMAC, User: &UserNet{Forwards: []Forward{{GuestPort: host.DefaultAPIPort}, {GuestPort: ControllerAPIPort}}}},
		},
		ExtraArgs: []string{"-fw_cfg", "name=" + FWCfgBundle + ",file=" + qemuEscape(bundlePath)},
		MachineConfig: fmt.Appendf(nil, `hostname = %q

[[network.interface]]
mac = %q
name = "lan0"
addresses = ["%s/%d"]
required = true

# QEMU's user network forwards the host API to 10.0.2.15.
[[network.interface]]
mac = %q
name = "mgmt0"
addresses = ["10.0.2.15/24"]

[cluster]
bundle = "fw_cfg"
join = [%s]
advertise = "lan0"
roles = [%s]
`, name, lanMAC, addr(i), bits, mgmtMAC, strings.Join(seeds, ", "), strings.Join(quoted, ", ")),
	}
}

// ControllerAPIPort is the controller API's port, forwarded like the
// host API's (services/controller.DefaultAPIPort; the harness does not
// import the platform).
const ControllerAPIPort = 7948

// ClusterAddr is node i's address on the cluster segment.
func ClusterAddr(i int) string { return fmt.Sprintf("10.60.0.%d", i+1) }

// HostClient calls the host API of a VM made by ClusterNode, through its
// forwarded port and from inside its network namespace.
func HostClient(vm *VM, creds *bundle.Credentials) (*host.Client, error) {
	addr := vm.HostAddr(host.DefaultAPIPort)
	if addr == "" {
		return nil, fmt.Errorf("%s forwards no host API port", vm.Name())
	}
	tr := &http.Transport{TLSClientConfig: creds.TLS(), DialContext: vm.DialContext}
	return host.NewClientTransport(addr, tr), nil
}

// ClusterFiles makes a new cluster bundle and operator credentials, as
// `plinth cluster init` does, writes them into dir as bundle.toml and
// client.toml, and returns the bundle's path and the credentials.
func ClusterFiles(dir, cluster string) (bundlePath string, creds *bundle.Credentials, err error) {
	b, err := bundle.Create(cluster)
	if err != nil {
		return "", nil, err
	}
	if creds, err = b.IssueClient("admin", 24*time.Hour); err != nil {
		return "", nil, err
	}
	bundlePath = filepath.Join(dir, "bundle.toml")
	for path, marshal := range map[string]func() ([]byte, error){bundlePath: b.Marshal, filepath.Join(dir, "client.toml"): creds.Marshal} {
		data, err := marshal()
		if err != nil {
			return "", nil, err
		}
		if err := bundle.WriteFile(path, data); err != nil {
			return "", nil, err
		}
	}
	return bundlePath, creds, nil
}
