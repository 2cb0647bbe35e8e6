package bundle_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host/bundle"
)

func create(t testing.TB, cluster string) *bundle.Bundle {
	t.Helper()
	b, err := bundle.Create(cluster)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func marshal(t testing.TB, v interface{ Marshal() ([]byte, error) }) string {
	t.Helper()
	data, err := v.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestCreate(t *testing.T) {
	b := create(t, "prod")
	ca := b.CACert
	if !ca.IsCA || ca.KeyUsage&x509.KeyUsageCertSign == 0 || ca.Subject.CommonName != "plinth prod CA" {
		t.Errorf("CA: IsCA=%v KeyUsage=%v CN=%q; want a signing CA named \"plinth prod CA\"", ca.IsCA, ca.KeyUsage, ca.Subject.CommonName)
	}
	if life := time.Until(ca.NotAfter); life < 9*365*24*time.Hour {
		t.Errorf("CA expires in %v, want about 10 years", life)
	}
	if len(b.SerfKey) != 32 {
		t.Errorf("serf key is %d bytes, want 32", len(b.SerfKey))
	}
	hash := sha256.Sum256(ca.RawSubjectPublicKeyInfo)
	if !regexp.MustCompile(`^plinth1\.` + hex.EncodeToString(hash[:]) + `\.[A-Za-z0-9_-]{43}$`).MatchString(b.JoinToken) {
		t.Errorf("join token %q does not have the form plinth1.<CA hash>.<43 base64url>", b.JoinToken)
	}
	other := create(t, "prod")
	if bytes.Equal(other.SerfKey, b.SerfKey) || other.JoinToken == b.JoinToken || other.CAKey.Equal(b.CAKey) {
		t.Error("two bundles share secrets")
	}
	for _, name := range []string{"", "Prod", "-prod", "prod-", "a_b", "a.b", strings.Repeat("a", 64)} {
		if _, err := bundle.Create(name); err == nil {
			t.Errorf("Create(%q) succeeded; want an error", name)
		}
	}
	if _, err := bundle.Create(strings.Repeat("a", 63)); err != nil {
		t.Errorf("63-character name: %v", err)
	}
}

func TestRoundTrip(t *testing.T) {
	b := create(t, "prod")
	text := marshal(t, b)
	got, err := bundle.Parse("bundle.toml", []byte(text))
	if err != nil {
		t.Fatalf("parse what Marshal wrote: %v\n%s", err, text)
	}
	if got.Cluster != b.Cluster || !got.CACert.Equal(b.CACert) || !got.CAKey.Equal(b.CAKey) ||
		!bytes.Equal(got.SerfKey, b.SerfKey) || got.JoinToken != b.JoinToken {
		t.Errorf("round trip changed the bundle:\n got %#v\nwant %#v", got, b)
	}
	if again := marshal(t, got); again != text {
		t.Errorf("marshal after parse differs:\n%s\nvs\n%s", again, text)
	}
	if !got.CheckToken(b.JoinToken) || got.CheckToken(strings.Replace(b.JoinToken, "plinth1.", "plinth1.0", 1)[:len(b.JoinToken)]) || got.CheckToken("") {
		t.Error("CheckToken accepts a wrong token or refuses the right one")
	}

	path := filepath.Join(t.TempDir(), "bundle.toml")
	if err := bundle.WriteFile(path, []byte(text)); err != nil {
		t.Fatal(err)
	}
	loaded, err := bundle.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(loaded.SerfKey, b.SerfKey) {
		t.Error("Load returned another serf key")
	}
}

func TestLoadRefusesLargeFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bundle.toml")
	text := marshal(t, create(t, "prod"))
	big := text + strings.Repeat("# padding\n", 7000)
	if err := os.WriteFile(path, []byte(big), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := bundle.Load(path)
	if err == nil || !strings.Contains(err.Error(), "64 KiB") {
		t.Errorf("Load of a %d-byte file: %v; want a size error", len(big), err)
	}
	if _, err := bundle.Load(filepath.Join(t.TempDir(), "missing.toml")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load of a missing file: %v; want fs.ErrNotExist", err)
	}
}

// setKey replaces the value of key in a file Marshal wrote; value is a
// TOML value, or PEM text, which becomes a multi-line literal string.
// An empty value removes the key.
func setKey(t testing.TB, text, key, value string) string {
	t.Helper()
	re := regexp.MustCompile(`(?ms)^` + key + ` = ('''\n.*?'''|"[^"\n]*")\n`)
	if !re.MatchString(text) {
		t.Fatalf("no key %s in\n%s", key, text)
	}
	repl := ""
	switch {
	case strings.HasPrefix(value, "-----BEGIN"):
		repl = key + " = '''\n" + value + "'''\n"
	case value != "":
		repl = key + " = " + value + "\n"
	}
	return re.ReplaceAllLiteralString(text, repl)
}

func lineOf(text, key string) int {
	for i, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, key+" = ") {
			return i + 1
		}
	}
	return 0
}

