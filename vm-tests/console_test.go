package vmtest

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// consoleVM returns a VM with only a console, fed through the returned
// writer; closing the writer ends the console as QEMU's exit would.
func consoleVM(t *testing.T) (*VM, io.WriteCloser) {
	t.Helper()
	log, err := os.Create(filepath.Join(t.TempDir(), consoleLogFile))
	if err != nil {
		t.Fatal(err)
	}
	r, w := io.Pipe()
	v := &VM{cfg: Config{Name: "fake"}, console: newConsole(log, nil), exited: make(chan struct{})}
	go func() {
		v.console.copyFrom(r)
		close(v.exited)
	}()
	return v, w
}

func TestWaitForFollowsTheConsole(t *testing.T) {
	v, w := consoleVM(t)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()

	io.WriteString(w, "boot 1\r\nready\r\nboot 2\r\nrea")
	if line, err := v.WaitFor(ctx, "ready"); err != nil || line != "ready" {
		t.Fatalf("WaitFor(ready) = %q, %v", line, err)
	}
	// The second "ready" is not complete yet; a wait must not match the
	// line already matched.
	go io.WriteString(w, "dy again\n")
	line, err := v.WaitFor(ctx, "ready")
	if err != nil || line != "ready again" {
		t.Fatalf("second WaitFor(ready) = %q, %v; want the next occurrence", line, err)
	}
	// Earlier lines are behind the cursor.
	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancelShort()
	if _, err := v.WaitFor(short, "boot 2"); err == nil {
		t.Error("WaitFor matched a line before the previous match")
	}
	go io.WriteString(w, "uptime 2.61\n")
	line, err = v.WaitForRegexp(ctx, regexp.MustCompile(`^uptime [0-9.]+$`))
	if err != nil || line != "uptime 2.61" {
		t.Fatalf("WaitForRegexp = %q, %v", line, err)
	}
	if got := v.Console(); got != "boot 1\nready\nboot 2\nready again\nuptime 2.61\n" {
		t.Errorf("Console() = %q", got)
	}
	if got := v.ConsoleTail(2); got != "ready again\nuptime 2.61" {
		t.Errorf("ConsoleTail(2) = %q", got)
	}
}

func TestWaitForFailsFast(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()

	v, w := consoleVM(t)
	io.WriteString(w, "[    2.1] Kernel panic - not syncing: Attempted to kill init!\n")
	if _, err := v.WaitFor(ctx, "ready"); err == nil || !strings.Contains(err.Error(), "kernel panic") {
		t.Errorf("after a panic: %v, want a kernel panic error", err)
	}

	v, w = consoleVM(t)
	io.WriteString(w, "last words")
	w.Close()
	if _, err := v.WaitFor(ctx, "ready"); err == nil || !strings.Contains(err.Error(), "exited") {
		t.Errorf("after exit: %v, want an exit error", err)
	}
	if line, err := v.WaitFor(ctx, "last"); err != nil || line != "last words" {
		t.Errorf("unterminated last line: %q, %v", line, err)
	}
	logged, _ := os.ReadFile(filepath.Join(filepath.Dir(v.console.log.Name()), consoleLogFile))
	if string(logged) != "last words" {
		t.Errorf("console.log = %q", logged)
	}
}
