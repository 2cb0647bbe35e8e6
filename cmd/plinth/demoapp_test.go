package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/plinth-os/plinth/host/imagestore"
)

// The demo's image is one the host's image store takes: named, its
// command the web server, its page and busybox in the layer.
func TestDemoAppArchiveImports(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("needs busybox-static")
	}
	archive, err := demoAppArchive("hello\n")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "hello.tar")
	if err := os.WriteFile(path, archive, 0o600); err != nil {
		t.Fatal(err)
	}
	store, err := imagestore.Open(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	imgs, err := store.Import(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 1 || !slices.Equal(imgs[0].Names, []string{demoAppImage}) {
		t.Fatalf("imported %+v, want one image named %s", imgs, demoAppImage)
	}
	if cmd := imgs[0].Config.Cmd; len(cmd) == 0 || cmd[0] != "httpd" || !slices.Contains(cmd, "8080") {
		t.Errorf("command %q, want httpd on port 8080", cmd)
	}
	if imgs[0].Size < 1<<20 {
		t.Errorf("size %d: the layer lacks busybox", imgs[0].Size)
	}
}
