package httpproxy

import (
	"strings"
	"testing"
)

func TestTableMatch(t *testing.T) {
	tab, err := NewTable([]Route{
		{ID: "root", Domain: "example.com"},
		{ID: "api", Domain: "example.com", Path: "/api"},
		{ID: "api-v2", Domain: "example.com", Path: "/api/v2/"},
		{ID: "wild", Domain: "*.example.com"},
		{ID: "wild-deep", Domain: "*.eu.example.com"},
		{ID: "shop-admin", Domain: "shop.example.com", Path: "/admin"},
		{ID: "other", Domain: "Other.ORG."},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ host, path, want string }{
		{"example.com", "/", "root"},
		{"example.com", "/index.html", "root"},
		{"example.com", "/api", "api"},
		{"example.com", "/api/", "api"},
		{"example.com", "/api/users?x=1", "api"},
		{"example.com", "/api?x=1", "api"},
		{"example.com", "/apix", "root"},
		{"example.com", "/api/v2", "api-v2"},
		{"example.com", "/api/v2/x", "api-v2"},
		{"example.com", "/api/v23", "api"},
		{"EXAMPLE.com", "/api", "api"},
		{"example.com:8080", "/api", "api"},
		{"example.com.", "/", "root"},
		{"www.example.com", "/", "wild"},
		{"a.b.example.com", "/", "wild"},
		{"x.eu.example.com", "/", "wild-deep"},
		{"eu.example.com", "/", "wild"},
		{"shop.example.com", "/admin/users", "shop-admin"},
		// shop.example.com has no route for "/": its wildcard serves it.
		{"shop.example.com", "/", "wild"},
		{"other.org", "/x", "other"},
		{"example.org", "/", ""},
		{"xexample.com", "/", ""},
		{"", "/", ""},
	} {
		r := tab.Match(tc.host, tc.path)
		got := ""
		if r != nil {
			got = r.ID
		}
		if got != tc.want {
			t.Errorf("Match(%q, %q) = %q, want %q", tc.host, tc.path, got, tc.want)
		}
	}
}

func TestTableDefaults(t *testing.T) {
	tab, err := NewTable([]Route{{ID: "r", Domain: "example.com", Service: "web"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := tab.Match("example.com", "/")
	if r.Path != "/" || r.ConnectTimeout != defaultConnectTimeout || r.Timeout != defaultTimeout {
		t.Errorf("route defaults: path %q, connect timeout %v, timeout %v", r.Path, r.ConnectTimeout, r.Timeout)
	}
}

func TestNewTableErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		routes []Route
		want   string
	}{
		{"duplicate", []Route{{ID: "a", Domain: "example.com", Path: "/api"}, {ID: "b", Domain: "EXAMPLE.com", Path: "/api/"}}, "already routed"},
		{"duplicate root", []Route{{ID: "a", Domain: "example.com"}, {ID: "b", Domain: "example.com", Path: "/"}}, "already routed"},
		{"empty domain", []Route{{ID: "a"}}, "domain"},
		{"bad domain", []Route{{ID: "a", Domain: "exa mple.com"}}, "not allowed"},
		{"inner wildcard", []Route{{ID: "a", Domain: "a.*.example.com"}}, "not allowed"},
		{"relative path", []Route{{ID: "a", Domain: "example.com", Path: "api"}}, "path"},
		{"query in path", []Route{{ID: "a", Domain: "example.com", Path: "/api?x"}}, "path"},
	} {
		_, err := NewTable(tc.routes, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want one saying %q", tc.name, err, tc.want)
		}
	}
}

func BenchmarkTableMatch(b *testing.B) {
	var routes []Route
	for _, d := range []string{"a.com", "b.com", "c.com", "*.d.com"} {
		for _, p := range []string{"/", "/api", "/static", "/api/v2"} {
			routes = append(routes, Route{ID: d + p, Domain: d, Path: p})
		}
	}
	tab, err := NewTable(routes, nil)
	if err != nil {
		b.Fatal(err)
	}
	host, path := []byte("www.D.com:443"), []byte("/api/v2/users?id=1")
	scratch := make([]byte, 0, 64)
	b.ReportAllocs()
	for b.Loop() {
		if tab.match(host, path, scratch) == nil {
			b.Fatal("no match")
		}
	}
}
