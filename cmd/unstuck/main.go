// Command unstuck is an HTTP reverse-proxy sidecar: the app talks to it on
// a local address and it keeps healthy, bounded connection pools to the
// upstream servers.
//
//	unstuck [--config FILE] [--log-level L]   run the sidecar
//	unstuck --listen ADDR --upstream HOST:PORT  run with defaults, reading no file
//	unstuck check [--config FILE]             validate the configuration
//	unstuck capture [--remove] --config FILE  install (remove) the capture rules (an init container)
//	unstuck version                           print the version
package main

import "os"

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr, os.Environ()))
}
