package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/bundle"
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/internal/layer0"
	"github.com/plinth-os/plinth/services/controller"
	"github.com/plinth-os/plinth/services/router"
)

func routerCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "router", Short: "The router: HTTP, TCP and UDP routes to services, on every host"}
	cmd.AddCommand(routerRunCommand())
	return cmd
}

func routerRunCommand() *cobra.Command {
	cfg := router.DefaultConfig()
	var credsPath, hostAPI string
	var plainAPI bool
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run a host's router (what the router job runs)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return runPlatformJob("router", credsPath, func(creds *bundle.Credentials, log *slog.Logger) (service, error) {
				hc := host.NewClient(hostAPI, creds.TLS())
				cfg.Controller = controller.NewHostClient(hc, creds.TLS())
				if !plainAPI {
					cfg.APITLS = creds.ServerTLS()
				}
				cfg.Logger = log
				return router.New(cfg)
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&credsPath, "credentials", layer0.JobCredentials, "host certificate of the cluster CA")
	fl.StringVar(&hostAPI, "host-api", controller.DefaultConfig().HostAPI, "the local host API")
	fl.StringVar(&cfg.HTTPAddr, "http", cfg.HTTPAddr, "address HTTP routes are served on")
	fl.StringVar(&cfg.HTTPSAddr, "https", cfg.HTTPSAddr, "address HTTPS routes are served on")
	fl.StringVar(&cfg.APIAddr, "api", cfg.APIAddr, "address of the router's API")
	fl.StringVar(&cfg.BindIP, "bind", cfg.BindIP, "address TCP and UDP routes listen on (default: every address)")
	fl.BoolVar(&cfg.AccessLog, "access-log", cfg.AccessLog, "log a line per HTTP request")
	fl.BoolVar(&plainAPI, "plain-api", false, "serve the API without TLS (tests only)")
	fl.MarkHidden("plain-api")
	return cmd
}

func routesCommand() *cobra.Command {
	f := &clusterFlags{}
	cmd := &cobra.Command{
		Use:   "routes",
		Short: "List, add and remove routes: HTTP by domain and path, TCP and UDP by port",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return withTimeout(30*time.Second, func(ctx context.Context) error { return listRoutes(ctx, f) })
		},
	}
	f.register(cmd, true)
	list := &cobra.Command{
		Use:   "list",
		Short: "List the routes, and whether every host's router serves them",
		Args:  cobra.NoArgs,
		RunE:  cmd.RunE,
	}
	cmd.AddCommand(list, routesAddCommand(f), routesRemoveCommand(f), routesDefaultCertCommand(f), routesDrainCommand(f), routesUndrainCommand(f), routesTCPPortsCommand(f))
	return cmd
}

func listRoutes(ctx context.Context, f *clusterFlags) error {
	c, err := f.controllerClient(ctx)
	if err != nil {
		return err
	}
	routes, _, err := c.Routes(ctx, controller.QueryOptions{Consistent: true})
	if err != nil {
		return err
	}
	if f.asJSON {
		for i := range routes {
			if routes[i].TLSKey != "" {
				routes[i].TLSKey = "(hidden)"
			}
		}
		return printJSON(routes)
	}
	problems := routerProblems(ctx, f, c)
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tTYPE\tMATCH\tSERVICE\tOPTIONS\tSTATUS")
	for _, r := range routes {
		status := "ok"
		if p := problems.of(r.ID); p != "" {
			status = p
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Type, routeMatch(r), r.Service, routeOptions(r), status)
	}
	if problems.general != "" {
		fmt.Fprintln(w, problems.general)
	}
	return w.Flush()
}

func routeMatch(r controller.Route) string {
	if r.Type == controller.RouteHTTP {
		return r.Domain + r.Path
	}
	return r.Ports()
}

func routeOptions(r controller.Route) string {
	var o []string
	for _, opt := range []struct {
		on   bool
		name string
	}{{r.TLSCert != "", "cert"}, {r.TLS, "tls"}, {r.Sticky, "sticky"}, {r.Leader, "leader"}, {r.ProxyProtocol, "proxy-protocol"}} {
		if opt.on {
			o = append(o, opt.name)
		}
	}
	if r.Timeout.Duration > 0 {
		o = append(o, "timeout="+r.Timeout.Duration.String())
	}
	return strings.Join(o, ",")
}

// problems are what the routers of the alive hosts say is wrong, per
// route ("port in use on node-2"), or in general.
type problems struct {
	byRoute map[string][]string
	general string
}

func (p problems) of(id string) string { return strings.Join(p.byRoute[id], "; ") }

