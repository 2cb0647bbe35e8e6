// Package version holds the plinth release string, stamped at link time.
package version

// Version is set by the linker (-X github.com/plinth-os/plinth/version.Version=...)
// from the Makefile; a plain `go build` reports "dev".
var Version = "dev"
