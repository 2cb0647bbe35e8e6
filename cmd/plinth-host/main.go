// Command plinth-host is a plinth machine's layer-0 binary: the
// initramfs's /init (stage 1, then PID 1), the services PID 1 runs before
// ready (netd, hostd) and the self-check, and each container's init,
// which the runtime starts by re-executing hostd's binary. It leaves out
// the CLI and the platform's services (the plinth binary, in the system
// image), so that each of those process starts runs fewer package
// initialisers and the initramfs is smaller. See docs/architecture.md.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/plinth-os/plinth/internal/layer0"
)

func main() {
	if layer0.Dispatch() {
		return
	}
	root := &cobra.Command{
		Use:           "plinth-host",
		Short:         "A plinth machine's layer 0: run by PID 1, not by hand (the CLI is plinth)",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(layer0.NetdCommand(), layer0.HostdCommand(), layer0.SelftestCommand())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "plinth-host:", err)
		os.Exit(1)
	}
}
