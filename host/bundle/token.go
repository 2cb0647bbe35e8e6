package bundle

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"
)

// A join token is "plinth1.<CA hash>.<secret>": the CA hash (64 hex digits,
// the SHA-256 of the CA's SubjectPublicKeyInfo) lets a joining host pin
// the cluster CA before it trusts anything a peer tells it; the secret (32
// random bytes, unpadded base64url) proves it was let in.
const tokenPrefix = "plinth1."

const tokenSecretSize = 32

func newJoinToken(ca *x509.Certificate) string {
	h := spkiHash(ca)
	secret := make([]byte, tokenSecretSize)
	rand.Read(secret) // never fails (crypto/rand)
	return tokenPrefix + hex.EncodeToString(h[:]) + "." + base64.RawURLEncoding.EncodeToString(secret)
}

// ParseJoinToken splits a join token into the hash of the CA it names and
// its secret. Errors never repeat the token: it is a secret.
func ParseJoinToken(s string) (caHash [32]byte, secret []byte, err error) {
	const want = "want plinth1.<64 hex digits>.<43 characters of base64url>"
	rest, ok := strings.CutPrefix(s, tokenPrefix)
	if !ok {
		return caHash, nil, fmt.Errorf("join token: does not start with %q; %s", tokenPrefix, want)
	}
	hash, sec, ok := strings.Cut(rest, ".")
	if !ok {
		return caHash, nil, fmt.Errorf("join token: has no secret part; %s", want)
	}
	// hex.Decode would accept upper case too; one spelling per token keeps
	// CheckToken a plain comparison.
	if len(hash) != 2*len(caHash) || strings.ToLower(hash) != hash {
		return caHash, nil, fmt.Errorf("join token: CA hash is %d characters; %s", len(hash), want)
	}
	if _, err := hex.Decode(caHash[:], []byte(hash)); err != nil {
		return caHash, nil, fmt.Errorf("join token: CA hash is not hex; %s", want)
	}
	secret, err = base64.RawURLEncoding.Strict().DecodeString(sec)
	if err != nil || len(secret) != tokenSecretSize {
		return [32]byte{}, nil, fmt.Errorf("join token: secret is not %d bytes of base64url; %s", tokenSecretSize, want)
	}
	return caHash, secret, nil
}
