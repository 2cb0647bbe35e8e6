// Package manifests carries the platform's bootstrap manifest
// (platform.toml) in the binary, so a host can bootstrap its cluster
// with nothing but its image. The example machine configs beside it are
// documentation, not code.
package manifests

import _ "embed"

// Platform is manifests/platform.toml.
//
//go:embed platform.toml
var Platform []byte
