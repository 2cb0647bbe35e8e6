package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/spf13/cobra"

	"github.com/plinth-os/plinth/host/imagestore"
	"github.com/plinth-os/plinth/services/controller"
	"github.com/plinth-os/plinth/services/updater"
)

// clusterUpgradeCommand is `plinth cluster upgrade FILE`.
func clusterUpgradeCommand() *cobra.Command {
	f := &clusterFlags{}
	var allowDowngrade, cancel, detach bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "upgrade [FILE]",
		Short: "Upgrade every host of the cluster to a signed image, one host at a time",
		Long: "upgrade pushes the upgrade bundle FILE (out/upgrade.bundle of `make image`) to the\n" +
			"cluster's registry and starts a rolling upgrade: the updater (run by the active\n" +
			"scheduler) takes one host at a time, drains it, has it write the bundle into its\n" +
			"other slot and reboot into it, waits until it is back on the new version with its\n" +
			"jobs healthy, and uncordons it. A controller voter goes down only while every other\n" +
			"voter is healthy. The upgrade stops at the first host that does not come back\n" +
			"healthy (that host goes back to its old version). The command follows the upgrade\n" +
			"until it ends; with --detach it only starts it, and without FILE it follows the\n" +
			"running one (or shows the last). --cancel stops the running upgrade after its\n" +
			"current step.",
		Args: cobra.MaximumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return f.withController(timeout, func(ctx context.Context, c *controller.Client) error {
				switch {
				case cancel:
					return cancelUpgrade(ctx, c)
				case len(args) == 0:
					return followUpgrade(ctx, c, "", f.asJSON)
				}
				up, err := startUpgrade(ctx, f, c, args[0], allowDowngrade)
				if err != nil {
					return err
				}
				fmt.Printf("upgrade %s: every host to %s\n", up.ID, up.Version)
				if detach {
					return nil
				}
				return followUpgrade(ctx, c, up.ID, f.asJSON)
			})
		},
	}
	f.register(cmd, true)
	fl := cmd.Flags()
	fl.BoolVar(&allowDowngrade, "allow-downgrade", false, "allow a version older than the hosts' own")
	fl.BoolVar(&cancel, "cancel", false, "stop the running upgrade after its current step")
	fl.BoolVar(&detach, "detach", false, "start the upgrade and return")
	fl.DurationVar(&timeout, "timeout", 4*time.Hour, "how long to follow the upgrade")
	return cmd
}

// startUpgrade pushes the bundle to the registry and records the
// upgrade for the updater.
func startUpgrade(ctx context.Context, f *clusterFlags, c *controller.Client, path string, allowDowngrade bool) (controller.Upgrade, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return controller.Upgrade{}, fmt.Errorf("bundle: %w", err)
	}
	img, m, err := updater.BundleImage(data)
	if err != nil {
		return controller.Upgrade{}, fmt.Errorf("%s: %w", path, err)
	}
	creds, err := f.credentials()
	if err != nil {
		return controller.Upgrade{}, err
	}
	ref, err := name.ParseReference(f.registryAddr() + "/" + updater.BundleRepo + ":" + updater.BundleTag(m.Version))
	if err != nil {
		return controller.Upgrade{}, err
	}
	opts := []remote.Option{remote.WithContext(ctx), remote.WithTransport(imagestore.TLSTransport(creds.TLS()))}
	if err := pushWithProgress(ctx, ref, img, opts); err != nil {
		return controller.Upgrade{}, fmt.Errorf("push the bundle: %w", err)
	}
	digest, err := img.Digest()
	if err != nil {
		return controller.Upgrade{}, err
	}
	return updater.Start(ctx, c, updater.NewUpgrade(m, digest.String(), allowDowngrade, time.Now()))
}

// followUpgrade prints an upgrade's log as it grows until it ends; id
// "" follows the running upgrade, or shows the newest.
func followUpgrade(ctx context.Context, c *controller.Client, id string, asJSON bool) error {
	if id == "" {
		ups, _, err := c.Upgrades(ctx, controller.QueryOptions{})
		if err != nil {
			return err
		}
		// The running one, else the newest.
		var newest *controller.Upgrade
		for i := range ups {
			u := &ups[i]
			switch {
			case newest == nil, u.State == controller.UpgradeRunning:
				newest = u
			case newest.State != controller.UpgradeRunning && u.Started.After(newest.Started):
				newest = u
			}
		}
		if newest == nil {
			fmt.Println("no upgrade has run")
			return nil
		}
		id = newest.ID
	}
	var index uint64
	last := "" // the last log line printed
	for {
		up, meta, err := c.Upgrade(ctx, id, controller.QueryOptions{Index: index, Wait: 30 * time.Second})
		if err != nil {
			// A controller host goes down for its own upgrade: the
			// client moves to another as soon as one answers.
			if ctx.Err() != nil || controller.IsNotFound(err) {
				return err
			}
			time.Sleep(2 * time.Second)
			continue
		}
		index = meta.Index
		if asJSON && up.State != controller.UpgradeRunning {
			return printJSON(up)
		}
		// The log keeps its newest lines: print those after the last one
		// printed (each starts with its time).
		start := 0
		if i := slices.Index(up.Log, last); i >= 0 {
			start = i + 1
		}
		for _, line := range up.Log[start:] {
			fmt.Println("  " + line)
		}
		if len(up.Log) > 0 {
			last = up.Log[len(up.Log)-1]
		}
		switch up.State {
		case controller.UpgradeDone:
			fmt.Printf("upgrade %s done: every host runs %s\n", up.ID, up.Version)
			return nil
		case controller.UpgradeFailed:
			return fmt.Errorf("upgrade %s failed: %s", up.ID, up.Reason)
		case controller.UpgradeCanceled:
			return errors.New("upgrade " + up.ID + " canceled")
		}
	}
}

func cancelUpgrade(ctx context.Context, c *controller.Client) error {
	ups, _, err := c.Upgrades(ctx, controller.QueryOptions{Consistent: true})
	if err != nil {
		return err
	}
	for _, u := range ups {
		if u.State != controller.UpgradeRunning {
			continue
		}
		cas := u.ModifyIndex
		u.State, u.Reason = controller.UpgradeCanceled, "canceled by the operator"
		if _, err := c.PutUpgrade(ctx, u, &cas); err != nil {
			return err
		}
		fmt.Printf("upgrade %s canceled; the host being upgraded finishes its step, cordoned hosts stay cordoned until uncordoned\n", u.ID)
		return nil
	}
	return errors.New("no upgrade is running")
}
