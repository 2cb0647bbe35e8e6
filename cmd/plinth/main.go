// Command plinth is the one binary of a plinth machine: init (stage 1 as
// /init, PID 1 as /sbin/init), the layer-0 services, and the CLI. main only
// dispatches; the work lives in the packages.
package main

import (
	"fmt"
	"os"
	"path/filepath"

	boot "github.com/plinth-os/plinth/init"
)

func main() {
	// PID 1 and stage 1 are recognised before any argument parsing: the
	// kernel may pass stray command-line words as arguments to init.
	if os.Getpid() == 1 || filepath.Clean(os.Args[0]) == "/init" {
		boot.Main()
		return
	}
	// "init" is reserved: the container runtime re-executes this binary
	// as "<self> init" to become a container's init.
	if len(os.Args) > 1 && os.Args[1] == "init" {
		fmt.Fprintln(os.Stderr, "plinth: \"init\" is reserved for the container runtime; PID 1 is entered as /init or /sbin/init")
		os.Exit(2)
	}
	if err := rootCommand().Execute(); err != nil {
		os.Exit(1)
	}
}
