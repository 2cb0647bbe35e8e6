// Command plinth is the one binary of a plinth machine: init (stage 1 as
// /init, PID 1 as /sbin/init), the layer-0 services, and the CLI. main only
// dispatches; the work lives in the packages.
package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/plinth-os/plinth/host/container"
	boot "github.com/plinth-os/plinth/init"
)

func main() {
	// A container's setup re-executes this binary as "<self> init" inside
	// the container's PID namespace, where it is PID 1 too: recognise it
	// before anything looks at the PID.
	if container.IsInit() {
		container.Init()
		return
	}
	// PID 1 and stage 1 are recognised before any argument parsing: the
	// kernel may pass stray command-line words as arguments to init.
	if os.Getpid() == 1 || filepath.Clean(os.Args[0]) == "/init" {
		boot.Main()
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
