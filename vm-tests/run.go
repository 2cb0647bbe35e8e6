package vmtest

import (
	"context"
	"fmt"
	"io"
	"time"
)

// Run boots one VM, streams its console to out and returns when QEMU exits:
// nil if it exited with status 0. When ctx ends (e.g. on SIGINT), Run
// presses the power button and waits up to 30 s for the guest to power off
// before it kills QEMU. It is the body of `plinth vm run`.
func Run(ctx context.Context, cfg Config, out io.Writer) error {
	if cfg.Console != nil && out != nil {
		cfg.Console = io.MultiWriter(cfg.Console, out)
	} else if out != nil {
		cfg.Console = out
	}
	vm, err := Start(ctx, cfg)
	if err != nil {
		return err
	}
	defer vm.Close()

	select {
	case <-vm.Exited():
		return vm.exitError()
	case <-ctx.Done():
	}
	pctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := vm.Powerdown(pctx); err != nil {
		select {
		case <-vm.Exited():
			return vm.exitError()
		default:
			return err
		}
	}
	select {
	case <-vm.Exited():
		return vm.exitError()
	case <-pctx.Done():
		return fmt.Errorf("vm %s: guest did not power off within %s of system_powerdown; killed it",
			vm.Name(), shutdownGrace.Round(time.Second))
	}
}

// shutdownGrace bounds how long Run waits for a guest to power off after
// system_powerdown before it kills QEMU. Under TCG an ordered shutdown of
// plinth init takes seconds, not minutes.
const shutdownGrace = 30 * time.Second

// exitError is nil if QEMU exited with status 0; only valid after Exited.
func (v *VM) exitError() error {
	if v.waitErr == nil {
		return nil
	}
	return fmt.Errorf("vm %s: %s", v.cfg.Name, v.exitDescription())
}
