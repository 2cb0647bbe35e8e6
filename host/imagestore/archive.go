package imagestore

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Annotations of an OCI layout's index that name an image: containerd's
// (a full reference) and the OCI one (a full reference or just a tag).
const (
	annotationContainerdName = "io.containerd.image.name"
	annotationRefName        = "org.opencontainers.image.ref.name"
)

// ArchiveImage is one image of an archive, with the names the archive
// gives it.
type ArchiveImage struct {
	Image v1.Image
	Names []string
}

// ReadArchive reads the images of the archive at p as Import does (a
// `docker save` archive, or an OCI image layout, a directory or a tar of
// one), unpacking a layout's tar under tmpDir; cleanup removes that.
func ReadArchive(p, tmpDir string) (imgs []ArchiveImage, cleanup func(), err error) {
	srcs, cleanup, err := openArchive(p, tmpDir)
	for _, s := range srcs {
		imgs = append(imgs, ArchiveImage{Image: s.img, Names: s.names})
	}
	return imgs, cleanup, err
}

// openArchive finds the images in the archive at p; cleanup removes what
// reading them needed to unpack under tmpDir.
func openArchive(p, tmpDir string) (srcs []source, cleanup func(), err error) {
	cleanup = func() {}
	fi, err := os.Stat(p)
	if err != nil {
		return nil, cleanup, fmt.Errorf("import: %w", err)
	}
	if fi.IsDir() {
		srcs, err := layoutSources(p)
		return srcs, cleanup, err
	}
	kind, err := archiveKind(p)
	if err != nil {
		return nil, cleanup, err
	}
	switch kind {
	case "docker":
		srcs, err := dockerSources(p)
		return srcs, cleanup, err
	default:
		dir, err := extractLayout(p, tmpDir)
		if err != nil {
			return nil, cleanup, err
		}
		cleanup = func() { os.RemoveAll(dir) }
		srcs, err := layoutSources(dir)
		return srcs, cleanup, err
	}
}

func notAnArchive(p string, why error) error {
	return fmt.Errorf("%s is not a docker save archive or an OCI image layout (a directory or tar with index.json): %w", p, why)
}

// archiveKind tells a `docker save` archive ("docker"; newer docker
// writes an OCI layout into it too) from a tar of an OCI layout ("oci").
func archiveKind(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", fmt.Errorf("import: %w", err)
	}
	defer f.Close()
	magic := make([]byte, 4)
	if _, err := f.ReadAt(magic, 0); err != nil && err != io.EOF {
		return "", fmt.Errorf("import: %w", err)
	}
	if bytes.HasPrefix(magic, []byte{0x1f, 0x8b}) || bytes.Equal(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}) {
		return "", fmt.Errorf("%s is compressed: decompress it (gunzip, zstd -d) and import the tar", p)
	}
	// archive/tar skips file contents by seeking in f.
	tr := tar.NewReader(f)
	hasIndex := false
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", notAnArchive(p, err)
		}
		switch path.Clean(hdr.Name) {
		case "manifest.json":
			return "docker", nil
		case "index.json":
			hasIndex = true
		}
	}
	if !hasIndex {
		return "", notAnArchive(p, errors.New("it has neither manifest.json nor index.json"))
	}
	return "oci", nil
}

// dockerSources reads the images of a `docker save` archive.
func dockerSources(p string) ([]source, error) {
	opener := func() (io.ReadCloser, error) { return os.Open(p) }
	m, err := tarball.LoadManifest(opener)
	if err != nil {
		return nil, notAnArchive(p, fmt.Errorf("manifest.json: %w", err))
	}
	if len(m) == 0 {
		return nil, fmt.Errorf("docker save archive %s holds no images", p)
	}
	var srcs []source
	for i, d := range m {
		// go-containerregistry finds an image of a multi-image archive by
		// one of its tags.
		var tag *name.Tag
		what := fmt.Sprintf("image %d", i+1)
		if len(d.RepoTags) > 0 {
			t, err := name.NewTag(d.RepoTags[0])
			if err != nil {
				return nil, fmt.Errorf("docker save archive %s: image name %q: %w", p, d.RepoTags[0], err)
			}
			tag, what = &t, d.RepoTags[0]
		} else if len(m) > 1 {
			return nil, fmt.Errorf("docker save archive %s holds several images and %s has no name: save untagged images one per archive", p, what)
		}
		img, err := tarball.Image(opener, tag)
		if err != nil {
			return nil, fmt.Errorf("docker save archive %s: %s: %w", p, what, err)
		}
		srcs = append(srcs, source{img: img, names: dedupNames(d.RepoTags), what: what})
	}
	return srcs, nil
}

