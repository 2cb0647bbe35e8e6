package updater

import (
	"context"
	"fmt"
	"time"

	"github.com/plinth-os/plinth/services/controller"
)

// DrainReader is what WaitDrained reads.
type DrainReader interface {
	Placements(ctx context.Context, q controller.QueryOptions) ([]controller.Placement, controller.QueryMeta, error)
	Formations(ctx context.Context, q controller.QueryOptions) ([]controller.Formation, controller.QueryMeta, error)
}

// WaitDrained follows the placements until no count formation has one
// on hostID (omni formations' jobs stay on every host). progress, when
// not nil, hears how many jobs are left each time that changes. It
// returns which formations are omni.
func WaitDrained(ctx context.Context, c DrainReader, hostID string, progress func(left int)) (omni map[string]bool, err error) {
	var index uint64
	left := -1
	for {
		ps, meta, err := c.Placements(ctx, controller.QueryOptions{Index: index, Wait: 30 * time.Second})
		if err != nil {
			return nil, fmt.Errorf("follow the drain: %w", err)
		}
		fs, _, err := c.Formations(ctx, controller.QueryOptions{})
		if err != nil {
			return nil, fmt.Errorf("follow the drain: %w", err)
		}
		omni = map[string]bool{}
		for _, f := range fs {
			omni[f.Name] = f.Omni
		}
		n := 0
		for _, p := range ps {
			if p.Host == hostID && !omni[p.Formation] {
				n++
			}
		}
		if n != left && progress != nil {
			progress(n)
		}
		left = n
		if n == 0 {
			return omni, nil
		}
		index = meta.Index
	}
}