func routerProblems(ctx context.Context, f *clusterFlags, c *controller.Client) problems {
	p := problems{byRoute: map[string][]string{}}
	creds, err := f.credentials()
	if err != nil {
		p.general = "the routers were not asked: " + err.Error()
		return p
	}
	hosts, _, err := c.Hosts(ctx, controller.QueryOptions{})
	if err != nil {
		p.general = "hosts: " + err.Error()
		return p
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var unreachable []string
	for _, h := range hosts {
		if h.Status != "alive" {
			continue
		}
		wg.Go(func() {
			addr, err := router.HostAddr(h)
			var st router.Status
			if err == nil {
				sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				st, err = router.NewClient(addr, creds.TLS()).Status(sctx)
				cancel()
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil || !st.Loaded {
				unreachable = append(unreachable, h.Hostname)
				return
			}
			for _, rs := range st.Routes {
				if rs.Error != "" {
					p.byRoute[rs.ID] = append(p.byRoute[rs.ID], h.Hostname+": "+rs.Error)
				}
			}
			if st.TableError != "" {
				p.general += h.Hostname + ": HTTP routes not applied: " + st.TableError + "\n"
			}
		})
	}
	wg.Wait()
	if len(unreachable) > 0 {
		p.general += fmt.Sprintf("no router answers (yet) on %s", strings.Join(unreachable, ", "))
	}
	return p
}

func routesAddCommand(f *clusterFlags) *cobra.Command {
	var r controller.Route
	var certFile, keyFile, ports string
	var timeout, connectTimeout time.Duration
	add := func(kind string) *cobra.Command {
		return &cobra.Command{
			Args: cobra.ExactArgs(map[string]int{controller.RouteHTTP: 1}[kind]),
			RunE: func(_ *cobra.Command, args []string) error {
				r.Type = kind
				if kind == controller.RouteHTTP {
					r.Domain, r.Path = args[0], ""
					if i := strings.IndexByte(args[0], '/'); i >= 0 {
						r.Domain, r.Path = args[0][:i], args[0][i:]
					}
				}
				if ports != "" {
					first, last, err := controller.ParsePortRange(ports)
					if err != nil {
						return err
					}
					r.Port = first
					if last != first {
						r.PortEnd = last
					}
				}
				if (certFile == "") != (keyFile == "") {
					return errors.New("give --tls-cert and --tls-key together")
				}
				if certFile != "" {
					cert, err := os.ReadFile(certFile)
					if err != nil {
						return err
					}
					key, err := os.ReadFile(keyFile)
					if err != nil {
						return err
					}
					r.TLSCert, r.TLSKey = string(cert), string(key)
				}
				r.Timeout, r.ConnectTimeout = job.Duration{Duration: timeout}, job.Duration{Duration: connectTimeout}
				return f.withController(30*time.Second, func(ctx context.Context, c *controller.Client) error {
					got, err := c.AddRoute(ctx, r)
					if err != nil {
						return err
					}
					fmt.Printf("route %s: %s %s → service %s\n", got.ID, got.Type, routeMatch(got), got.Service)
					return nil
				})
			},
		}
	}
	cmd := &cobra.Command{Use: "add", Short: "Add a route"}
	http := add(controller.RouteHTTP)
	http.Use, http.Short = "http DOMAIN[/PATH] --service S", "Route HTTP(S) requests for DOMAIN (or *.DOMAIN) under PATH to a service"
	http.Flags().BoolVar(&r.Sticky, "sticky", false, "keep each client on one instance (signed cookie)")
	http.Flags().StringVar(&certFile, "tls-cert", "", "PEM certificate for DOMAIN, presented by SNI (default: the cluster's)")
	http.Flags().StringVar(&keyFile, "tls-key", "", "PEM private key of --tls-cert")
	http.Flags().DurationVar(&timeout, "timeout", 0, "how long a response may take (default 60s)")
	tcp := add(controller.RouteTCP)
	tcp.Use, tcp.Short = "tcp --service S [--port N]", "Route a TCP port to a service (a free port of the range when none is given)"
	tcp.Flags().StringVar(&ports, "port", "", "port on every host (default: one from setting "+controller.TCPPortsSetting+")")
	tcp.Flags().BoolVar(&r.TLS, "tls", false, "terminate TLS (with --tls-cert, or the cluster's certificate)")
	tcp.Flags().StringVar(&certFile, "tls-cert", "", "PEM certificate to terminate TLS with")
	tcp.Flags().StringVar(&keyFile, "tls-key", "", "PEM private key of --tls-cert")
	tcp.Flags().BoolVar(&r.Leader, "leader", false, "only the service's leader gets connections")
	tcp.Flags().BoolVar(&r.ProxyProtocol, "proxy-protocol", false, "send a PROXY protocol v2 header to the instance")
	tcp.Flags().DurationVar(&timeout, "idle-timeout", 0, "close connections idle this long (default: never)")
	udp := add(controller.RouteUDP)
	udp.Use, udp.Short = "udp --service S --port N[-M]", "Route a UDP port or port range to a service, with client affinity"
	udp.Flags().StringVar(&ports, "port", "", "port or range on every host")
	udp.Flags().DurationVar(&timeout, "idle-timeout", 0, "end a client's session after this long without packets (default 60s)")
	udp.MarkFlagRequired("port")
	for _, c := range []*cobra.Command{http, tcp, udp} {
		c.Flags().StringVar(&r.Service, "service", "", "the discovery service to send the traffic to")
		c.MarkFlagRequired("service")
		cmd.AddCommand(c)
	}
	for _, c := range []*cobra.Command{http, tcp} {
		c.Flags().DurationVar(&connectTimeout, "connect-timeout", 0, "how long connecting to an instance may take (default 5s)")
	}
	return cmd
}

func routesRemoveCommand(f *clusterFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "remove ID...",
		Short: "Remove routes: no new work for them; connections already open run on",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return f.withController(30*time.Second, func(ctx context.Context, c *controller.Client) error {
				for _, id := range args {
					if err := c.DeleteRoute(ctx, id); err != nil {
						return err
					}
					fmt.Printf("route %s removed\n", id)
				}
				return nil
			})
		},
	}
}