func pemOf(typ string, der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}))
}

func keyPEM(t testing.TB, key any) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pemOf("PRIVATE KEY", der)
}

func TestParseErrors(t *testing.T) {
	b := create(t, "prod")
	text := marshal(t, b)
	other := create(t, "prod")
	leaf, err := b.HostCertificate("node1", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	hashAt := strings.Index(b.JoinToken, ".") + 1
	flipped := b.JoinToken[:hashAt] + string("10"[b.JoinToken[hashAt]&1]) + b.JoinToken[hashAt+1:]
	if flipped[hashAt] == b.JoinToken[hashAt] {
		flipped = b.JoinToken[:hashAt] + "f" + b.JoinToken[hashAt+1:]
	}
	const fix = "restore the file from the bundle.toml that `plinth cluster init` wrote"

	for _, tc := range []struct {
		name string
		text string
		key  string // reported, on its line
		want string
	}{
		{"tampered token hash", setKey(t, text, "join_token", strconv.Quote(flipped)), "join_token", "names CA"},
		{"malformed token", setKey(t, text, "join_token", `"plinth1.abc"`), "join_token", "want plinth1."},
		{"CA key of another bundle", setKey(t, text, "ca_key", keyPEM(t, other.CAKey)), "ca_key", "does not belong to ca_cert"},
		{"short serf key", setKey(t, text, "serf_key", strconv.Quote(base64.StdEncoding.EncodeToString(make([]byte, 16)))), "serf_key", "want 32 bytes of base64, got 16"},
		{"serf key not base64", setKey(t, text, "serf_key", `"not base64!"`), "serf_key", "want 32 bytes of base64"},
		{"serf key not a string", setKey(t, text, "serf_key", `32`), "serf_key", "want a string, got integer"},
		{"non-CA certificate", setKey(t, setKey(t, text, "ca_cert", pemOf("CERTIFICATE", leaf.Leaf.Raw)), "ca_key", keyPEM(t, leaf.PrivateKey)), "ca_cert", "is not a CA certificate"},
		{"CA of another cluster", setKey(t, text, "cluster", `"staging"`), "ca_cert", `not the CA of cluster "staging"`},
		{"bad cluster name", setKey(t, text, "cluster", `"Prod"`), "cluster", "want 1 to 63 lowercase letters"},
		{"CA certificate not PEM", setKey(t, text, "ca_cert", `"MIIB"`), "ca_cert", "want a PEM \"CERTIFICATE\" block"},
		{"key where the certificate goes", setKey(t, text, "ca_cert", keyPEM(t, b.CAKey)), "ca_cert", `got "PRIVATE KEY"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := bundle.Parse("bundle.toml", []byte(tc.text))
			if err == nil {
				t.Fatalf("parsed:\n%s", tc.text)
			}
			where := fmt.Sprintf("bundle.toml:%d: %s: ", lineOf(tc.text, tc.key), tc.key)
			if msg := err.Error(); !strings.HasPrefix(msg, where) || !strings.Contains(msg, tc.want) || !strings.HasSuffix(msg, fix) {
				t.Errorf("error:\n  %s\nwant it to start with %q, say %q and end with %q", msg, where, tc.want, fix)
			}
		})
	}

	for _, tc := range []struct {
		name, text, want string
	}{
		{"unknown key", text + "extra = \"x\"\n", fmt.Sprintf("bundle.toml:%d: extra: unknown key; a cluster bundle has only the keys", strings.Count(text, "\n")+1)},
		{"credentials instead of bundle", marshal(t, mustIssue(t, b, "admin", time.Hour)), "unknown key; a cluster bundle has only the keys"},
		{"missing key", setKey(t, text, "serf_key", ""), "bundle.toml: serf_key: missing; " + fix},
		{"syntax", text + "= \n", "bundle.toml:" + strconv.Itoa(strings.Count(text, "\n")+1) + ": invalid TOML"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := bundle.Parse("bundle.toml", []byte(tc.text))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error: %v\nwant it to contain %q", err, tc.want)
			}
		})
	}
}

func TestParseJoinToken(t *testing.T) {
	b := create(t, "prod")
	hash, secret, err := bundle.ParseJoinToken(b.JoinToken)
	if err != nil {
		t.Fatal(err)
	}
	if hash != sha256.Sum256(b.CACert.RawSubjectPublicKeyInfo) || len(secret) != 32 {
		t.Errorf("ParseJoinToken = %x, %d-byte secret; want the CA's SPKI hash and 32 bytes", hash, len(secret))
	}
	parts := strings.Split(b.JoinToken, ".")
	h, s := parts[1], parts[2]
	for _, bad := range []string{
		"",
		"plinth1.",
		"plinth1." + h,
		"plinth2." + h + "." + s,
		"plinth1." + strings.ToUpper(h) + "." + s,
		"plinth1." + h[:62] + "." + s,
		"plinth1." + h[:63] + "g." + s,
		"plinth1." + h + "." + s[:42],
		"plinth1." + h + "." + s + "A",
		"plinth1." + h + "." + s + "=",
		"plinth1." + h + "." + s[:42] + "+",
		"plinth1." + h + "." + s + ".x",
		" " + b.JoinToken,
	} {
		_, _, err := bundle.ParseJoinToken(bad)
		if err == nil {
			t.Errorf("ParseJoinToken(%q) succeeded", bad)
			continue
		}
		if strings.Contains(err.Error(), s[:20]) {
			t.Errorf("error repeats the token's secret: %v", err)
		}
	}
}

func mustIssue(t testing.TB, b *bundle.Bundle, name string, validity time.Duration) *bundle.Credentials {
	t.Helper()
	c, err := b.IssueClient(name, validity)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestHostCertificate(t *testing.T) {
	b := create(t, "prod")
	ips := []net.IP{net.ParseIP("10.0.0.5"), net.ParseIP("fd00::5"), net.ParseIP("10.0.0.5")}
	cert, err := b.HostCertificate("abcdefghijklmnop", "web-1.lan", ips)
	if err != nil {
		t.Fatal(err)
	}
	leaf := cert.Leaf
	if leaf == nil {
		t.Fatal("Leaf not set")
	}
	if leaf.Subject.CommonName != "abcdefghijklmnop" || !slices.Equal(leaf.DNSNames, []string{"abcdefghijklmnop", "web-1.lan"}) {
		t.Errorf("CN %q, DNS names %q", leaf.Subject.CommonName, leaf.DNSNames)
	}
	if len(leaf.IPAddresses) != 2 || !leaf.IPAddresses[0].Equal(ips[0]) || !leaf.IPAddresses[1].Equal(ips[1]) {
		t.Errorf("IP addresses %v, want 10.0.0.5 and fd00::5", leaf.IPAddresses)
	}
	if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
		t.Errorf("ExtKeyUsage %v, want server and client auth", leaf.ExtKeyUsage)
	}
	now := time.Now()
	if d := now.Sub(leaf.NotBefore); d < 59*time.Minute || d > 61*time.Minute {
		t.Errorf("NotBefore is %v ago, want 1h", d)
	}
	if d := leaf.NotAfter.Sub(now); d < 364*24*time.Hour || d > 366*24*time.Hour {
		t.Errorf("NotAfter is in %v, want a year", d)
	}
	if len(cert.Certificate) != 2 || !bytes.Equal(cert.Certificate[1], b.CACert.Raw) {
		t.Error("chain does not end in the CA certificate")
	}
	if leaf.SerialNumber.BitLen() < 100 {
		t.Errorf("serial %v is not a random 128-bit number", leaf.SerialNumber)
	}
	again, err := b.HostCertificate("abcdefghijklmnop", "bad_name!", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(again.Leaf.DNSNames, []string{"abcdefghijklmnop"}) {
		t.Errorf("invalid host name not left out: %q", again.Leaf.DNSNames)
	}
	if again.PrivateKey.(ed25519.PrivateKey).Equal(cert.PrivateKey) || again.Leaf.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Error("two host certificates share a key or serial")
	}
	if _, err := b.HostCertificate("", "web-1", nil); err == nil {
		t.Error("empty node ID accepted")
	}
	named, err := b.HostCertificate("abcdefghijklmnop", "web-1", nil, "git.plinth", "web-1")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(named.Leaf.DNSNames, []string{"abcdefghijklmnop", "web-1", "git.plinth"}) {
		t.Errorf("DNS names with extra names: %q", named.Leaf.DNSNames)
	}
	if _, err := b.HostCertificate("abcdefghijklmnop", "", nil, "bad name"); err == nil {
		t.Error("an extra name that is no DNS name accepted")
	}
}

// serve starts an HTTPS server on 127.0.0.1 that answers with the client
// certificate's common name.
func serve(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TLS.PeerCertificates) > 0 {
			io.WriteString(w, r.TLS.PeerCertificates[0].Subject.CommonName)
		}
	}))
	srv.TLS = cfg
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are expected
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.URL
}

// get returns the body of a GET of url, or an error if it fails or is not
// 200 OK.
func get(url string, cfg *tls.Config) (string, error) {
	tr := &http.Transport{TLSClientConfig: cfg}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %s", resp.Status)
	}
	return string(body), nil
}

func hostCert(t testing.TB, b *bundle.Bundle, nodeID string) tls.Certificate {
	t.Helper()
	c, err := b.HostCertificate(nodeID, "localhost", []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func selfSigned(t testing.TB, cn string) tls.Certificate {
	t.Helper()
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestServerTLS(t *testing.T) {
	b := create(t, "prod")
	other := create(t, "prod")
	url := serve(t, b.ServerTLS(hostCert(t, b, "server")))

	t.Run("operator credentials", func(t *testing.T) {
		body, err := get(url, mustIssue(t, b, "admin", time.Hour).TLS())
		if err != nil || body != "admin" {
			t.Errorf("GET = %q, %v; want 200 from client \"admin\"", body, err)
		}
	})
	t.Run("another host", func(t *testing.T) {
		body, err := get(url, b.ClientTLS(hostCert(t, b, "caller")))
		if err != nil || body != "caller" {
			t.Errorf("GET = %q, %v; want 200 from client \"caller\"", body, err)
		}
	})
	// presenting makes a client that presents cert whatever CAs the server
	// asks for, so that the server is what refuses it.
	presenting := func(cert tls.Certificate) *tls.Config {
		cfg := bundle.ClientTLS(b.CACert, tls.Certificate{})
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
		return cfg
	}
	for name, cfg := range map[string]*tls.Config{
		"no certificate":            bundle.ClientTLS(b.CACert, tls.Certificate{}),
		"credentials of another CA": presenting(mustIssue(t, other, "admin", time.Hour).Cert),
		"host of another CA":        presenting(hostCert(t, other, "caller")),
		"self-signed client":        presenting(selfSigned(t, "admin")),
		"TLS 1.2 client":            {InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12},
	} {
		t.Run(name, func(t *testing.T) {
			if body, err := get(url, cfg); err == nil {
				t.Errorf("GET succeeded (%q); want the server to refuse", body)
			}
		})
	}
}

func TestClientTLS(t *testing.T) {
	b := create(t, "prod")
	other := create(t, "prod")
	client := b.ClientTLS(hostCert(t, b, "caller"))
	for name, server := range map[string]*tls.Config{
		// A server with the other cluster's bundle would refuse the
		// client anyway; let it accept any client, so that only the
		// client's check can fail.
		"server of another CA": {Certificates: []tls.Certificate{hostCert(t, other, "server")}, ClientAuth: tls.RequestClientCert},
		// Operator credentials are for clients only.
		"server with operator credentials": b.ServerTLS(mustIssue(t, b, "admin", time.Hour).Cert),
		"self-signed server":               {Certificates: []tls.Certificate{selfSigned(t, "server")}, ClientAuth: tls.RequestClientCert},
	} {
		t.Run(name, func(t *testing.T) {
			body, err := get(serve(t, server), client)
			if err == nil {
				t.Fatalf("GET succeeded (%q); want the client to refuse the server", body)
			}
			if !strings.Contains(err.Error(), "verify host certificate against cluster CA") {
				t.Errorf("error %v does not say the client refused the host certificate", err)
			}
		})
	}

	// Hosts are checked by chain alone: 127.0.0.1 is not in this
	// certificate.
	moved, err := b.HostCertificate("server", "elsewhere", []net.IP{net.IPv4(10, 9, 9, 9)})
	if err != nil {
		t.Fatal(err)
	}
	if body, err := get(serve(t, b.ServerTLS(moved)), client); err != nil || body != "caller" {
		t.Errorf("GET of a host whose address changed = %q, %v; want 200", body, err)
	}
}

// secrets are the forms in which a key could leak into text.
func secrets(keys ...[]byte) []string {
	s := []string{"PRIVATE KEY"}
	for _, k := range keys {
		s = append(s, base64.StdEncoding.EncodeToString(k), base64.RawURLEncoding.EncodeToString(k),
			hex.EncodeToString(k), fmt.Sprint(k), fmt.Sprintf("%x", k)[:16])
	}
	return s
}

// renderings prints v in every way a log line might.
func renderings(v any) []string {
	out := []string{fmt.Sprint(v)}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%d", "%x", "%q"} {
		out = append(out, fmt.Sprintf(verb, v), fmt.Sprintf(verb, struct{ Field any }{v}))
	}
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "v", v)
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "v", v)
	return append(out, buf.String())
}

func TestNoSecretsInOutput(t *testing.T) {
	b := create(t, "prod")
	creds := mustIssue(t, b, "admin", time.Hour)
	_, tokenSecret, err := bundle.ParseJoinToken(b.JoinToken)
	if err != nil {
		t.Fatal(err)
	}
	hash := sha256.Sum256(b.CACert.RawSubjectPublicKeyInfo)
	fp := hex.EncodeToString(hash[:8])

	if got, want := b.String(), "bundle cluster=prod ca="+fp; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if got := creds.String(); !strings.HasPrefix(got, `credentials cluster=prod name="admin" ca=`+fp+" expires=") {
		t.Errorf("String() = %q", got)
	}
	bundleSecrets := append(secrets(b.SerfKey, b.CAKey.Seed(), tokenSecret), b.JoinToken)
	credsSecrets := secrets(creds.Cert.PrivateKey.(ed25519.PrivateKey).Seed())
	for _, tc := range []struct {
		v       any
		secrets []string
	}{
		{b, bundleSecrets}, {*b, bundleSecrets},
		{creds, credsSecrets}, {*creds, credsSecrets},
	} {
		for _, out := range renderings(tc.v) {
			if !strings.Contains(out, fp) {
				t.Errorf("output lacks the CA fingerprint: %s", out)
			}
			for _, s := range tc.secrets {
				if strings.Contains(out, s) {
					t.Errorf("output contains secret %q: %s", s, out)
				}
			}
		}
	}
}

func TestCredentials(t *testing.T) {
	b := create(t, "prod")
	creds := mustIssue(t, b, "alice@laptop", 24*time.Hour)
	leaf := creds.Cert.Leaf
	if leaf.Subject.CommonName != "alice@laptop" || !slices.Equal(leaf.Subject.Organization, []string{"plinth-client"}) ||
		!slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
		t.Errorf("client certificate: subject %v, ExtKeyUsage %v", leaf.Subject, leaf.ExtKeyUsage)
	}
	if d := time.Until(leaf.NotAfter); d < 23*time.Hour || d > 25*time.Hour {
		t.Errorf("expires in %v, want 24h", d)
	}
	text := marshal(t, creds)
	got, err := bundle.ParseCredentials("client.toml", []byte(text))
	if err != nil {
		t.Fatalf("parse what Marshal wrote: %v\n%s", err, text)
	}
	if got.Cluster != "prod" || !got.CACert.Equal(b.CACert) || !got.Cert.Leaf.Equal(leaf) ||
		!got.Cert.PrivateKey.(ed25519.PrivateKey).Equal(creds.Cert.PrivateKey) {
		t.Errorf("round trip changed the credentials: %#v", got)
	}
	if _, err := b.IssueClient("", time.Hour); err == nil {
		t.Error("empty name accepted")
	}
	if _, err := b.IssueClient("admin", 0); err == nil {
		t.Error("zero validity accepted")
	}
	if c := mustIssue(t, b, "admin", 100*365*24*time.Hour); c.Cert.Leaf.NotAfter.After(b.CACert.NotAfter) {
		t.Error("credentials outlive the CA")
	}

	other := create(t, "prod")
	expired := signClient(t, b, time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour))
	const fix = "make new credentials with `plinth cluster credentials`"
	for _, tc := range []struct {
		name, text, key, want string
	}{
		{"key of another certificate", setKey(t, text, "key", keyPEM(t, mustIssue(t, b, "x", time.Hour).Cert.PrivateKey)), "key", "does not belong to cert"},
		{"certificate of another CA", setKey(t, text, "cert", pemOf("CERTIFICATE", mustIssue(t, other, "alice@laptop", time.Hour).Cert.Leaf.Raw)), "cert", "not a current client certificate from ca_cert"},
		{"expired", setKey(t, setKey(t, text, "cert", pemOf("CERTIFICATE", expired.Leaf.Raw)), "key", keyPEM(t, expired.PrivateKey)), "cert", "expired"},
		{"CA key instead of certificate", setKey(t, text, "ca_cert", keyPEM(t, b.CAKey)), "ca_cert", "want a PEM"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := bundle.ParseCredentials("client.toml", []byte(tc.text))
			if err == nil {
				t.Fatalf("parsed:\n%s", tc.text)
			}
			where := fmt.Sprintf("client.toml:%d: %s: ", lineOf(tc.text, tc.key), tc.key)
			if msg := err.Error(); !strings.HasPrefix(msg, where) || !strings.Contains(msg, tc.want) || !strings.HasSuffix(msg, fix) {
				t.Errorf("error:\n  %s\nwant it to start with %q, say %q and end with %q", msg, where, tc.want, fix)
			}
		})
	}

	path := filepath.Join(t.TempDir(), "client.toml")
	if err := bundle.WriteFile(path, []byte(text)); err != nil {
		t.Fatal(err)
	}
	if _, err := bundle.LoadCredentials(path); err != nil {
		t.Error(err)
	}
}

// signClient makes a client certificate for "admin" valid from notBefore
// to notAfter, as IssueClient would, but with any times.
func signClient(t testing.TB, b *bundle.Bundle, notBefore, notAfter time.Time) tls.Certificate {
	t.Helper()
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "admin"},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, b.CACert, pub, b.CAKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "bundle.toml")
	if err := bundle.WriteFile(path, []byte("first")); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
	err = bundle.WriteFile(path, []byte("second"))
	if err == nil || !strings.Contains(err.Error(), "already exists; remove it or pick another path") {
		t.Errorf("overwrite: %v; want a refusal that says what to do", err)
	}
	if data, _ := os.ReadFile(path); string(data) != "first" {
		t.Errorf("file now holds %q, want it untouched", data)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only bundle.toml (no temporary files left)", len(entries))
	}
	if err := bundle.WriteFile(filepath.Join(dir, "missing", "x.toml"), nil); err == nil {
		t.Error("write into a missing directory succeeded")
	}
}
