package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/unstuck-proxy/unstuck/capture"
	"github.com/unstuck-proxy/unstuck/config"
)

// Seams for tests of the command without CAP_NET_ADMIN.
var (
	installRules = capture.Install
	removeRules  = capture.Remove
)

func newCaptureCmd(stdout, stderr io.Writer, environ []string) *cobra.Command {
	var remove bool
	cmd := &cobra.Command{
		Use:   "capture",
		Short: "Install the rules that redirect the app's connections to the capture listener, and exit",
		Long: `capture installs, in the current network namespace, nftables rules that
redirect the app's outbound TCP connections to the destinations the capture
section names (capture.ports, capture.cidrs) to the capture listener
(capture.listener), which forwards each to where it was going. It is what
a pod's init container runs, with CAP_NET_ADMIN; the sidecar itself needs
no privilege. Connections of the UIDs in capture.exclude_uids (unstuck's
own) and with capture.mark are never captured.

The rules are a table of their own, "inet unstuck", replaced whole: run it
again and the rules are the same. --remove deletes that table and nothing
else; nftables can list it with: nft list table inet unstuck`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadQuiet(cmd, environ, nil)
			if err != nil { // TLS files are the sidecar's business, not read here
				fmt.Fprintln(stderr, "unstuck: invalid configuration:")
				for _, p := range config.AsProblems(err) {
					fmt.Fprintf(stderr, "  %s\n", p)
				}
				return exitError(exitFailed)
			}
			if remove {
				if err := removeRules(); err != nil {
					fmt.Fprintf(stderr, "unstuck: %v\n", err)
					return exitError(exitFailed)
				}
				fmt.Fprintf(stdout, "removed table inet %s\n", capture.Table)
				return nil
			}
			rules, err := captureRules(cfg)
			if err == nil {
				err = installRules(rules)
			}
			if err != nil {
				fmt.Fprintf(stderr, "unstuck: %v\n", err)
				return exitError(exitFailed)
			}
			fmt.Fprintf(stdout, "installed:\n%s", rules)
			return nil
		},
	}
	cmd.Flags().BoolVar(&remove, "remove", false, "delete the rules (table inet "+capture.Table+") instead")
	return cmd
}

// captureRules are the rules cfg's capture section describes, redirecting
// to the port of its listener (config validation has checked it).
func captureRules(cfg *config.Config) (capture.Rules, error) {
	k := cfg.Capture
	if k.Listener == "" {
		return capture.Rules{}, errors.New("capture.listener is not set: there is nothing to capture")
	}
	l := cfg.Listeners[k.Listener]
	v4, v6, _ := config.RedirectFamilies(l.Listen)
	_, ps, err := net.SplitHostPort(l.Listen)
	if err != nil {
		return capture.Rules{}, fmt.Errorf("listener %s: %w", k.Listener, err)
	}
	port, err := strconv.ParseUint(ps, 10, 16)
	if err != nil {
		return capture.Rules{}, fmt.Errorf("listener %s: port %q: %w", k.Listener, ps, err)
	}
	return capture.Rules{
		Port: uint16(port), IPv4: v4, IPv6: v6,
		Ports: k.Ports, CIDRs: k.CIDRs,
		ExcludePorts: k.ExcludePorts, ExcludeUIDs: k.ExcludeUIDs, ExcludeMark: uint32(k.Mark),
	}, nil
}
