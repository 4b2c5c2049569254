// Package unstuck holds what the whole module shares: the default
// configuration file and the version.
package unstuck

import _ "embed"

// DefaultConfig is the repository's config.yaml: every key with its default
// value and a comment saying what it does, generated from the schema in
// config/config.go. unstuck runs with it when given no configuration file.
//
//go:embed config.yaml
var DefaultConfig []byte

// Version is the release this binary is, for unstuck_build_info and the
// logs. The command sets it at start from its own main.version, which the
// release build sets with -ldflags "-X main.version=...".
var Version = "dev"
