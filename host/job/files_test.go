package job

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// With JobDNS, a job with the host's network resolves through the host
// first, then through the host's own resolvers; a job without a network
// keeps its rootfs's resolv.conf.
func TestJobResolvConf(t *testing.T) {
	root := busyboxRoot(t)
	if err := os.WriteFile(filepath.Join(root, "etc/resolv.conf"), []byte("nameserver 192.0.2.99\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.JobDNS = true
	cfg.HostResolvConf = filepath.Join(t.TempDir(), "resolv.conf")
	host := "# the host's\nnameserver 127.0.0.1\nnameserver 192.0.2.53\nnameserver ::1\nsearch a.test b.test\noptions ndots:2\nnameserver bogus\n"
	if err := os.WriteFile(cfg.HostResolvConf, []byte(host), 0o644); err != nil {
		t.Fatal(err)
	}
	m := newManager(t, cfg)
	fromHost := "stdout:# written by plinth hostd for this job: this host first, then the host's resolvers|" +
		"stdout:nameserver 127.0.0.1|stdout:nameserver 192.0.2.53|stdout:nameserver ::1|" +
		"stdout:search a.test b.test|stdout:options ndots:2"
	for _, tc := range []struct {
		rootfs, network, want string
	}{
		{root, NetworkHost, fromHost},
		{root, NetworkNone, "stdout:nameserver 192.0.2.99"},
		// On the read-only system root too (its /etc/resolv.conf may be a
		// link into /run, which the job has a tmpfs on).
		{SystemRootfs, NetworkHost, fromHost},
	} {
		s := spec(tc.rootfs, "cat", "/etc/resolv.conf")
		s.Network = tc.network
		if _, err := m.Create(s); err != nil {
			t.Fatal(err)
		}
		j, _ := m.Wait(context.Background(), s.ID)
		if got := texts(logLines(t, m, s.ID, LogOptions{})); j.Status.Exit == nil || j.Status.Exit.Code != 0 || got != tc.want {
			t.Errorf("rootfs %s, network %s: exit %+v, resolv.conf\n%s\nwant\n%s", tc.rootfs, tc.network, j.Status.Exit, got, tc.want)
		}
	}
}
