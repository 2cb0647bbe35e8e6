package bundle

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"time"
)

// Credentials are what an operator's CLI holds to call hosts: the cluster
// CA, to know the hosts, and a client certificate with its key, to be let
// in. Make them with Bundle.IssueClient.
//
// Printing or logging Credentials (fmt verbs, slog) never shows the key.
type Credentials struct {
	Cluster string
	CACert  *x509.Certificate
	// Cert is the client certificate, with Leaf set by IssueClient and
	// ParseCredentials.
	Cert tls.Certificate
}

// Keys of a credentials file, in the order Marshal writes them.
var credentialsKeys = []string{"cluster", "ca_cert", "cert", "key"}

const credentialsFix = "make new credentials with `plinth cluster credentials`"

// TLS returns the config for calling the cluster's hosts with c; see
// ClientTLS.
func (c *Credentials) TLS() *tls.Config { return ClientTLS(c.CACert, c.Cert) }

// Marshal encodes c as a credentials file (TOML). It fails if Parse
// would reject the result, expired credentials included.
func (c *Credentials) Marshal() ([]byte, error) {
	if err := c.check(time.Now()); err != nil {
		return nil, fmt.Errorf("marshal credentials: %w", err)
	}
	key, err := x509.MarshalPKCS8PrivateKey(c.Cert.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("marshal credentials: key: %w", err)
	}
	var w tomlWriter
	w.comment(
		fmt.Sprintf("plinth credentials %q for cluster %q, valid until %s.", c.leaf().Subject.CommonName, c.Cluster, c.leaf().NotAfter.UTC().Format(time.DateOnly)),
		"They let whoever holds them call the API of every host of the cluster.",
		"Keep them at mode 0600.")
	w.scalars(struct {
		Cluster string `toml:"cluster"`
	}{c.Cluster})
	w.block("ca_cert", pemText("CERTIFICATE", c.CACert.Raw))
	w.block("cert", pemText("CERTIFICATE", c.leaf().Raw))
	w.block("key", pemText("PRIVATE KEY", key))
	return w.bytes()
}

// LoadCredentials reads and parses the credentials file at path.
func LoadCredentials(path string) (*Credentials, error) {
	data, err := readSmallFile(path)
	if err != nil {
		return nil, fmt.Errorf("load credentials: %w", err)
	}
	return ParseCredentials(path, data)
}

// ParseCredentials parses a credentials file and checks that its
// certificate is a current client certificate from its CA, and that the
// key belongs to it. name identifies the file in errors, which read
// "name:line: key: problem; what to do".
func ParseCredentials(name string, data []byte) (*Credentials, error) {
	f, err := decodeTOML(name, data, "a credentials file", credentialsKeys, credentialsFix)
	if err != nil {
		return nil, err
	}
	v, err := f.strings()
	if err != nil {
		return nil, err
	}
	c := &Credentials{Cluster: v["cluster"]}
	if err := checkClusterName(c.Cluster); err != nil {
		return nil, f.fail("cluster", err.Error())
	}
	if c.CACert, err = parseCertificatePEM(v["ca_cert"]); err != nil {
		return nil, f.fail("ca_cert", err.Error())
	}
	if c.Cert.Leaf, err = parseCertificatePEM(v["cert"]); err != nil {
		return nil, f.fail("cert", err.Error())
	}
	c.Cert.Certificate = [][]byte{c.Cert.Leaf.Raw}
	if c.Cert.PrivateKey, err = parseKeyPEM(v["key"]); err != nil {
		return nil, f.fail("key", err.Error())
	}
	if err := c.check(time.Now()); err != nil {
		return nil, f.problem(err)
	}
	return c, nil
}

// check reports the first problem with c at time now as a *fieldError.
func (c *Credentials) check(now time.Time) error {
	if err := checkClusterName(c.Cluster); err != nil {
		return &fieldError{key: "cluster", msg: err.Error()}
	}
	if err := checkCA(c.CACert, c.Cluster); err != nil {
		return &fieldError{key: "ca_cert", msg: err.Error()}
	}
	leaf := c.leaf()
	if leaf == nil {
		return &fieldError{key: "cert", msg: "missing"}
	}
	roots := x509.NewCertPool()
	roots.AddCert(c.CACert)
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:       roots,
		CurrentTime: now,
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return &fieldError{key: "cert", msg: fmt.Sprintf("not a current client certificate from ca_cert: %v", err)}
	}
	key, ok := c.Cert.PrivateKey.(crypto.Signer)
	if !ok {
		return &fieldError{key: "key", msg: fmt.Sprintf("want a private key, got %T", c.Cert.PrivateKey)}
	}
	if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(leaf.PublicKey) {
		return &fieldError{key: "key", msg: "does not belong to cert (the public keys differ)"}
	}
	return nil
}

// leaf returns the parsed client certificate, or nil.
func (c Credentials) leaf() *x509.Certificate {
	if c.Cert.Leaf != nil {
		return c.Cert.Leaf
	}
	if len(c.Cert.Certificate) == 0 {
		return nil
	}
	leaf, err := x509.ParseCertificate(c.Cert.Certificate[0])
	if err != nil {
		return nil
	}
	return leaf
}

// The methods below have value receivers so that Credentials stored by
// value are redacted too.

// String returns "credentials cluster=<name> name=<common name>
// ca=<fingerprint> expires=<time>".
func (c Credentials) String() string {
	name, expires := c.describe()
	return fmt.Sprintf("credentials cluster=%s name=%q ca=%s expires=%s", c.Cluster, name, fingerprint(c.CACert), expires)
}

// GoString is what %#v prints: the fields, with the key left out.
func (c Credentials) GoString() string {
	name, expires := c.describe()
	return fmt.Sprintf("bundle.Credentials{Cluster:%q, CACert:<ca %s>, Cert:<%q until %s, key redacted>}",
		c.Cluster, fingerprint(c.CACert), name, expires)
}

// Format makes every fmt verb print String (GoString for %#v), so that no
// verb prints the key.
func (c Credentials) Format(f fmt.State, verb rune) { format(f, verb, c.String(), c.GoString()) }

// LogValue logs credentials as their cluster, name, CA fingerprint and
// expiry.
func (c Credentials) LogValue() slog.Value {
	name, expires := c.describe()
	return slog.GroupValue(
		slog.String("cluster", c.Cluster),
		slog.String("name", name),
		slog.String("ca", fingerprint(c.CACert)),
		slog.String("expires", expires))
}

func (c Credentials) describe() (name, expires string) {
	leaf := c.leaf()
	if leaf == nil {
		return "", "none"
	}
	return leaf.Subject.CommonName, leaf.NotAfter.UTC().Format(time.RFC3339)
}

// ServerTLS returns the config of a server presenting c's certificate
// (a host's, or a job's with credentials from hostd): TLS 1.3, and only
// clients with a certificate from the cluster CA get in.
func (c *Credentials) ServerTLS() *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(c.CACert)
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{c.Cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
	}
}
