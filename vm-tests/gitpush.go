package vmtest

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/plinth-os/plinth/host/bundle"
)

// Git runs git in repo as a client outside the cluster reaching the
// builder through vm's router (its forwarded GitPort), with the client
// certificate of creds: what plinth git remote sets up, given as -c
// options; in the VM's network namespace when it has one. Its output goes
// to out.
func Git(ctx context.Context, vm *VM, creds *bundle.Credentials, repo string, out io.Writer, args ...string) error {
	addr := vm.HostAddr(GitPort)
	if addr == "" {
		return fmt.Errorf("%s forwards no git port", vm.Name())
	}
	_, port, _ := net.SplitHostPort(addr)
	dir := filepath.Join(repo, ".git", "plinth-vm")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	key, err := x509.MarshalPKCS8PrivateKey(creds.Cert.PrivateKey)
	if err != nil {
		return err
	}
	files := map[string][]byte{
		"ca.pem":         pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: creds.CACert.Raw}),
		"client.pem":     pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: creds.Cert.Certificate[0]}),
		"client-key.pem": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return err
		}
	}
	name, args := "git", append([]string{"-C", repo,
		"-c", "http.sslCAInfo=" + filepath.Join(dir, "ca.pem"),
		"-c", "http.sslCert=" + filepath.Join(dir, "client.pem"),
		"-c", "http.sslKey=" + filepath.Join(dir, "client-key.pem"),
		"-c", "http.curloptResolve=plinth-git:" + port + ":127.0.0.1"}, args...)
	if vm.cfg.Netns != "" {
		// The forwarded port is on the namespace's loopback.
		name, args = "ip", append([]string{"netns", "exec", vm.cfg.Netns, "git"}, args...)
	}
	cmd := exec.CommandContext(ctx, name, args...)
	// GIT_SSL_CAINFO, set on some machines, would win over sslCAInfo.
	cmd.Env = append(slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "GIT_SSL_CAINFO=") }),
		"GIT_AUTHOR_NAME=plinth", "GIT_AUTHOR_EMAIL=plinth@localhost", "GIT_COMMITTER_NAME=plinth",
		"GIT_COMMITTER_EMAIL=plinth@localhost", "GIT_TERMINAL_PROMPT=0")
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("git %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

// GitURL is app's repository as Git reaches it through vm.
func GitURL(vm *VM, app string) string {
	_, port, _ := net.SplitHostPort(vm.HostAddr(GitPort))
	return "https://plinth-git:" + port + "/" + app + ".git"
}
