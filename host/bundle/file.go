package bundle

import (
	"bytes"
	"cmp"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// maxFileSize bounds what Load and LoadCredentials read; both kinds of file
// are about 1.5 KiB.
const maxFileSize = 64 << 10

// Keys of a bundle file, in the order Marshal writes them.
var bundleKeys = []string{"cluster", "join_token", "serf_key", "ca_cert", "ca_key"}

const bundleFix = "restore the file from the bundle.toml that `plinth cluster init` wrote"

// Marshal encodes b as a bundle file (TOML). It fails if b is inconsistent
// in a way Parse would reject.
func (b *Bundle) Marshal() ([]byte, error) {
	if err := b.check(); err != nil {
		return nil, fmt.Errorf("marshal bundle: %w", err)
	}
	key, err := x509.MarshalPKCS8PrivateKey(b.CAKey)
	if err != nil {
		return nil, fmt.Errorf("marshal bundle: ca_key: %w", err)
	}
	var w tomlWriter
	w.comment(
		fmt.Sprintf("plinth cluster bundle: the secrets every host of cluster %q shares.", b.Cluster),
		"Give it to each host of the cluster and to no one else: whoever holds it can",
		"join the cluster and issue credentials for it. Keep it at mode 0600.")
	w.scalars(struct {
		Cluster   string `toml:"cluster"`
		JoinToken string `toml:"join_token"`
		SerfKey   string `toml:"serf_key"`
	}{b.Cluster, b.JoinToken, base64.StdEncoding.EncodeToString(b.SerfKey)})
	w.block("ca_cert", pemText("CERTIFICATE", b.CACert.Raw))
	w.block("ca_key", pemText("PRIVATE KEY", key))
	return w.bytes()
}

// Load reads and parses the bundle file at path.
func Load(path string) (*Bundle, error) {
	data, err := readSmallFile(path)
	if err != nil {
		return nil, fmt.Errorf("load cluster bundle: %w", err)
	}
	return Parse(path, data)
}

// Parse parses a bundle file and checks that its parts belong together.
// name identifies the file in errors: a path, or e.g. "fw_cfg:opt/plinth/bundle".
// Errors read "name:line: key: problem; what to do".
func Parse(name string, data []byte) (*Bundle, error) {
	f, err := decodeTOML(name, data, "a cluster bundle", bundleKeys, bundleFix)
	if err != nil {
		return nil, err
	}
	v, err := f.strings()
	if err != nil {
		return nil, err
	}
	b := &Bundle{Cluster: v["cluster"], JoinToken: v["join_token"]}
	if err := checkClusterName(b.Cluster); err != nil {
		return nil, f.fail("cluster", err.Error())
	}
	if b.CACert, err = parseCertificatePEM(v["ca_cert"]); err != nil {
		return nil, f.fail("ca_cert", err.Error())
	}
	key, err := parseKeyPEM(v["ca_key"])
	if err != nil {
		return nil, f.fail("ca_key", err.Error())
	}
	var ok bool
	if b.CAKey, ok = key.(ed25519.PrivateKey); !ok {
		return nil, f.fail("ca_key", fmt.Sprintf("want an ed25519 key, got %T", key))
	}
	if b.SerfKey, err = base64.StdEncoding.Strict().DecodeString(v["serf_key"]); err != nil {
		return nil, f.fail("serf_key", fmt.Sprintf("want %d bytes of base64: %v", SerfKeySize, err))
	}
	if err := b.check(); err != nil {
		return nil, f.problem(err)
	}
	return b, nil
}

// fieldError is an inconsistency in one key of a file.
type fieldError struct{ key, msg string }

func (e *fieldError) Error() string { return e.key + ": " + e.msg }

// tomlFile is a decoded bundle or credentials file: flat, every key a
// string.
type tomlFile struct {
	name string
	fix  string // what to do about a bad value
	keys []string
	data []byte
	md   toml.MetaData
	vals map[string]toml.Primitive
}

// decodeTOML decodes data and refuses keys other than keys. what says what
// the file should be, e.g. "a cluster bundle".
func decodeTOML(name string, data []byte, what string, keys []string, fix string) (*tomlFile, error) {
	f := &tomlFile{name: name, fix: fix, keys: keys, data: data}
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&f.vals)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("%s:%d: invalid TOML: %s; %s", name, pe.Position.Line, pe.Message, fix)
		}
		return nil, fmt.Errorf("%s: invalid TOML: %w; %s", name, err, fix)
	}
	f.md = md
	var unknown []string
	for k := range f.vals {
		if !slices.Contains(keys, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		slices.SortFunc(unknown, func(a, b string) int { return cmp.Compare(f.line(a), f.line(b)) })
		return nil, fmt.Errorf("%s: %s: unknown key; %s has only the keys %s: is this the right file?",
			f.where(unknown[0]), unknown[0], what, strings.Join(keys, ", "))
	}
	return f, nil
}

