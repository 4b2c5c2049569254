package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/unstuck-proxy/unstuck/internal/demo"
)

func newDemoCmd(stdout, stderr io.Writer) *cobra.Command {
	opts := demo.Options{
		Conns:        demo.DefaultConns,
		Duration:     demo.DefaultDuration,
		UpstreamIdle: demo.DefaultUpstreamIdle,
	}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Show a legacy app's CLOSE_WAIT pile-up, then the same app through unstuck",
		Long: `demo needs no configuration and uses nothing but 127.0.0.1. It starts an
upstream that closes connections idle for --idle, and a legacy client that
never closes a socket, with --conns keep-alive connections and one request
on each every 1.5 x --idle.

For --duration the client talks to the upstream directly, then for
--duration through an embedded unstuck with the default configuration.
It prints the sockets in CLOSE_WAIT as it goes, then a table and a
summary. Ctrl-C stops it early; everything it opened is closed on exit.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case opts.Conns < 1:
				return errors.New("--conns must be at least 1")
			case opts.Duration <= 0:
				return errors.New("--duration must be positive")
			case opts.UpstreamIdle <= 0:
				return errors.New("--idle must be positive")
			}
			opts.Out = stdout
			opts.Terminal = isTerminal(stdout)

			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			go func() {
				<-ctx.Done()
				// A second signal ends the process at once.
				stop()
			}()
			if _, err := demo.Run(ctx, opts); err != nil {
				fmt.Fprintf(stderr, "unstuck demo: %v\n", err)
				return exitError(exitFailed)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&opts.Conns, "conns", opts.Conns, "keep-alive connections the legacy app holds")
	f.DurationVar(&opts.Duration, "duration", opts.Duration, "length of each phase")
	f.DurationVar(&opts.UpstreamIdle, "idle", opts.UpstreamIdle, "the upstream closes connections idle this long")
	return cmd
}

// isTerminal reports whether w is a character device, such as a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
