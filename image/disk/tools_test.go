package disk

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Packages that provide the external checkers, for skip messages.
var toolPackage = map[string]string{
	"sgdisk":    "gdisk",
	"sfdisk":    "fdisk",
	"fsck.fat":  "dosfstools",
	"mtype":     "mtools",
	"mdir":      "mtools",
	"mlabel":    "mtools",
	"mkfs.ext4": "e2fsprogs",
	"e2fsck":    "e2fsprogs",
	"dumpe2fs":  "e2fsprogs",
	"losetup":   "mount",
	"mount":     "mount",
}

// need skips the test unless every tool is installed.
func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed: apt-get install -y %s", tool, toolPackage[tool])
		}
	}
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop devices and mounts")
	}
}

// run runs a tool and returns its combined output, failing on a non-zero exit.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// extract copies partition p of the image into its own file.
func extract(t *testing.T, img string, p Partition) string {
	t.Helper()
	src, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	path := filepath.Join(t.TempDir(), p.Name+".img")
	dst, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if _, err := io.Copy(dst, io.NewSectionReader(src, p.Start, p.Size)); err != nil {
		t.Fatal(err)
	}
	return path
}

// losetup attaches file to a new loop device and detaches it, by the name
// recorded here, when the test ends.
func losetup(t *testing.T, args ...string) string {
	t.Helper()
	needRoot(t)
	need(t, "losetup")
	dev := strings.TrimSpace(run(t, "losetup", append([]string{"-f", "--show"}, args...)...))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	return dev
}

func writeTemp(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// pattern is deterministic non-zero content that shows misplaced bytes.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	x := uint32(seed) + 1
	for i := range b {
		x = x*1664525 + 1013904223
		b[i] = byte(x >> 24)
	}
	return b
}