// strings returns every key's value, failing if one is missing or not a
// string.
func (f *tomlFile) strings() (map[string]string, error) {
	v := make(map[string]string, len(f.keys))
	for _, k := range f.keys {
		p, ok := f.vals[k]
		if !ok {
			return nil, f.fail(k, "missing")
		}
		var s string
		if f.md.PrimitiveDecode(p, &s) != nil {
			return nil, f.fail(k, "want a string, got "+strings.ToLower(f.md.Type(k)))
		}
		v[k] = s
	}
	return v, nil
}

// fail reports a bad value of key.
func (f *tomlFile) fail(key, msg string) error {
	return fmt.Errorf("%s: %s: %s; %s", f.where(key), key, msg, f.fix)
}

// problem reports err, a *fieldError from a check, at the key it is about.
func (f *tomlFile) problem(err error) error {
	if fe, ok := errors.AsType[*fieldError](err); ok {
		return f.fail(fe.key, fe.msg)
	}
	return fmt.Errorf("%s: %w", f.name, err)
}

// where returns "name:line" for key, or name alone if key is not in the
// file.
func (f *tomlFile) where(key string) string {
	if l := f.line(key); l > 0 {
		return f.name + ":" + strconv.Itoa(l)
	}
	return f.name
}

// line returns the line on which key is defined, or 0.
//
// toml v1.6.0 keeps key positions unexported; it reveals one only in the
// ParseError it returns when an Unmarshaler fails, so the value is decoded
// into locator, which always fails.
func (f *tomlFile) line(key string) int {
	p, ok := f.vals[key]
	if !ok {
		return 0
	}
	var pe toml.ParseError
	if err := f.md.PrimitiveDecode(p, locator{}); !errors.As(err, &pe) || pe.Position.Start > len(f.data) {
		return 0
	}
	// Position.Line is where the value ends; Start is where it starts,
	// on the key's line.
	return 1 + bytes.Count(f.data[:pe.Position.Start], []byte("\n"))
}

type locator struct{}

var errLocate = errors.New("locating key")

func (locator) UnmarshalTOML(any) error { return errLocate }

// tomlWriter writes the flat files Marshal makes: comments, scalars
// encoded by the toml package, and PEM blocks as multi-line literal strings
// so that they stay readable.
type tomlWriter struct {
	buf bytes.Buffer
	err error
}

func (w *tomlWriter) comment(lines ...string) {
	for _, l := range lines {
		w.buf.WriteString("# " + l + "\n")
	}
}

func (w *tomlWriter) scalars(v any) {
	if w.err == nil {
		w.err = toml.NewEncoder(&w.buf).Encode(v)
	}
}

// block writes text as a multi-line literal string. text ends in a
// newline and holds no run of three single quotes (PEM cannot).
func (w *tomlWriter) block(key, text string) {
	w.buf.WriteString(key + " = '''\n" + text + "'''\n")
}

func (w *tomlWriter) bytes() ([]byte, error) { return w.buf.Bytes(), w.err }

func pemText(typ string, der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}))
}

// pemBlock returns the contents of the one PEM block of type typ in s.
func pemBlock(s, typ string) ([]byte, error) {
	block, rest := pem.Decode([]byte(s))
	switch {
	case block == nil:
		return nil, fmt.Errorf("want a PEM %q block, found none", typ)
	case block.Type != typ:
		return nil, fmt.Errorf("want a PEM %q block, got %q", typ, block.Type)
	case len(bytes.TrimSpace(rest)) > 0:
		return nil, fmt.Errorf("want one PEM %q block, found more after it", typ)
	}
	return block.Bytes, nil
}

func parseCertificatePEM(s string) (*x509.Certificate, error) {
	der, err := pemBlock(s, "CERTIFICATE")
	if err != nil {
		return nil, err
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("bad certificate: %w", err)
	}
	return c, nil
}

func parseKeyPEM(s string) (any, error) {
	der, err := pemBlock(s, "PRIVATE KEY")
	if err != nil {
		return nil, err
	}
	key, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("bad PKCS #8 key: %w", err)
	}
	return key, nil
}

// readSmallFile reads path, refusing files larger than maxFileSize: a
// wrong path (a disk image, /dev/zero) fails fast instead of filling
// memory.
func readSmallFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("%s: larger than %d KiB, so not a file plinth wrote: is this the right file?", path, maxFileSize>>10)
	}
	return data, nil
}

// WriteFile writes data, a bundle or credentials, to a new file at path
// with mode 0600. The file appears complete or not at all, and an existing
// file is never replaced: overwriting a bundle would lose a cluster's keys.
func WriteFile(path string, data []byte) error {
	if _, err := os.Lstat(path); err == nil {
		return existsError(path)
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*") // mode 0600
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(data)
	if err == nil {
		// The data must be on disk before the name is: after a crash the
		// file is whole or absent.
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	// A hard link, unlike rename, fails if path exists: no window in which
	// another writer's file is replaced.
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return existsError(path)
		}
		return fmt.Errorf("write %s: %w", path, err)
	}
	os.Remove(tmp.Name())
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func existsError(path string) error {
	return fmt.Errorf("write %s: already exists; remove it or pick another path", path)
}

// syncDir makes a new name in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
