package main

import (
	"cmp"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/bundle"
	"github.com/plinth-os/plinth/host/imagestore"
	"github.com/plinth-os/plinth/internal/layer0"
	"github.com/plinth-os/plinth/services/builder"
	"github.com/plinth-os/plinth/services/controller"
)

func builderCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "builder", Short: "The git endpoint and build runner behind git push"}
	cmd.AddCommand(builderRunCommand())
	return cmd
}

func builderRunCommand() *cobra.Command {
	cfg := builder.DefaultConfig()
	var credsPath, hostAPI string
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the builder (what the builder job runs)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return runPlatformJob("builder", credsPath, func(creds *bundle.Credentials, log *slog.Logger) (service, error) {
				hc := host.NewClient(hostAPI, creds.TLS())
				cfg.Controller = controller.NewHostClient(hc, creds.TLS())
				cfg.TLS = creds.ServerTLS()
				cfg.RegistryTransport = imagestore.TLSTransport(creds.TLS())
				cfg.Dial = func(addr string) builder.HostAPI { return host.NewClient(addr, creds.TLS()) }
				cfg.Logger = log
				return builder.New(cfg)
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&credsPath, "credentials", layer0.JobCredentials, "host certificate of the cluster CA")
	fl.StringVar(&hostAPI, "host-api", controller.DefaultConfig().HostAPI, "the local host API")
	fl.StringVar(&cfg.Addr, "addr", cfg.Addr, "address the builder listens on")
	fl.StringVar(&cfg.Dir, "dir", cfg.Dir, "where the repositories are kept")
	return cmd
}

func gitCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "git", Short: "Deploy with git push"}
	cmd.AddCommand(gitRemoteCommand())
	return cmd
}

func gitRemoteCommand() *cobra.Command {
	f := &appFlags{}
	var remote, token string
	cmd := &cobra.Command{
		Use:   "remote",
		Short: "Add the app's git remote to the current repository: git push plinth main deploys",
		Long: `Add a remote (default name "plinth") to the git repository of the current
directory, for the app's repository on the cluster, with what git needs to
reach it: the cluster's CA, and either the client certificate of
--credentials or, with --token, the cluster's token (plinth registry token).
The builder is reached through the router of --host (port ` + strconv.Itoa(builder.GitPort) + `), by the
name ` + builder.ServerName + ` that its certificate carries.

A push to main (or master) builds and deploys; see docs/builds.md.`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return f.withApp(30*time.Second, func(ctx context.Context, c *controller.Client, app controller.App) error {
				creds, err := f.credentials()
				if err != nil {
					return err
				}
				out, err := exec.Command("git", "rev-parse", "--absolute-git-dir").Output()
				if err != nil {
					return errors.New("not in a git repository (git init first), or git is not installed")
				}
				gitDir := strings.TrimSpace(string(out))
				ip, err := resolveHost(f.hostAddr)
				if err != nil {
					return err
				}
				return addGitRemote(gitDir, remote, app.Name, ip, creds, token)
			})
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&remote, "remote", "plinth", "the remote's name")
	cmd.Flags().StringVar(&token, "token", "", "authenticate with this token instead of the client certificate")
	return cmd
}

// resolveHost is the IP address of h (a host API address, with or
// without its port).
func resolveHost(h string) (string, error) {
	if host, _, err := net.SplitHostPort(h); err == nil {
		h = host
	}
	if ip := net.ParseIP(h); ip != nil {
		return ip.String(), nil
	}
	ips, err := net.LookupIP(h)
	if err != nil || len(ips) == 0 {
		return "", fmt.Errorf("host %s: %v", h, err)
	}
	return ips[0].String(), nil
}

