package image

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Images are signed with ed25519 over the exact bytes of manifest.json,
// which holds the sha256 of every artifact and the system image's
// dm-verity root hash: one signature check (milliseconds, even under TCG)
// vouches for every byte, and the kernel checks the system image's blocks
// lazily as they are read. Each image trusts the public keys built into
// it (TrustedKeysPath) and refuses images signed by any other.

// SignatureName is the detached signature beside manifest.json.
const SignatureName = "manifest.sig"

// TrustedKeysPath is where an image carries the public keys it trusts,
// in the initramfs (for stage 1) and in the system image (for hostd).
const TrustedKeysPath = "/etc/plinth/trusted-keys"

// Signature is the content of manifest.sig: one or more signatures, so
// that an image can be signed by both an old and a new key while a fleet
// moves from one to the other.
type Signature struct {
	Signatures []KeySignature `json:"signatures"`
}

// KeySignature is one key's signature of the manifest.
type KeySignature struct {
	Key string `json:"key"` // base64 of the 32-byte ed25519 public key
	Sig string `json:"sig"` // base64 of the 64-byte signature
}

// GenerateKey writes a new ed25519 private key to path (PKCS #8 PEM, the
// form openssl also reads and writes) and returns its public half.
func GenerateKey(path string) (ed25519.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	if err := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
		f.Close()
		return nil, fmt.Errorf("write signing key %s: %w", path, err)
	}
	return pub, f.Close()
}

// LoadKey reads an ed25519 private key in PKCS #8 PEM.
func LoadKey(path string) (ed25519.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("signing key %s: not a PEM \"PRIVATE KEY\" (make one with `plinth image keygen`)", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", path, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("signing key %s: a %T, not an ed25519 key", path, k)
	}
	return priv, nil
}

// FormatKey is a public key as a line of a trusted-keys file.
func FormatKey(pub ed25519.PublicKey, comment string) string {
	return strings.TrimSpace("ed25519 " + base64.StdEncoding.EncodeToString(pub) + " " + comment)
}

// ParseTrustedKeys reads a trusted-keys file: one `ed25519 <base64> [comment]`
// per line; blank lines and # comments are skipped.
func ParseTrustedKeys(data []byte) ([]ed25519.PublicKey, error) {
	var keys []ed25519.PublicKey
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "ed25519" {
			return nil, fmt.Errorf("trusted keys line %d: want `ed25519 <base64 key> [comment]`", i+1)
		}
		k, err := base64.StdEncoding.DecodeString(f[1])
		if err != nil || len(k) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("trusted keys line %d: not a base64 ed25519 public key", i+1)
		}
		keys = append(keys, ed25519.PublicKey(k))
	}
	return keys, nil
}

// SignManifest adds priv's signature of manifest to sig (nil for a new
// one) and returns the encoded manifest.sig. A key signs once: signing
// again replaces its signature.
func SignManifest(manifest, sig []byte, priv ed25519.PrivateKey) ([]byte, error) {
	var s Signature
	if len(sig) > 0 {
		if err := json.Unmarshal(sig, &s); err != nil {
			return nil, fmt.Errorf("existing %s: %w", SignatureName, err)
		}
	}
	pub := base64.StdEncoding.EncodeToString(priv.Public().(ed25519.PublicKey))
	ks := KeySignature{Key: pub, Sig: base64.StdEncoding.EncodeToString(ed25519.Sign(priv, manifest))}
	replaced := false
	for i := range s.Signatures {
		if s.Signatures[i].Key == pub {
			s.Signatures[i], replaced = ks, true
		}
	}
	if !replaced {
		s.Signatures = append(s.Signatures, ks)
	}
	out, err := json.MarshalIndent(s, "", "  ")
	return append(out, '\n'), err
}

// Errors of VerifyManifest, for callers that explain them.
var (
	ErrUnsigned   = errors.New("the image is not signed")
	ErrUntrusted  = errors.New("the image is signed only by keys this host does not trust")
	ErrBadSig     = errors.New("the image's signature does not match its manifest (changed after signing?)")
	ErrNoTrust    = errors.New("this host trusts no image keys (its image was built without " + TrustedKeysPath + ")")
	errNoManifest = errors.New("no manifest")
)

// VerifyManifest checks that one of sig's signatures is a trusted key's
// signature of manifest, then decodes the manifest.
func VerifyManifest(manifest, sig []byte, trusted []ed25519.PublicKey) (*Manifest, error) {
	if len(manifest) == 0 {
		return nil, errNoManifest
	}
	if len(trusted) == 0 {
		return nil, ErrNoTrust
	}
	var s Signature
	if len(bytes.TrimSpace(sig)) == 0 {
		return nil, ErrUnsigned
	}
	if err := json.Unmarshal(sig, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", SignatureName, err)
	}
	if len(s.Signatures) == 0 {
		return nil, ErrUnsigned
	}
	err := ErrUntrusted
	for _, ks := range s.Signatures {
		k, kerr := base64.StdEncoding.DecodeString(ks.Key)
		sg, serr := base64.StdEncoding.DecodeString(ks.Sig)
		if kerr != nil || serr != nil || len(k) != ed25519.PublicKeySize {
			continue
		}
		if !keyTrusted(k, trusted) {
			continue
		}
		if !ed25519.Verify(k, manifest, sg) {
			err = ErrBadSig
			continue
		}
		var m Manifest
		if err := json.Unmarshal(manifest, &m); err != nil {
			return nil, fmt.Errorf("signed manifest: %w", err)
		}
		return &m, nil
	}
	return nil, err
}

func keyTrusted(k []byte, trusted []ed25519.PublicKey) bool {
	for _, t := range trusted {
		if bytes.Equal(k, t) {
			return true
		}
	}
	return false
}
