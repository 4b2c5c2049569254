package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/unstuck-proxy/unstuck"
	"github.com/unstuck-proxy/unstuck/config"
	"github.com/unstuck-proxy/unstuck/sidecar"
)

// serveFunc is serve; tests swap it to see whether and how it is called.
var serveFunc = serve

// Exit codes.
const (
	exitOK     = 0
	exitFailed = 1 // bad configuration, or the sidecar failed
	exitUsage  = 2 // bad command line
)

// exitError ends the command with code after its message was printed.
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// run runs the command line args and returns the process exit code.
func run(args []string, stdout, stderr io.Writer, environ []string) int {
	if args == nil {
		args = []string{} // cobra reads os.Args for nil
	}
	root := newRootCmd(stdout, stderr, environ)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	var code exitError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &code):
		return int(code)
	}
	fmt.Fprintf(stderr, "unstuck: %v\nRun 'unstuck --help' for usage.\n", err)
	return exitUsage
}

// newRootCmd builds the command tree. environ is the environment as
// "KEY=value" strings; nil means the process's.
func newRootCmd(stdout, stderr io.Writer, environ []string) *cobra.Command {
	root := &cobra.Command{
		Use:   "unstuck",
		Short: "HTTP sidecar that keeps legacy apps free of sockets stuck in CLOSE_WAIT",
		Long: `unstuck accepts HTTP connections from the app on its listeners and forwards
requests to upstream servers over pooled connections.

The configuration is read from --config, else ./config.yaml, else the
built-in default; UNSTUCK_* environment variables override it (see
"unstuck check --help"). With --listen and --upstream no file is read.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// SIGHUP reloads; subscribe before anything else so that one
			// arriving during startup cannot end the process.
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)

			cfg, warnings, err := loadWarn(cmd, stderr, environ)
			if err != nil {
				return err
			}
			log, level, err := buildLogger(cfg.Log, stderr)
			if err != nil {
				fmt.Fprintf(stderr, "unstuck: %v\n", err)
				return exitError(exitFailed)
			}
			defer func() { _ = log.Sync() }() // nothing to do if stderr cannot sync
			for _, w := range warnings {
				log.Warn("environment variable ignored", zap.String("variable", w.Key), zap.String("problem", w.Msg))
			}

			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			go func() {
				<-ctx.Done()
				// A second signal ends the process at once.
				stop()
			}()

			log.Info("starting", zap.String("version", version),
				zap.Int("listeners", len(cfg.Listeners)), zap.Int("upstreams", len(cfg.Upstreams)))
			reload := func() (*config.Config, error) { return loadQuiet(cmd, environ, nil) }
			o := serveOptions{cfg: cfg, log: log, level: level, reload: reload, hup: hup, notifier: newNotifier(processEnv(environ))}
			if err := serveFunc(ctx, o); err != nil {
				log.Error("stopped", zap.Error(err))
				fmt.Fprintf(stderr, "unstuck: %v\n", err)
				return exitError(exitFailed)
			}
			log.Info("stopped")
			return nil
		},
	}
	root.CompletionOptions.DisableDefaultCmd = true
	// --version prints what the version command does.
	root.Version = version
	root.SetVersionTemplate(versionLine())
	root.SetOut(stdout)
	root.SetErr(stderr)
	config.AddFlags(root.PersistentFlags())
	root.AddCommand(newCheckCmd(stdout, stderr, environ), newVersionCmd(stdout), newDemoCmd(stdout, stderr))
	root.AddCommand(newHealthcheckCmd(stdout, stderr, environ))
	root.AddCommand(newCaptureCmd(stdout, stderr, environ))
	return root
}

func newCheckCmd(stdout, stderr io.Writer, environ []string) *cobra.Command {
	return &cobra.Command{
		Use:   "check",
		Short: "Validate the configuration and exit",
		Long: `check loads the configuration exactly as unstuck would, prints
"ok: N listeners, M upstreams" and exits 0, or prints every problem and
exits 1. It reads the TLS files of upstreams with tls.enabled as a start
would: the CA bundle, the client certificate and its key, which must
match. An UNSTUCK_ variable that names no key is a warning on stderr.

Environment variables override the file: UNSTUCK_ and the key in upper
case with "." and "-" written as "_", such as UNSTUCK_LOG_LEVEL=debug or
UNSTUCK_UPSTREAMS_BACKEND_POOL_MAX_CONNS=64. They can set any key of a
listener or upstream the file names, but cannot add one.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, warnings, err := loadWarn(cmd, stderr, environ)
			if err != nil {
				return err
			}
			printWarnings(stderr, warnings)
			fmt.Fprintf(stdout, "ok: %d listeners, %d upstreams\n", len(cfg.Listeners), len(cfg.Upstreams))
			return nil
		},
	}
}