func routesDefaultCertCommand(f *clusterFlags) *cobra.Command {
	var certFile, keyFile string
	cmd := &cobra.Command{
		Use:   "default-cert --tls-cert F --tls-key F",
		Short: "Set the certificate HTTPS and TLS TCP routes without their own present",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			cert, err := os.ReadFile(certFile)
			if err != nil {
				return err
			}
			key, err := os.ReadFile(keyFile)
			if err != nil {
				return err
			}
			leaf, err := controller.ParseCertificate(string(cert), string(key))
			if err != nil {
				return err
			}
			return f.withController(30*time.Second, func(ctx context.Context, c *controller.Client) error {
				// Two writes: a router that sees one before the other
				// keeps the last pair that parsed until both are there.
				if _, err := c.PutSetting(ctx, controller.DefaultKeySetting, string(key), nil); err != nil {
					return err
				}
				if _, err := c.PutSetting(ctx, controller.DefaultCertSetting, string(cert), nil); err != nil {
					return err
				}
				fmt.Printf("default certificate: %s (until %s)\n", strings.Join(leaf.DNSNames, ", "), leaf.NotAfter.UTC().Format(time.DateOnly))
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&certFile, "tls-cert", "", "PEM certificate chain")
	cmd.Flags().StringVar(&keyFile, "tls-key", "", "PEM private key")
	cmd.MarkFlagRequired("tls-cert")
	cmd.MarkFlagRequired("tls-key")
	return cmd
}

func routesDrainCommand(f *clusterFlags) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "drain INSTANCE",
		Short: "Give an instance no new work and wait until every router has none of its work in flight",
		Long: "INSTANCE is an instance ID as plinth services shows it (<host>/<job>/<service>).\n" +
			"It stays draining until it stops, or until `plinth routes undrain INSTANCE`.",
		Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return f.withController(timeout+30*time.Second, func(ctx context.Context, c *controller.Client) error {
				creds, err := f.credentials()
				if err != nil {
					return err
				}
				res, err := router.Drain(ctx, c, func(addr string) *router.Client { return router.NewClient(addr, creds.TLS()) }, args[0], timeout)
				if err != nil {
					return err
				}
				for h, idle := range res.Idle {
					switch {
					case idle.Serving:
						fmt.Printf("%s: the router has not applied the drain (%d in flight)\n", h, idle.Active)
					case idle.Active > 0:
						fmt.Printf("%s: %d still in flight\n", h, idle.Active)
					}
				}
				for h, err := range res.Errors {
					fmt.Printf("%s: %v\n", h, err)
				}
				if !res.Drained() {
					return fmt.Errorf("instance %s not drained after %s", args[0], res.Took.Round(time.Millisecond))
				}
				fmt.Printf("instance %s drained in %s: no work in flight on %d routers\n", args[0], res.Took.Round(time.Millisecond), len(res.Idle))
				return nil
			})
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "how long to wait for the work in flight to end (at most "+router.MaxIdleWait.String()+")")
	return cmd
}

func routesUndrainCommand(f *clusterFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "undrain INSTANCE",
		Short: "Give a drained instance new work again",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return f.withController(30*time.Second, func(ctx context.Context, c *controller.Client) error {
				if _, err := c.DrainInstance(ctx, args[0], false); err != nil {
					return err
				}
				fmt.Printf("instance %s serving again\n", args[0])
				return nil
			})
		},
	}
}

func routesTCPPortsCommand(f *clusterFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "tcp-ports [N-M]",
		Short: "Show or set the range TCP routes without a port get theirs from",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return f.withController(30*time.Second, func(ctx context.Context, c *controller.Client) error {
				if len(args) == 0 {
					s, _, err := c.Setting(ctx, controller.TCPPortsSetting, controller.QueryOptions{Consistent: true})
					if controller.IsNotFound(err) {
						fmt.Println(controller.DefaultTCPPorts + " (default)")
						return nil
					}
					if err == nil {
						fmt.Println(s.Value)
					}
					return err
				}
				if _, _, err := controller.ParsePortRange(args[0]); err != nil {
					return err
				}
				if _, err := c.PutSetting(ctx, controller.TCPPortsSetting, args[0], nil); err != nil {
					return err
				}
				fmt.Printf("tcp routes without a port get one of %s (routes keep the ports they have)\n", args[0])
				return nil
			})
		},
	}
}
