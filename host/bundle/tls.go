package bundle

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
)

// ServerTLS returns the config of a host API server presenting cert: TLS
// 1.3, and only clients with a certificate from the cluster CA (hosts and
// operators) get in.
func (b *Bundle) ServerTLS(cert tls.Certificate) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(b.CACert)
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
	}
}

// ClientTLS is the package function ClientTLS with the bundle's CA.
func (b *Bundle) ClientTLS(cert tls.Certificate) *tls.Config {
	return ClientTLS(b.CACert, cert)
}

// ClientTLS returns the config for calling a host that presents a
// certificate from ca, presenting cert (which may be empty).
//
// Hosts are reached at addresses that change (DHCP), and a host's
// certificate names the addresses it had when it was issued, so the
// server's certificate is checked by its chain alone: any certificate the
// cluster CA issued for serving is accepted, whatever address was dialled.
// Operator credentials are issued for client use only, so holding one does
// not let anyone pose as a host.
func ClientTLS(ca *x509.Certificate, cert tls.Certificate) *tls.Config {
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		// Verification is not skipped: VerifyConnection does it, without
		// the host name check.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("host presented no certificate")
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
				Roots:     roots,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			})
			if err != nil {
				return fmt.Errorf("verify host certificate against cluster CA %s: %w", fingerprint(ca), err)
			}
			return nil
		},
	}
	if len(cert.Certificate) > 0 {
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg
}

// TokenTLS returns the client config of a host that has only a join token:
// it trusts a server whose chain holds the CA the token names (by the hash
// of its public key) and whose certificate that CA issued for serving. The
// host presents no certificate; the token's secret goes in the request.
func TokenTLS(token string) (*tls.Config, error) {
	caHash, _, err := ParseJoinToken(token)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// Verification is not skipped: VerifyConnection pins the CA.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) < 2 {
				return errors.New("host presented no CA certificate in its chain")
			}
			for _, ca := range cs.PeerCertificates[1:] {
				if spkiHash(ca) != caHash {
					continue
				}
				roots := x509.NewCertPool()
				roots.AddCert(ca)
				_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
					Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
				})
				if err != nil {
					return fmt.Errorf("host certificate: %w", err)
				}
				return nil
			}
			return errors.New("host's CA is not the one the join token names: another cluster, or an impostor")
		},
	}, nil
}
