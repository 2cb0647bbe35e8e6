package image

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Kernel names one Debian kernel package. The package name carries the ABI
// (6.1.0-56) and Version the exact upload, so a build is pinned to one set
// of bytes; Debian point releases retire old uploads, and then the pin must
// move (see docs/operator-guide.md, "Updating the kernel").
type Kernel struct {
	Package string // e.g. linux-image-6.1.0-56-cloud-amd64
	Version string // Debian package version, e.g. 6.1.192-2
}

// The kernel pins: one Debian upload, two builds of it. The cloud one
// boots ~6 s faster under TCG than the generic one and has ext4 built in,
// but drives only paravirtual and cloud hardware; the generic one drives
// real machines (see Flavours).
var (
	CloudKernel = Kernel{
		Package: "linux-image-6.1.0-56-cloud-amd64",
		Version: "6.1.192-2",
	}
	GenericKernel = Kernel{
		Package: "linux-image-6.1.0-56-amd64",
		Version: CloudKernel.Version,
	}
)

// Release is the kernel release string (uname -r), derived from the package
// name.
func (k Kernel) Release() string {
	return strings.TrimPrefix(k.Package, "linux-image-")
}

// KernelTree is an extracted kernel package.
type KernelTree struct {
	Kernel
	Root string // directory the .deb was extracted into
}

// Vmlinuz is the path of the kernel image.
func (t KernelTree) Vmlinuz() string {
	return filepath.Join(t.Root, "boot", "vmlinuz-"+t.Release())
}

// ModuleDir is the path of lib/modules/<release>.
func (t KernelTree) ModuleDir() string {
	return filepath.Join(t.Root, "lib", "modules", t.Release())
}

// FetchKernel downloads the pinned package with apt-get into cacheDir and
// extracts it with dpkg -x, once; later calls reuse the extracted tree.
func FetchKernel(ctx context.Context, k Kernel, cacheDir string) (KernelTree, error) {
	base := k.Package + "_" + k.Version
	tree := KernelTree{Kernel: k, Root: filepath.Join(cacheDir, base)}
	if _, err := os.Stat(filepath.Join(tree.Root, ".extracted")); err == nil {
		return tree, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return tree, fmt.Errorf("create kernel cache: %w", err)
	}
	debs, _ := filepath.Glob(filepath.Join(cacheDir, base+"_*.deb"))
	if len(debs) == 0 {
		cmd := exec.CommandContext(ctx, "apt-get", "download", "-q", k.Package+"="+k.Version)
		cmd.Dir = cacheDir
		if out, err := cmd.CombinedOutput(); err != nil {
			return tree, fmt.Errorf("apt-get download %s=%s: %w\n%s\n"+
				"hint: run 'apt-get update'; if Debian no longer carries this version, "+
				"pin a current one in image/kernel.go (apt-cache depends linux-image-cloud-amd64)",
				k.Package, k.Version, err, out)
		}
		debs, _ = filepath.Glob(filepath.Join(cacheDir, base+"_*.deb"))
		if len(debs) != 1 {
			return tree, fmt.Errorf("apt-get download %s: expected one %s_*.deb in %s, found %d", k.Package, base, cacheDir, len(debs))
		}
	}
	tmp := tree.Root + ".tmp"
	os.RemoveAll(tmp)
	if out, err := exec.CommandContext(ctx, "dpkg", "-x", debs[0], tmp).CombinedOutput(); err != nil {
		return tree, fmt.Errorf("dpkg -x %s: %w\n%s", debs[0], err, out)
	}
	if err := os.WriteFile(filepath.Join(tmp, ".extracted"), nil, 0o644); err != nil {
		return tree, err
	}
	os.RemoveAll(tree.Root)
	if err := os.Rename(tmp, tree.Root); err != nil {
		return tree, fmt.Errorf("move extracted kernel into place: %w", err)
	}
	return tree, nil
}
