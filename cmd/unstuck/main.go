// Command unstuck is an HTTP reverse-proxy sidecar: the app talks to it on
// a local address and it keeps healthy, bounded connection pools to the
// upstream servers.
//
//	unstuck [--config FILE] [--log-level L]   run the sidecar
//	unstuck --listen ADDR --upstream HOST:PORT  run with defaults, reading no file
//	unstuck check [--config FILE]             validate the configuration
//	unstuck capture [--remove] --config FILE  install (remove) the capture rules (an init container)
//	unstuck version, unstuck --version        print the version
//
// Under systemd (Type=notify) it sends READY=1 once its listeners are
// bound and STOPPING=1 when it starts to drain.
package main

import (
	"os"

	"github.com/unstuck-proxy/unstuck"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = "dev"

func main() {
	unstuck.Version = version // for unstuck_build_info
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr, os.Environ()))
}