func newVersionCmd(stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(*cobra.Command, []string) {
			fmt.Fprint(stdout, versionLine())
		},
	}
}

// versionLine is what "unstuck version" and "unstuck --version" print.
func versionLine() string {
	return fmt.Sprintf("unstuck %s (%s)\n", version, runtime.Version())
}

// processEnv is environ, or the process's environment if it is nil.
func processEnv(environ []string) []string {
	if environ == nil {
		return os.Environ()
	}
	return environ
}

// loadQuiet loads the configuration cmd's flags select; the error, if
// any, is a config.Problems. warn, if not nil, is told of each UNSTUCK_
// variable that names no key.
func loadQuiet(cmd *cobra.Command, environ []string, warn func(config.Problem)) (*config.Config, error) {
	return config.Load(config.LoadOptions{
		Flags:   cmd.Flags(),
		Environ: environ,
		Default: unstuck.DefaultConfig,
		Warn:    warn,
	})
}

// loadConfig loads the configuration cmd's flags select. On problems it
// prints them all to stderr and returns an exitError.
func loadConfig(cmd *cobra.Command, stderr io.Writer, environ []string) (*config.Config, error) {
	cfg, _, err := loadWarn(cmd, stderr, environ)
	return cfg, err
}

// loadWarn is loadConfig that also returns the environment's warnings; on
// problems it prints the warnings too, as a misspelt variable may be why.
func loadWarn(cmd *cobra.Command, stderr io.Writer, environ []string) (*config.Config, []config.Problem, error) {
	var warnings []config.Problem
	cfg, err := loadQuiet(cmd, environ, func(p config.Problem) { warnings = append(warnings, p) })
	if err == nil {
		err = sidecar.TLSProblems(cfg) // the files a start reads, read now: a bad one is named before anything listens
	}
	if err != nil {
		fmt.Fprintln(stderr, "unstuck: invalid configuration:")
		for _, p := range config.AsProblems(err) {
			fmt.Fprintf(stderr, "  %s\n", p)
		}
		printWarnings(stderr, warnings)
		return nil, nil, exitError(exitFailed)
	}
	return cfg, warnings, nil
}

func printWarnings(w io.Writer, warnings []config.Problem) {
	for _, p := range warnings {
		fmt.Fprintf(w, "unstuck: warning: %s\n", p)
	}
}

// newLogger builds the process logger described by l, writing to stderr.
func newLogger(l config.Log) (*zap.Logger, error) {
	log, _, err := buildLogger(l, os.Stderr)
	return log, err
}

// buildLogger builds a logger described by l that writes to w: the console
// encoder for people or JSON for containers, at l.Level and above. The
// returned level changes the logger's level while it runs.
func buildLogger(l config.Log, w io.Writer) (*zap.Logger, zap.AtomicLevel, error) {
	lv, err := zapcore.ParseLevel(l.Level)
	if err != nil {
		return nil, zap.AtomicLevel{}, fmt.Errorf("log.level: %w", err)
	}
	level := zap.NewAtomicLevelAt(lv)
	var enc zapcore.Encoder
	switch l.Format {
	case "json":
		ec := zap.NewProductionEncoderConfig()
		ec.EncodeTime = zapcore.ISO8601TimeEncoder
		enc = zapcore.NewJSONEncoder(ec)
	case "console":
		enc = zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig())
	default:
		return nil, zap.AtomicLevel{}, fmt.Errorf("log.format %q: want console or json", l.Format)
	}
	out := zapcore.Lock(zapcore.AddSync(w))
	return zap.New(zapcore.NewCore(enc, out, level), zap.ErrorOutput(out)), level, nil
}
