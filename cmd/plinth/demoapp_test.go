package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/plinth-os/plinth/host/imagestore"
	"github.com/plinth-os/plinth/services/controller"
)

// The demo's image is one the host's image store takes (named, busybox
// in its layer), and its processes make jobs hostd accepts.
func TestDemoAppArchiveImports(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("needs busybox-static")
	}
	archive, err := demoAppArchive()
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
	if len(imgs) != 1 || !slices.Equal(imgs[0].Names, []string{demoApp + ":1"}) {
		t.Fatalf("imported %+v, want one image named %s:1", imgs, demoApp)
	}
	if imgs[0].Size < 1<<20 {
		t.Errorf("size %d: the layer lacks busybox", imgs[0].Size)
	}
	rel := controller.Release{App: demoApp, Version: 1, Image: demoApp + "@sha256:" + imgs[0].ID[7:], Processes: demoProcesses()}
	for typ := range rel.Processes {
		f := controller.ProcessFormation(&rel, typ, 1)
		f.Job.ID = f.Name + "-1"
		if err := f.Job.Check(); err != nil {
			t.Errorf("process %s: %v", typ, err)
		}
		if len(f.Job.Services) != 1 || f.Job.Services[0].Check == nil {
			t.Errorf("process %s: services %+v, want one with a health check", typ, f.Job.Services)
		}
	}
}
