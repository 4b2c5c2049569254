// Package unstuck holds what the whole module shares; today that is the
// default configuration file.
package unstuck

import _ "embed"

// DefaultConfig is the repository's config.yaml: every key with its default
// value and a comment saying what it does, generated from the schema in
// config/config.go. unstuck runs with it when given no configuration file.
//
//go:embed config.yaml
var DefaultConfig []byte
