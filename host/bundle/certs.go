package bundle

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"
	"unicode"
)

// HostValidity is how long a host certificate lasts. hostd makes a new one
// every start, so only a host that runs a year without restarting sees it
// expire.
const HostValidity = 365 * 24 * time.Hour

// Organizations of issued certificates: they tell a host from an operator.
const (
	hostOrg   = "plinth-host"
	clientOrg = "plinth-client"
)

// HostCertificate issues a certificate for a host's API, good both for
// serving and for calling other hosts, with a fresh ed25519 key. Its
// common name and first DNS name are nodeID (which must be a DNS label);
// hostname is added when it is a valid DNS name, ips as IP addresses, and
// names, which must be valid DNS names. The chain includes the CA
// certificate.
func (b *Bundle) HostCertificate(nodeID, hostname string, ips []net.IP, names ...string) (tls.Certificate, error) {
	if !isDNSLabel(nodeID) {
		return tls.Certificate{}, fmt.Errorf("host certificate: node ID %q is not a DNS label", nodeID)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: nodeID, Organization: []string{hostOrg}},
		DNSNames:    []string{nodeID},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	if hostname != nodeID && isDNSName(hostname) {
		tmpl.DNSNames = append(tmpl.DNSNames, hostname)
	}
	for _, n := range names {
		if !isDNSName(n) {
			return tls.Certificate{}, fmt.Errorf("host certificate for %s: %q is not a DNS name", nodeID, n)
		}
		if !slices.Contains(tmpl.DNSNames, n) {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	for _, ip := range ips {
		if ip != nil && !containsIP(tmpl.IPAddresses, ip) {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		}
	}
	cert, err := b.issue(tmpl, HostValidity)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("host certificate for %s: %w", nodeID, err)
	}
	cert.Certificate = append(cert.Certificate, b.CACert.Raw)
	return cert, nil
}

// IssueClient issues operator credentials, with a fresh ed25519 key: a
// certificate good for calling hosts but not for posing as one. name
// becomes its common name; validity is cut short where the CA expires.
func (b *Bundle) IssueClient(name string, validity time.Duration) (*Credentials, error) {
	if err := checkClientName(name); err != nil {
		return nil, err
	}
	if validity <= 0 {
		return nil, fmt.Errorf("client credentials for %q: validity %v is not positive", name, validity)
	}
	cert, err := b.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: name, Organization: []string{clientOrg}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, validity)
	if err != nil {
		return nil, fmt.Errorf("client credentials for %q: %w", name, err)
	}
	return &Credentials{Cluster: b.Cluster, CACert: b.CACert, Cert: cert}, nil
}

// issue signs tmpl, completed with a new key, a serial and a validity
// period, with the CA.
func (b *Bundle) issue(tmpl *x509.Certificate, validity time.Duration) (tls.Certificate, error) {
	if err := b.check(); err != nil {
		return tls.Certificate{}, fmt.Errorf("invalid bundle: %w", err)
	}
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generate key: %w", err)
	}
	now := time.Now()
	tmpl.SerialNumber = randomSerial()
	tmpl.NotBefore = now.Add(-backdate)
	tmpl.NotAfter = now.Add(validity)
	if tmpl.NotAfter.After(b.CACert.NotAfter) {
		tmpl.NotAfter = b.CACert.NotAfter
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, b.CACert, pub, b.CAKey)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("sign: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("parse signed certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// maxClientName is the longest common name X.509 allows (RFC 5280
// ub-common-name).
const maxClientName = 64

func checkClientName(name string) error {
	if name == "" || len(name) > maxClientName || strings.TrimSpace(name) != name ||
		strings.IndexFunc(name, func(r rune) bool { return !unicode.IsPrint(r) || r == unicode.ReplacementChar }) >= 0 {
		return fmt.Errorf("client name %q: want 1 to %d printable characters, without leading or trailing spaces", name, maxClientName)
	}
	return nil
}

func containsIP(ips []net.IP, ip net.IP) bool {
	for _, x := range ips {
		if x.Equal(ip) {
			return true
		}
	}
	return false
}

// isDNSName reports whether s is a host name in DNS syntax: dot-separated
// labels, 253 characters at most.
func isDNSName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if !isDNSLabel(label) {
			return false
		}
	}
	return true
}

// isDNSLabel reports whether s is 1 to 63 letters, digits and '-', neither
// starting nor ending with '-'.
func isDNSLabel(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
