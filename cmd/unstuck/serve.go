package main

import (
	"context"
	"os"

	"github.com/fsnotify/fsnotify"
	"github.com/spf13/viper"
	"go.uber.org/zap"

	"github.com/unstuck-proxy/unstuck/config"
	"github.com/unstuck-proxy/unstuck/sidecar"
)

// serveOptions is what serve needs to run and to reload.
type serveOptions struct {
	cfg   *config.Config
	log   *zap.Logger
	level zap.AtomicLevel // the logger's level, which a reload may change
	// reload loads the configuration again from the same file, environment
	// and flags as at start.
	reload func() (*config.Config, error)
	// hup delivers SIGHUP. The caller subscribes before loading the
	// configuration, so a SIGHUP during startup is a reload, not the
	// signal's default of ending the process.
	hup <-chan os.Signal
}

// serve runs the sidecar until ctx is cancelled (SIGTERM, SIGINT) or a
// listener fails. SIGHUP, and any change to the configuration file, reload
// the configuration; an invalid one is logged and the running one kept.
func serve(ctx context.Context, o serveOptions) error {
	log := o.log
	// Watching starts before the sidecar does: a change made while it
	// starts is a reload once it runs.
	reloads := make(chan string, 1)
	if o.cfg.File != "" {
		watchFile(o.cfg.File, reloads)
	}
	sc, err := sidecar.New(o.cfg, log, o.level)
	if err != nil {
		return err
	}

	var failure error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case failure = <-sc.Errors():
			log.Error("listener failed", zap.Error(failure))
			break loop
		case <-o.hup:
			reload(sc, o, "SIGHUP")
		case why := <-reloads:
			reload(sc, o, why)
		}
	}
	timeout := o.cfg.ShutdownTimeout
	log.Info("shutting down", zap.Duration("timeout", timeout))
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := sc.Shutdown(sctx); err != nil {
		log.Warn("shutdown", zap.Error(err))
	}
	return failure
}

// reload loads the configuration again and applies it; on any problem the
// running configuration stays and every problem is logged.
func reload(sc *sidecar.Sidecar, o serveOptions, why string) {
	o.log.Info("reloading configuration", zap.String("trigger", why))
	cfg, err := o.reload()
	if err == nil {
		err = sc.Reload(cfg)
	} else {
		sc.ReloadRejected()
	}
	if err != nil {
		for _, p := range config.AsProblems(err) {
			o.log.Error("configuration not reloaded; the running one stays", zap.Stringer("problem", p))
		}
		return
	}
	o.log.Info("configuration reloaded")
}

// watchFile asks for a reload whenever the configuration file changes,
// with viper's watcher (it follows the symlink swaps of a Kubernetes
// ConfigMap). The watcher lives as long as the process.
func watchFile(path string, reloads chan<- string) {
	v := viper.New()
	v.SetConfigFile(path)
	v.OnConfigChange(func(fsnotify.Event) {
		select {
		case reloads <- "file changed":
		default: // one is already pending
		}
	})
	v.WatchConfig()
}
