package image

import (
	"archive/tar"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/plinth-os/plinth/image/verity"
)

// fakeBuild writes a small build (slot files, manifest, signature) into a
// directory and returns it with the key that signed it.
func fakeBuild(t *testing.T, mutate func(*Manifest)) (string, ed25519.PrivateKey) {
	t.Helper()
	dir := t.TempDir()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	m := Manifest{Version: "v2", Serial: 2, Arch: Arch}
	for i, name := range SlotFiles {
		data := bytes.Repeat([]byte{byte('a' + i)}, 10000+i)
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
		if name == SystemName {
			p, err := verity.Append(filepath.Join(dir, name), nil)
			if err != nil {
				t.Fatal(err)
			}
			m.System = p
		}
		f, err := describe(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		m.Files = append(m.Files, f)
	}
	if mutate != nil {
		mutate(&m)
	}
	man, _ := json.Marshal(m)
	sig, err := SignManifest(man, nil, key)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, ManifestName), man, 0o644)
	os.WriteFile(filepath.Join(dir, SignatureName), sig, 0o644)
	return dir, key
}

func readBundle(t *testing.T, dir string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), BundleName)
	if err := WriteBundle(dir, out); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestBundleVerifies(t *testing.T) {
	dir, key := fakeBuild(t, nil)
	data := readBundle(t, dir)
	b, err := ReadBundle(bytes.NewReader(data), int64(len(data)), nil)
	if err != nil {
		t.Fatal(err)
	}
	trusted := []ed25519.PublicKey{key.Public().(ed25519.PublicKey)}
	m, err := b.Verify(trusted, Arch)
	if err != nil {
		t.Fatal(err)
	}
	if m.Version != "v2" || m.Serial != 2 {
		t.Errorf("manifest %+v", m)
	}
	if again := readBundle(t, dir); !bytes.Equal(again, data) {
		t.Error("two bundles of one build differ")
	}
}

// TestBundleRefusals: every kind of bad bundle is refused with its reason.
func TestBundleRefusals(t *testing.T) {
	dir, key := fakeBuild(t, nil)
	good := readBundle(t, dir)
	trusted := []ed25519.PublicKey{key.Public().(ed25519.PublicKey)}
	_, stranger, _ := ed25519.GenerateKey(rand.Reader)
	man, _ := os.ReadFile(filepath.Join(dir, ManifestName))

	flip := func(off int) []byte {
		b := bytes.Clone(good)
		b[off] ^= 0x01
		return b
	}
	sysOff := bytes.Index(good, bytes.Repeat([]byte{'c'}, 100))
	foreignSig, _ := SignManifest(man, nil, stranger)
	armDir, _ := fakeBuild(t, func(m *Manifest) { m.Arch = "aarch64" })
	armMan, _ := os.ReadFile(filepath.Join(armDir, ManifestName))
	armSig, _ := SignManifest(armMan, nil, key)

	cases := []struct {
		name   string
		bundle []byte
		want   string
	}{
		{"truncated", good[:len(good)/2], "truncated"},
		{"flipped data byte", flip(sysOff + 50), "does not match its digest"},
		{"flipped manifest byte", flip(bytes.Index(good, []byte(`"v2"`)) + 2), "does not match its manifest"},
		{"unsigned", retar(t, good, SignatureName, nil), "not signed"},
		{"signed by an unknown key", retar(t, good, SignatureName, foreignSig), "not trust"},
		{"another architecture", retar(t, retar(t, good, ManifestName, armMan), SignatureName, armSig), "built for aarch64"},
		{"not a bundle", []byte("hello"), "truncated"},
		{"too large", good, "larger than allowed"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			limit := int64(len(c.bundle))
			if c.name == "too large" {
				limit = int64(len(good)) / 2
			}
			b, err := ReadBundle(bytes.NewReader(c.bundle), limit, nil)
			if err == nil {
				_, err = b.Verify(trusted, Arch)
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error saying %q", err, c.want)
			}
		})
	}
	// head refuses before the files are read.
	read := 0
	_, err := ReadBundle(&countingReader{r: bytes.NewReader(good), n: &read}, int64(len(good)), func(m, sig []byte) error {
		_, err := VerifyManifest(m, sig, []ed25519.PublicKey{stranger.Public().(ed25519.PublicKey)})
		return err
	})
	if !errors.Is(err, ErrUntrusted) || read > len(good)/2 {
		t.Errorf("head: %v after %d of %d bytes", err, read, len(good))
	}
	if _, err := VerifyManifest(man, nil, nil); !errors.Is(err, ErrNoTrust) {
		t.Errorf("no trusted keys: %v", err)
	}
}

