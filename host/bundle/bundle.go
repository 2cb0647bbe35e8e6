// Package bundle owns the cluster bundle, the secret material every host of
// one cluster shares (the cluster CA and its key, the gossip encryption key,
// the join token), and the TLS credentials derived from it: host
// certificates, operator credentials, and the TLS configs that use them.
//
// It does not know about Serf or HTTP servers: hostd hands SerfKey to Serf
// and the TLS configs to its listeners and clients.
package bundle

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"strings"
	"time"
)

// Bundle is one cluster's shared secrets. Every host of the cluster holds
// the same bundle; whoever holds it can join the cluster and issue
// credentials for it.
//
// Printing or logging a Bundle (fmt verbs, slog) shows only the cluster
// name and the CA's fingerprint, never key material.
type Bundle struct {
	// Cluster names the cluster: lowercase letters, digits and '-', 1 to
	// 63 characters, not starting or ending with '-' (a DNS label).
	Cluster string
	// CACert is the self-signed ed25519 cluster CA, named "plinth
	// <Cluster> CA"; every host and operator certificate chains to it.
	CACert *x509.Certificate
	CAKey  ed25519.PrivateKey
	// SerfKey is the AES-256 key that encrypts gossip (Serf's keyring).
	SerfKey []byte
	// JoinToken is "plinth1.<CA hash>.<secret>"; see ParseJoinToken.
	JoinToken string
}

// SerfKeySize is the length of Bundle.SerfKey: AES-256.
const SerfKeySize = 32

// caValidity is long because replacing a CA means touching every host.
const caValidity = 10 * 365 * 24 * time.Hour

// backdate lets certificates be accepted by hosts whose clocks run behind.
const backdate = time.Hour

// Create makes a new bundle, with a new CA and new keys, for the cluster
// named cluster.
func Create(cluster string) (*Bundle, error) {
	if err := checkClusterName(cluster); err != nil {
		return nil, err
	}
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("create cluster CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: caName(cluster)},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(caValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		// The CA signs host and operator certificates directly, never
		// intermediates.
		MaxPathLenZero: true,
		KeyUsage:       x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		return nil, fmt.Errorf("create cluster CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse new cluster CA certificate: %w", err)
	}
	serfKey := make([]byte, SerfKeySize)
	rand.Read(serfKey) // never fails (crypto/rand)
	return &Bundle{
		Cluster:   cluster,
		CACert:    ca,
		CAKey:     key,
		SerfKey:   serfKey,
		JoinToken: newJoinToken(ca),
	}, nil
}

func caName(cluster string) string { return "plinth " + cluster + " CA" }

// randomSerial returns a random 128-bit certificate serial number.
func randomSerial() *big.Int {
	b := make([]byte, 16)
	rand.Read(b) // never fails (crypto/rand)
	return new(big.Int).SetBytes(b)
}

// CheckToken reports whether s is this cluster's join token, in time that
// does not depend on how much of s matches.
func (b *Bundle) CheckToken(s string) bool {
	return subtle.ConstantTimeCompare([]byte(s), []byte(b.JoinToken)) == 1
}

// check reports the first inconsistency in b as a *fieldError.
func (b *Bundle) check() error {
	if err := checkClusterName(b.Cluster); err != nil {
		return &fieldError{key: "cluster", msg: err.Error()}
	}
	if err := checkCA(b.CACert, b.Cluster); err != nil {
		return &fieldError{key: "ca_cert", msg: err.Error()}
	}
	if len(b.CAKey) != ed25519.PrivateKeySize {
		return &fieldError{key: "ca_key", msg: fmt.Sprintf("want an ed25519 private key, got %d bytes", len(b.CAKey))}
	}
	if !b.CAKey.Public().(ed25519.PublicKey).Equal(b.CACert.PublicKey) {
		return &fieldError{key: "ca_key", msg: "does not belong to ca_cert (the public keys differ)"}
	}
	if len(b.SerfKey) != SerfKeySize {
		return &fieldError{key: "serf_key", msg: fmt.Sprintf("want %d bytes of base64, got %d", SerfKeySize, len(b.SerfKey))}
	}
	caHash, _, err := ParseJoinToken(b.JoinToken)
	if err != nil {
		return &fieldError{key: "join_token", msg: err.Error()}
	}
	if caHash != spkiHash(b.CACert) {
		return &fieldError{key: "join_token", msg: fmt.Sprintf("names CA %x, but ca_cert is %s", caHash[:8], fingerprint(b.CACert))}
	}
	return nil
}

// checkCA reports whether c can be the CA of cluster.
func checkCA(c *x509.Certificate, cluster string) error {
	switch {
	case c == nil:
		return fmt.Errorf("missing")
	case !c.BasicConstraintsValid || !c.IsCA || c.KeyUsage&x509.KeyUsageCertSign == 0:
		return fmt.Errorf("%q is not a CA certificate", c.Subject.CommonName)
	case c.Subject.CommonName != caName(cluster):
		return fmt.Errorf("is the CA %q, not the CA of cluster %q", c.Subject.CommonName, cluster)
	}
	if _, ok := c.PublicKey.(ed25519.PublicKey); !ok {
		return fmt.Errorf("want an ed25519 CA, got a %s key", c.PublicKeyAlgorithm)
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		return fmt.Errorf("not a valid self-signed CA: %w", err)
	}
	return nil
}

// checkClusterName accepts DNS labels in lowercase, so that a cluster name
// can appear in host names and certificate names unchanged.
func checkClusterName(name string) error {
	if !isDNSLabel(name) || name != strings.ToLower(name) {
		return fmt.Errorf("cluster name %q: want 1 to 63 lowercase letters, digits and '-', not starting or ending with '-'", name)
	}
	return nil
}

// spkiHash identifies a CA by its public key; the join token carries it.
func spkiHash(c *x509.Certificate) [32]byte {
	return sha256.Sum256(c.RawSubjectPublicKeyInfo)
}

// fingerprint is the short form of spkiHash that String shows, the same
// hex that starts the join token's CA hash.
func fingerprint(c *x509.Certificate) string {
	if c == nil {
		return "none"
	}
	h := spkiHash(c)
	return hex.EncodeToString(h[:8])
}

// The methods below have value receivers so that a Bundle stored by value
// (inside a config struct, say) is redacted too.

// String returns "bundle cluster=<name> ca=<fingerprint>".
func (b Bundle) String() string {
	return fmt.Sprintf("bundle cluster=%s ca=%s", b.Cluster, fingerprint(b.CACert))
}

// GoString is what %#v prints: the fields, with the secrets left out.
func (b Bundle) GoString() string {
	return fmt.Sprintf("bundle.Bundle{Cluster:%q, CACert:<ca %s>, CAKey:<redacted>, SerfKey:<redacted>, JoinToken:<redacted>}",
		b.Cluster, fingerprint(b.CACert))
}

// Format makes every fmt verb print String (GoString for %#v), so that no
// verb, %d or %x included, prints the key bytes.
func (b Bundle) Format(f fmt.State, verb rune) { format(f, verb, b.String(), b.GoString()) }

// LogValue logs a bundle as its cluster name and CA fingerprint.
func (b Bundle) LogValue() slog.Value {
	return slog.GroupValue(slog.String("cluster", b.Cluster), slog.String("ca", fingerprint(b.CACert)))
}

func format(f fmt.State, verb rune, s, goSyntax string) {
	switch {
	case verb == 'v' && f.Flag('#'):
		io.WriteString(f, goSyntax)
	case verb == 'q':
		fmt.Fprintf(f, "%q", s)
	default:
		io.WriteString(f, s)
	}
}