// layoutSources reads the images of an OCI image layout directory.
func layoutSources(dir string) ([]source, error) {
	if _, err := os.Stat(filepath.Join(dir, "index.json")); err != nil {
		return nil, notAnArchive(dir, err)
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, notAnArchive(dir, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, notAnArchive(dir, err)
	}
	var srcs []source
	for _, d := range im.Manifests {
		src := source{names: layoutNames(d.Annotations), what: d.Digest.String()}
		if len(src.names) > 0 {
			src.what = src.names[0]
		}
		switch {
		case d.MediaType.IsImage():
			src.img, err = idx.Image(d.Digest)
		case d.MediaType.IsIndex():
			src.img, err = platformImage(idx, d.Digest)
		default:
			continue // not an image: signatures, attestations…
		}
		if err != nil {
			return nil, fmt.Errorf("OCI layout %s: %s: %w", dir, src.what, err)
		}
		srcs = append(srcs, src)
	}
	if len(srcs) == 0 {
		return nil, fmt.Errorf("OCI layout %s holds no images", dir)
	}
	return srcs, nil
}

// platformImage picks this machine's image out of a multi-platform one.
func platformImage(parent v1.ImageIndex, h v1.Hash) (v1.Image, error) {
	idx, err := parent.ImageIndex(h)
	if err != nil {
		return nil, err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	var have []string
	for _, d := range im.Manifests {
		if !d.MediaType.IsImage() || d.Platform == nil {
			continue
		}
		if d.Platform.OS == "linux" && d.Platform.Architecture == runtime.GOARCH {
			return idx.Image(d.Digest)
		}
		have = append(have, d.Platform.String())
	}
	return nil, fmt.Errorf("no linux/%s image among %v: import an image built for this platform", runtime.GOARCH, have)
}

// layoutNames returns the name:tag an index entry's annotations give the
// image. A bare tag (skopeo's "oci:dir:tag") names no image.
func layoutNames(ann map[string]string) []string {
	for _, n := range []string{ann[annotationContainerdName], ann[annotationRefName]} {
		if strings.ContainsAny(n, ":/") {
			if _, err := name.NewTag(n); err == nil {
				return []string{n}
			}
		}
	}
	return nil
}

func dedupNames(names []string) []string {
	var out []string
	for _, n := range names {
		if !hasName(out, n) {
			out = append(out, n)
		}
	}
	return out
}

// layoutEntry matches the files of an OCI layout Import needs.
var layoutEntry = regexp.MustCompile(`^(oci-layout|index\.json|blobs/[a-z0-9]+/[a-f0-9]+)$`)

// extractLayout unpacks a tar of an OCI layout into a directory under
// tmp/. It writes only regular files whose names the layout spec allows,
// into directories it makes itself, so the tar cannot write elsewhere.
func extractLayout(p, tmpDir string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", fmt.Errorf("import: %w", err)
	}
	defer f.Close()
	dir, err := os.MkdirTemp(tmpDir, "layout-")
	if err != nil {
		return "", fmt.Errorf("import: %w", err)
	}
	if err := extractLayoutFiles(tar.NewReader(f), dir); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("unpack OCI layout %s: %w", p, err)
	}
	return dir, nil
}

func extractLayoutFiles(tr *tar.Reader, dir string) error {
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		n := strings.TrimPrefix(path.Clean(hdr.Name), "./")
		if hdr.Typeflag != tar.TypeReg || !layoutEntry.MatchString(n) {
			continue
		}
		dst := filepath.Join(dir, n)
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return err
		}
		out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		_, err = io.Copy(out, tr)
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
}
