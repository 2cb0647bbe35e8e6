package vmtest

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// failureTailLines is how much console a failed test logs per VM.
const failureTailLines = 100

// startTimeout bounds Start in tests: QEMU creates its QMP socket within
// milliseconds, the guest boots afterwards.
const startTimeout = 30 * time.Second

// StartT starts a VM for a test and closes it when the test ends. Without a
// StateDir the VM gets a fresh directory under $TMPDIR that is removed if
// the test passes and kept if it fails; on failure the test log gets the
// console's last 100 lines and the paths of the full logs.
func StartT(t testing.TB, cfg Config) *VM {
	t.Helper()
	vms := StartN(t, cfg)
	return vms[0]
}

// StartN starts VMs for a test in parallel, so that N guests boot in about
// the time of one (with as many host cores), and closes them when the test
// ends, as StartT does. If any fails to start, the test stops.
func StartN(t testing.TB, cfgs ...Config) []*VM {
	t.Helper()
	cfgs = append([]Config(nil), cfgs...)
	ownDir := make([]bool, len(cfgs))
	for i := range cfgs {
		if cfgs[i].StateDir != "" {
			continue
		}
		dir, err := testStateDir(t, cfgs[i].Name)
		if err != nil {
			t.Fatal(err)
		}
		cfgs[i].StateDir, ownDir[i] = dir, true
	}
	vms := make([]*VM, len(cfgs))
	errs := make([]error, len(cfgs))
	ctx, cancel := context.WithTimeout(t.Context(), startTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for i, cfg := range cfgs {
		wg.Go(func() {
			vms[i], errs[i] = Start(ctx, cfg)
		})
	}
	wg.Wait()
	for i, vm := range vms {
		if vm != nil {
			t.Cleanup(func() { closeForTest(t, vm, ownDir[i]) })
		} else {
			t.Logf("vm %s: state kept in %s", cfgs[i].Name, cfgs[i].StateDir)
		}
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return vms
}

// closeForTest closes vm; it removes the state directory (if the harness
// made it) when the test passed and shows the console when it failed.
func closeForTest(t testing.TB, vm *VM, ownDir bool) {
	if err := vm.Close(); err != nil {
		t.Errorf("close vm %s: %v", vm.Name(), err)
	}
	if !t.Failed() {
		if ownDir {
			os.RemoveAll(vm.StateDir())
		}
		return
	}
	t.Logf("vm %s: console, last %d lines (full log %s, QEMU log %s/%s):\n%s",
		vm.Name(), failureTailLines, vm.ConsoleLog(), vm.StateDir(), qemuLogFile, vm.ConsoleTail(failureTailLines))
}

// safePathName replaces each run of characters other than letters, digits,
// '_', '.' and '-' with one '_'. (A package-level regexp would be compiled at
// every start of the plinth binary, PID 1's included.)
func safePathName(s string) string {
	var b strings.Builder
	underscore := false
	for _, r := range s {
		ok := r < 128 && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '.' || r == '-')
		if ok {
			b.WriteRune(r)
		} else if !underscore {
			b.WriteByte('_')
		}
		underscore = !ok
	}
	return b.String()
}

// testStateDir makes a state directory named after the test and VM, short
// enough for the QMP socket path.
func testStateDir(t testing.TB, name string) (string, error) {
	prefix := safePathName(t.Name())
	if len(prefix) > 32 {
		prefix = prefix[len(prefix)-32:]
	}
	if name == "" {
		name = "vm"
	}
	name = safePathName(name)
	if len(name) > 16 {
		name = name[:16]
	}
	return os.MkdirTemp("", "plinth-vm-"+prefix+"-"+name+"-")
}
