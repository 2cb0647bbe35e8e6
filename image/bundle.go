package image

import (
	"archive/tar"
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
)

// The upgrade bundle is a plain tar of what a disk slot needs: the
// manifest and its signature first, so that a reader learns the sizes it
// must expect before the large files, then the kernel, the slot
// initramfs and the system image with its verity tree. Uncompressed: all
// three are compressed already.

// SlotFiles are the artifacts a disk slot holds, in bundle order.
var SlotFiles = []string{VmlinuzName, SlotInitrdName, SystemName}

// WriteBundle writes the bundle of the build in dir (signed) to dst.
func WriteBundle(dir, dst string) error {
	names := append([]string{ManifestName, SignatureName}, SlotFiles...)
	tmp := dst + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	tw := tar.NewWriter(f)
	for _, name := range names {
		src, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			f.Close()
			return fmt.Errorf("bundle: %w", err)
		}
		st, err := src.Stat()
		if err == nil {
			// No times or owners: the same build gives the same bundle.
			err = tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: st.Size(), Format: tar.FormatUSTAR})
		}
		if err == nil {
			_, err = io.Copy(tw, src)
		}
		src.Close()
		if err != nil {
			f.Close()
			return fmt.Errorf("bundle %s: %w", name, err)
		}
	}
	if err := tw.Close(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// LoadBuild reads the signed build in dir as a bundle, without a tar.
func LoadBuild(dir string) (*Bundle, error) {
	b := &Bundle{Files: map[string][]byte{}}
	var err error
	if b.Manifest, err = os.ReadFile(filepath.Join(dir, ManifestName)); err != nil {
		return nil, err
	}
	if b.Signature, err = os.ReadFile(filepath.Join(dir, SignatureName)); err != nil {
		return nil, fmt.Errorf("%w (sign the build: `plinth image sign`)", err)
	}
	for _, name := range SlotFiles {
		if b.Files[name], err = os.ReadFile(filepath.Join(dir, name)); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// Bundle is an upgrade bundle read into memory.
type Bundle struct {
	Manifest  []byte
	Signature []byte
	Files     map[string][]byte
}

// ErrTooLarge is returned for a bundle larger than the reader's limit.
var ErrTooLarge = errors.New("bundle larger than allowed")

// ReadBundle reads a bundle of at most limit bytes from r. Nothing is
// trusted yet: Verify says whether the content is what was signed. head,
// when not nil, sees the manifest and signature, which come first,
// before the large files are read: a bundle that head refuses (an
// untrusted signature, another architecture, an older version) is not
// read on.
func ReadBundle(r io.Reader, limit int64, head func(manifest, sig []byte) error) (*Bundle, error) {
	lr := &io.LimitedReader{R: r, N: limit + 1}
	tr := tar.NewReader(lr)
	b := &Bundle{Files: map[string][]byte{}}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if lr.N <= 0 {
				return nil, fmt.Errorf("%w (%d bytes)", ErrTooLarge, limit)
			}
			return nil, fmt.Errorf("bundle is not a complete tar archive (truncated?): %w", err)
		}
		if h.Typeflag != tar.TypeReg {
			return nil, fmt.Errorf("bundle entry %q is not a regular file", h.Name)
		}
		if h.Size > limit {
			return nil, fmt.Errorf("%w: %s alone is %d bytes", ErrTooLarge, h.Name, h.Size)
		}
		if slices.Contains(SlotFiles, h.Name) && len(b.Files) == 0 {
			if b.Manifest == nil {
				return nil, fmt.Errorf("bundle has no %s before its files (is it an upgrade bundle? `make image` writes out/%s)", ManifestName, BundleName)
			}
			if head != nil {
				if err := head(b.Manifest, b.Signature); err != nil {
					return nil, err
				}
			}
		}
		var buf bytes.Buffer
		buf.Grow(int(h.Size))
		if _, err := io.Copy(&buf, tr); err != nil {
			if lr.N <= 0 {
				return nil, fmt.Errorf("%w (%d bytes)", ErrTooLarge, limit)
			}
			return nil, fmt.Errorf("bundle entry %s is cut short (truncated?): %w", h.Name, err)
		}
		switch name := h.Name; {
		case name == ManifestName:
			b.Manifest = buf.Bytes()
		case name == SignatureName:
			b.Signature = buf.Bytes()
		case slices.Contains(SlotFiles, name):
			b.Files[name] = buf.Bytes()
		default:
			return nil, fmt.Errorf("bundle has an unknown entry %q", name)
		}
	}
	if lr.N <= 0 {
		return nil, fmt.Errorf("%w (%d bytes)", ErrTooLarge, limit)
	}
	if b.Manifest == nil {
		return nil, fmt.Errorf("bundle has no %s (is it an upgrade bundle? `make image` writes out/%s)", ManifestName, BundleName)
	}
	return b, nil
}

// Verify checks the bundle against the keys a host trusts and its
// machine: the signature, the architecture, and each slot file's size
// and digest against the signed manifest, and the verity tree's
// parameters. It returns the manifest only when all of it holds.
func (b *Bundle) Verify(trusted []ed25519.PublicKey, arch string) (*Manifest, error) {
	m, err := VerifyManifest(b.Manifest, b.Signature, trusted)
	if err != nil {
		return nil, err
	}
	if err := m.CheckArch(arch); err != nil {
		return nil, err
	}
	for _, name := range SlotFiles {
		want, ok := m.File(name)
		if !ok {
			return nil, fmt.Errorf("the signed manifest lists no %s", name)
		}
		data, ok := b.Files[name]
		if !ok {
			return nil, fmt.Errorf("bundle has no %s", name)
		}
		if int64(len(data)) != want.Size {
			return nil, fmt.Errorf("%s is %d bytes, the signed manifest says %d (truncated or corrupted)", name, len(data), want.Size)
		}
		sum := sha256.Sum256(data)
		if hex.EncodeToString(sum[:]) != want.SHA256 {
			return nil, fmt.Errorf("%s does not match its digest in the signed manifest (corrupted)", name)
		}
	}
	if err := m.System.Validate(); err != nil {
		return nil, fmt.Errorf("system image verity: %w", err)
	}
	return m, nil
}

// CheckArch refuses an image built for another machine than arch.
func (m *Manifest) CheckArch(arch string) error {
	if m.Arch != arch {
		return fmt.Errorf("the image is built for %s, this machine is %s", orUnknown(m.Arch), arch)
	}
	return nil
}

func orUnknown(s string) string {
	if s == "" {
		return "an unknown architecture"
	}
	return s
}
