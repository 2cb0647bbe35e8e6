package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/plinth-os/plinth/host"
)

// clientRunner runs f with a host client and a context that Ctrl-C ends.
type clientRunner func(f func(ctx context.Context, c *host.Client, args []string) error) func(*cobra.Command, []string) error

// hostUpgradeCommand is `plinth host upgrade FILE|URL`.
func hostUpgradeCommand(withClient clientRunner) *cobra.Command {
	var opts host.UpgradeOptions
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "upgrade FILE|URL",
		Short: "Upgrade one disk-installed host from a signed bundle",
		Long: "upgrade sends an upgrade bundle (out/upgrade.bundle of `make image`) to the host,\n" +
			"which checks its size, signature, architecture, digests and version before\n" +
			"writing anything, writes it into the slot it does not run, and reboots into it\n" +
			"on trial. The new slot is committed once the host is back in the cluster with\n" +
			"its jobs running; otherwise the host goes back to the old slot by itself.\n" +
			"With --wait, the command follows the host until it has committed or fallen back.",
		Args: cobra.ExactArgs(1),
		RunE: withClient(func(ctx context.Context, c *host.Client, args []string) error {
			src, err := openBundle(ctx, args[0])
			if err != nil {
				return err
			}
			defer src.Close()
			before, err := c.Host(ctx)
			if err != nil {
				return err
			}
			res, err := c.Upgrade(ctx, src, opts)
			if err != nil {
				return err
			}
			fmt.Printf("%s: %s written into slot %s", before.Hostname, res.Version, res.Slot)
			if !res.Rebooting {
				fmt.Println("; it boots on trial at the next reboot")
				return nil
			}
			fmt.Println("; rebooting into it on trial")
			if wait == 0 {
				return nil
			}
			return waitUpgrade(ctx, c, before, res, wait)
		}),
	}
	f := cmd.Flags()
	f.BoolVar(&opts.AllowDowngrade, "allow-downgrade", false, "allow a version older than the running one")
	f.IntVar(&opts.Tries, "tries", 0, "boots the new slot gets to become healthy (default 3)")
	f.BoolVar(&opts.NoReboot, "no-reboot", false, "write the slot but do not reboot")
	f.DurationVar(&wait, "wait", 0, "follow the host until it committed the new slot or fell back, for at most this long")
	return cmd
}

// openBundle opens a bundle file or fetches an http(s) URL.
func openBundle(ctx context.Context, src string) (io.ReadCloser, error) {
	if !strings.HasPrefix(src, "http://") && !strings.HasPrefix(src, "https://") {
		f, err := os.Open(src)
		if err != nil {
			return nil, fmt.Errorf("bundle: %w", err)
		}
		return f, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, src, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("bundle %s: %s", src, resp.Status)
	}
	return resp.Body, nil
}

// waitUpgrade follows a host through its reboot until it reports the
// new version committed, or the upgrade failed and it is back on the
// old one.
func waitUpgrade(ctx context.Context, c *host.Client, before host.HostInfo, res host.UpgradeResult, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	start := time.Now()
	last := ""
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not commit %s within %s (last: %s)", before.Hostname, res.Version, limit, orNone(last))
		case <-time.After(2 * time.Second):
		}
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		info, err := c.Host(cctx)
		ccancel()
		if err != nil || !info.StartedAt.After(before.StartedAt) {
			continue // still going down, or not up again
		}
		if info.Slots.Upgrade != last {
			last = info.Slots.Upgrade
			fmt.Printf("[%5.0fs] %s runs %s: %s\n", time.Since(start).Seconds(), before.Hostname, info.Version, last)
		}
		switch {
		case info.Version == res.Version && info.Slots.Upgrade == "committed":
			return nil
		case strings.HasPrefix(info.Slots.Upgrade, "failed:"):
			return fmt.Errorf("upgrade of %s to %s failed; it is back on %s", before.Hostname, res.Version, info.Version)
		}
	}
}

func orNone(s string) string {
	if s == "" {
		return "no answer"
	}
	return s
}
