package layer0

import (
	"os"
	"path/filepath"

	"github.com/plinth-os/plinth/host/container"
	boot "github.com/plinth-os/plinth/init"
)

// Dispatch runs this process as a container's init or as the machine's
// init when it is one, and returns false when it is neither, for the
// binary's own commands.
func Dispatch() bool {
	// A container's setup re-executes hostd's binary as "<self> init"
	// inside the container's PID namespace, where it is PID 1 too:
	// recognise it before anything looks at the PID.
	if container.IsInit() {
		container.Init()
		return true
	}
	// PID 1 and stage 1 are recognised before any argument parsing: the
	// kernel may pass stray command-line words as arguments to init.
	if os.Getpid() == 1 || filepath.Clean(os.Args[0]) == "/init" {
		boot.Main()
		return true
	}
	return false
}
