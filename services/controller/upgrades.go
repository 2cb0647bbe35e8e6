package controller

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"time"

	memdb "github.com/hashicorp/go-memdb"
)

// Upgrade is a rolling upgrade of the cluster's hosts to one signed
// image, one host at a time. The updater (services/updater) carries it
// out and records every step here, so that an updater that dies, or
// whose own host is upgraded, is followed by one that continues where
// it was.
type Upgrade struct {
	// ID names the upgrade; the CLI uses the target version.
	ID      string `json:"id"`
	Version string `json:"version"`
	Serial  uint64 `json:"serial"`
	// Bundle is the upgrade bundle's image in the cluster registry,
	// <repo>@sha256:….
	Bundle         string `json:"bundle"`
	AllowDowngrade bool   `json:"allow_downgrade,omitempty"`
	// State is UpgradeRunning, UpgradeDone, UpgradeFailed or
	// UpgradeCanceled.
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"`
	// Hosts are the hosts in the order they are upgraded, with where each
	// stands. The updater fills them in when it starts.
	Hosts []UpgradeHost `json:"hosts,omitempty"`
	// Log is the upgrade's steps, newest last (the last maxUpgradeLog).
	Log     []string  `json:"log,omitempty"`
	Started time.Time `json:"started"`
	Ended   time.Time `json:"ended,omitzero"`
	Meta
}

func (u *Upgrade) key() string { return u.ID }

// UpgradeHost is one host's part of an upgrade.
type UpgradeHost struct {
	ID       string `json:"id"`
	Hostname string `json:"hostname,omitempty"`
	// Voter: the host is a controller voter; the updater takes one down
	// only while every other voter is healthy.
	Voter bool `json:"voter,omitempty"`
	// From is the version the host ran before.
	From string `json:"from,omitempty"`
	// State is one of the HostUpgrade* steps.
	State string    `json:"state"`
	Since time.Time `json:"since,omitzero"`
	Note  string    `json:"note,omitempty"`
	// Booted is when the host's hostd started before the upgrade's
	// reboot: a different time means the host is back.
	Booted time.Time `json:"booted,omitzero"`
}

// Upgrade states.
const (
	UpgradeRunning  = "running"
	UpgradeDone     = "done"
	UpgradeFailed   = "failed"
	UpgradeCanceled = "canceled"
)

// A host's steps in an upgrade, in order.
const (
	HostUpgradePending    = "pending"
	HostUpgradeDraining   = "draining"   // cordoned, its jobs moving away
	HostUpgradeInstalling = "installing" // the bundle on its way to the host
	HostUpgradeRebooting  = "rebooting"  // into the new slot, on trial
	HostUpgradeVerifying  = "verifying"  // back; its platform jobs becoming healthy
	HostUpgradeDone       = "done"
	HostUpgradeSkipped    = "skipped" // on the version already
	HostUpgradeFailed     = "failed"
)

// maxUpgradeLog bounds an upgrade's log.
const maxUpgradeLog = 200

var upgradeIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

func checkUpgrade(o object) error {
	u := o.(*Upgrade)
	switch {
	case !upgradeIDRe.MatchString(u.ID):
		return fmt.Errorf("%w: upgrade id %q: letters, digits, '.', '_' and '-', at most 63", ErrInvalid, u.ID)
	case u.Version == "":
		return fmt.Errorf("%w: upgrade %s has no version", ErrInvalid, u.ID)
	case u.Bundle == "":
		return fmt.Errorf("%w: upgrade %s has no bundle", ErrInvalid, u.ID)
	case !slices.Contains([]string{UpgradeRunning, UpgradeDone, UpgradeFailed, UpgradeCanceled}, u.State):
		return fmt.Errorf("%w: upgrade state %q", ErrInvalid, u.State)
	case len(u.Log) > maxUpgradeLog:
		return fmt.Errorf("%w: upgrade log of %d lines (at most %d)", ErrInvalid, len(u.Log), maxUpgradeLog)
	}
	for _, h := range u.Hosts {
		if !slices.Contains([]string{HostUpgradePending, HostUpgradeDraining, HostUpgradeInstalling, HostUpgradeRebooting,
			HostUpgradeVerifying, HostUpgradeDone, HostUpgradeSkipped, HostUpgradeFailed}, h.State) {
			return fmt.Errorf("%w: upgrade host %s state %q", ErrInvalid, h.ID, h.State)
		}
	}
	return nil
}

// admitUpgrade lets one upgrade run at a time, and stamps its times.
func admitUpgrade(txn *memdb.Txn, _ uint64, t time.Time, o object) error {
	u := o.(*Upgrade)
	it, err := txn.Get("upgrades", "id")
	if err != nil {
		return err
	}
	var old *Upgrade
	for raw := it.Next(); raw != nil; raw = it.Next() {
		other := raw.(*Upgrade)
		if other.ID == u.ID {
			old = other
			continue
		}
		if other.State == UpgradeRunning && u.State == UpgradeRunning {
			return fmt.Errorf("%w: upgrade %s (to %s) is running; wait for it or cancel it (plinth cluster upgrade --cancel)", ErrConflict, other.ID, other.Version)
		}
	}
	switch {
	case old == nil && u.State != UpgradeRunning:
		return fmt.Errorf("%w: a new upgrade starts running", ErrInvalid)
	case old == nil:
		u.Started = t
	default:
		if old.State != UpgradeRunning && u.State == UpgradeRunning {
			return fmt.Errorf("%w: upgrade %s has ended (%s); start a new one", ErrConflict, u.ID, old.State)
		}
		u.Started = old.Started
	}
	if u.State != UpgradeRunning && u.Ended.IsZero() {
		u.Ended = t
	}
	return nil
}

// Upgrades lists the cluster upgrades.
func (c *Client) Upgrades(ctx context.Context, q QueryOptions) ([]Upgrade, QueryMeta, error) {
	return listOf[Upgrade](c, ctx, "upgrades", q)
}

// Upgrade reads one upgrade.
func (c *Client) Upgrade(ctx context.Context, id string, q QueryOptions) (Upgrade, QueryMeta, error) {
	var out Upgrade
	m, err := c.call(ctx, http.MethodGet, queryPath("/v1/upgrades/"+url.PathEscape(id), q), nil, &out)
	return out, m, err
}

// PutUpgrade writes an upgrade; with cas, only if its ModifyIndex is
// *cas (0: only if it does not exist).
func (c *Client) PutUpgrade(ctx context.Context, u Upgrade, cas *uint64) (Upgrade, error) {
	var out Upgrade
	_, err := c.call(ctx, http.MethodPut, casPath("/v1/upgrades/"+url.PathEscape(u.ID), cas), u, &out)
	return out, err
}