// retar returns bundle with entry name's content replaced (nil: removed).
func retar(t *testing.T, bundle []byte, name string, content []byte) []byte {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(bundle))
	var out bytes.Buffer
	tw := tar.NewWriter(&out)
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		data := new(bytes.Buffer)
		data.ReadFrom(tr)
		if h.Name == name {
			if content == nil {
				continue
			}
			data = bytes.NewBuffer(content)
		}
		tw.WriteHeader(&tar.Header{Name: h.Name, Mode: 0o644, Size: int64(data.Len())})
		tw.Write(data.Bytes())
	}
	tw.Close()
	return out.Bytes()
}

func TestSlotHeaderRoundTrip(t *testing.T) {
	man, sig := []byte(`{"version":"v1"}`), []byte(`{"signatures":[]}`)
	h, err := EncodeSlotHeader(man, sig)
	if err != nil {
		t.Fatal(err)
	}
	part := append(bytes.Repeat([]byte{7}, 1<<20), h...)
	m2, s2, err := ReadSlotHeader(bytes.NewReader(part), int64(len(part)))
	if err != nil || !bytes.Equal(m2, man) || !bytes.Equal(s2, sig) {
		t.Fatalf("got %q %q %v", m2, s2, err)
	}
	empty := make([]byte, 2<<20)
	if _, _, err := ReadSlotHeader(bytes.NewReader(empty), int64(len(empty))); !errors.Is(err, ErrNoSlotHeader) {
		t.Errorf("empty slot: %v", err)
	}
	if _, err := EncodeSlotHeader(make([]byte, SlotHeaderSize), nil); err == nil {
		t.Error("an oversized manifest fit the header")
	}
}

func TestKeysRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.pem")
	pub, err := GenerateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := GenerateKey(path); err == nil {
		t.Error("keygen overwrote an existing key")
	}
	priv, err := LoadKey(path)
	if err != nil || !pub.Equal(priv.Public()) {
		t.Fatalf("load: %v", err)
	}
	keys, err := ParseTrustedKeys([]byte("# fleet keys\n" + FormatKey(pub, "k.pem") + "\n\n"))
	if err != nil || len(keys) != 1 || !keys[0].Equal(pub) {
		t.Fatalf("trusted keys: %v %v", keys, err)
	}
	if _, err := ParseTrustedKeys([]byte("rsa AAAA\n")); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("bad line: %v", err)
	}
	// A second signature by another key keeps the first.
	man := []byte(`{"version":"v3"}`)
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	sig, _ := SignManifest(man, nil, priv)
	sig, _ = SignManifest(man, sig, other)
	sig, _ = SignManifest(man, sig, priv)
	var s Signature
	json.Unmarshal(sig, &s)
	if len(s.Signatures) != 2 {
		t.Errorf("%d signatures, want 2 (one per key)", len(s.Signatures))
	}
	for _, k := range []ed25519.PublicKey{pub, other.Public().(ed25519.PublicKey)} {
		if _, err := VerifyManifest(man, sig, []ed25519.PublicKey{k}); err != nil {
			t.Errorf("key %x: %v", k[:4], err)
		}
	}
}

type countingReader struct {
	r *bytes.Reader
	n *int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	*c.n += n
	return n, err
}