// addGitRemote writes the remote and its http.* settings into the
// repository's config, and the PEM files they name under .git/plinth.
func addGitRemote(gitDir, remote, app, ip string, creds *bundle.Credentials, token string) error {
	dir := filepath.Join(gitDir, "plinth")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: creds.CACert.Raw}), 0o600); err != nil {
		return err
	}
	base := fmt.Sprintf("https://%s:%d/", builder.ServerName, builder.GitPort)
	url := base + app + ".git"
	set := [][]string{
		{"http." + base + ".sslCAInfo", ca},
		{"http." + base + ".curloptResolve", fmt.Sprintf("%s:%d:%s", builder.ServerName, builder.GitPort, ip)},
	}
	if token != "" {
		auth := base64.StdEncoding.EncodeToString([]byte("plinth:" + token))
		set = append(set, []string{"http." + base + ".extraHeader", "Authorization: Basic " + auth})
	} else {
		cert, key := filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem")
		der, err := x509.MarshalPKCS8PrivateKey(creds.Cert.PrivateKey)
		if err != nil {
			return fmt.Errorf("client key: %w", err)
		}
		if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: creds.Cert.Certificate[0]}), 0o600); err != nil {
			return err
		}
		if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			return err
		}
		set = append(set, []string{"http." + base + ".sslCert", cert}, []string{"http." + base + ".sslKey", key})
	}
	git := func(args ...string) error {
		cmd := exec.Command("git", append([]string{"--git-dir", gitDir}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("git %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	// Settings of an earlier remote go first: a setting given twice is
	// taken twice by git.
	for _, kv := range set {
		exec.Command("git", "--git-dir", gitDir, "config", "--unset-all", kv[0]).Run()
		if err := git("config", "--add", kv[0], kv[1]); err != nil {
			return err
		}
	}
	exec.Command("git", "--git-dir", gitDir, "remote", "remove", remote).Run()
	if err := git("remote", "add", remote, url); err != nil {
		return err
	}
	fmt.Printf("remote %s: %s (through %s's router)\ngit push %s main builds and deploys %s\n", remote, url, ip, remote, app)
	if v := os.Getenv("GIT_SSL_CAINFO"); v != "" {
		fmt.Printf("note: GIT_SSL_CAINFO=%s is set and wins over the remote's CA: unset it for git push %s\n", v, remote)
	}
	return nil
}

func buildsCommand() *cobra.Command {
	f := &appFlags{}
	cmd := &cobra.Command{
		Use:   "builds [NUMBER]",
		Short: "List an app's builds, newest first, or show one with its output",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return f.withApp(30*time.Second, func(ctx context.Context, c *controller.Client, app controller.App) error {
				if len(args) == 1 {
					n, err := strconv.Atoi(strings.TrimPrefix(args[0], "#"))
					if err != nil {
						return fmt.Errorf("build %q: give its number (plinth builds -a %s lists them)", args[0], app.Name)
					}
					b, _, err := c.Build(ctx, controller.BuildID(app.Name, n), controller.QueryOptions{})
					if controller.IsNotFound(err) {
						return fmt.Errorf("no build %d of %s (plinth builds -a %s lists them)", n, app.Name, app.Name)
					}
					if err != nil {
						return err
					}
					if f.asJSON {
						return printJSON(b)
					}
					fmt.Printf("build %d of %s: %s, commit %.12s (%s), %s%s\n", b.Number, b.App, b.State, b.Commit, b.Ref, buildTook(b), releaseNote(b))
					if b.Reason != "" {
						fmt.Printf("reason: %s\n", b.Reason)
					}
					fmt.Print(b.Log)
					return nil
				}
				all, _, err := c.Builds(ctx, controller.QueryOptions{})
				if err != nil {
					return err
				}
				builds := slices.DeleteFunc(all, func(b controller.Build) bool { return b.App != app.Name })
				slices.SortFunc(builds, func(a, b controller.Build) int { return b.Number - a.Number })
				if f.asJSON {
					for i := range builds {
						builds[i].Log = ""
					}
					return printJSON(builds)
				}
				tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "BUILD\tCOMMIT\tSTATE\tSTARTED\tTOOK\tRELEASE\tHOST\tREASON")
				for _, b := range builds {
					rel := "-"
					if b.Release > 0 {
						rel = "v" + strconv.Itoa(b.Release)
					}
					fmt.Fprintf(tw, "%d\t%.12s\t%s\t%s\t%s\t%s\t%s\t%s\n", b.Number, b.Commit, b.State, age(b.Started), buildTook(b), rel, cmp.Or(b.Host, "-"), b.Reason)
				}
				return tw.Flush()
			})
		},
	}
	f.register(cmd)
	return cmd
}

func buildTook(b controller.Build) string {
	if b.Ended.IsZero() {
		return "running " + time.Since(b.Started).Round(time.Second).String()
	}
	return b.Ended.Sub(b.Started).Round(100 * time.Millisecond).String()
}

func releaseNote(b controller.Build) string {
	if b.Release == 0 {
		return ""
	}
	return fmt.Sprintf(", release v%d", b.Release)
}
