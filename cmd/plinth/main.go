// Command plinth is the CLI and the platform's services, and can run
// everything of layer 0 as well (init, netd, hostd), for hosts that are
// not plinth machines. A plinth machine's own /init is plinth-host, the
// same layer 0 without the rest. main only dispatches; the work lives in
// the packages.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/plinth-os/plinth/internal/layer0"
)

func main() {
	if layer0.Dispatch() {
		return
	}
	// "init" is reserved for the container runtime (above).
	if len(os.Args) > 1 && os.Args[1] == "init" {
		fmt.Fprintln(os.Stderr, "plinth: \"init\" is reserved for the container runtime; PID 1 is entered as /init or /sbin/init")
		os.Exit(2)
	}
	if err := rootCommand().Execute(); err != nil {
		// plinth run exits with its command's code.
		var code exitCode
		if errors.As(err, &code) {
			os.Exit(int(code))
		}
		os.Exit(1)
	}
}
