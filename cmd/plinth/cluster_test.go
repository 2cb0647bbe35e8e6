package main

import (
	"bytes"
	"encoding/base64"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host/bundle"
)

func runCluster(args ...string) (string, error) {
	cmd := clusterCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(io.Discard)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

func TestClusterInit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "prod")
	out, err := runCluster("init", "--dir", dir, "--name", "prod")
	if err != nil {
		t.Fatal(err)
	}
	bundlePath, credsPath := filepath.Join(dir, "bundle.toml"), filepath.Join(dir, "client.toml")
	if m := mode(t, dir); m != 0o700 {
		t.Errorf("%s has mode %v, want 0700", dir, m)
	}
	for _, p := range []string{bundlePath, credsPath} {
		if m := mode(t, p); m != 0o600 {
			t.Errorf("%s has mode %v, want 0600", p, m)
		}
		if !strings.Contains(out, p) {
			t.Errorf("output does not name %s:\n%s", p, out)
		}
	}
	b, err := bundle.Load(bundlePath)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := bundle.LoadCredentials(credsPath)
	if err != nil {
		t.Fatal(err)
	}
	if b.Cluster != "prod" || creds.Cert.Leaf.Subject.CommonName != "admin" || !creds.CACert.Equal(b.CACert) {
		t.Errorf("made %v and %v; want cluster prod and credentials \"admin\" from its CA", b, creds)
	}
	if d := time.Until(creds.Cert.Leaf.NotAfter); d < 364*24*time.Hour {
		t.Errorf("admin credentials expire in %v, want a year", d)
	}
	for _, secret := range []string{"PRIVATE KEY", base64.StdEncoding.EncodeToString(b.SerfKey), b.JoinToken} {
		if strings.Contains(out, secret) {
			t.Errorf("output shows secret %q:\n%s", secret, out)
		}
	}

	tok, err := runCluster("token", "--bundle", bundlePath)
	if err != nil || tok != b.JoinToken+"\n" {
		t.Errorf("cluster token printed %q, %v; want the bundle's join token", tok, err)
	}

	before, err := os.ReadFile(bundlePath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := runCluster("init", "--dir", dir); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("second init: %v; want a refusal", err)
	}
	if after, _ := os.ReadFile(bundlePath); !bytes.Equal(after, before) {
		t.Error("second init changed the bundle")
	}
	if _, err := runCluster("init", "--dir", t.TempDir(), "--name", "Bad_Name"); err == nil {
		t.Error("init accepted an invalid cluster name")
	}
}

func TestClusterCredentials(t *testing.T) {
	dir := t.TempDir()
	if _, err := runCluster("init", "--dir", dir); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "ci.toml")
	args := []string{"credentials", "--bundle", filepath.Join(dir, "bundle.toml"), "--name", "ci", "--out", out, "--valid", "48h"}
	if _, err := runCluster(args...); err != nil {
		t.Fatal(err)
	}
	if m := mode(t, out); m != 0o600 {
		t.Errorf("%s has mode %v, want 0600", out, m)
	}
	creds, err := bundle.LoadCredentials(out)
	if err != nil {
		t.Fatal(err)
	}
	if creds.Cluster != "plinth" || creds.Cert.Leaf.Subject.CommonName != "ci" {
		t.Errorf("got %v; want credentials \"ci\" for cluster plinth", creds)
	}
	if d := time.Until(creds.Cert.Leaf.NotAfter); d < 47*time.Hour || d > 49*time.Hour {
		t.Errorf("credentials expire in %v, want 48h", d)
	}
	if _, err := runCluster(args...); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("second credentials to the same file: %v; want a refusal", err)
	}
}
