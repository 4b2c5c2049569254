package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
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
	// notifier tells systemd READY=1 once every listener is bound, and
	// STOPPING=1 when the drain starts.
	notifier notifier
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
		wctx, stopWatch := context.WithCancel(ctx)
		done, err := watchFile(wctx, o.cfg.File, fileSettle, reloads, log)
		if err != nil {
			stopWatch()
			log.Warn("configuration file not watched: reload with SIGHUP", zap.Error(err))
		} else {
			defer func() { stopWatch(); <-done }()
		}
	}
	sc, err := sidecar.New(o.cfg, log, o.level)
	if err != nil {
		return err
	}
	// sidecar.New returns once every listener and the admin listener are
	// bound and serving.
	tell(o, "READY=1\nSTATUS=serving")

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
	tell(o, "STOPPING=1\nSTATUS=draining")
	log.Info("shutting down", zap.Duration("timeout", timeout))
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := sc.Shutdown(sctx); err != nil {
		log.Warn("shutdown", zap.Error(err))
	}
	return failure
}

// tell sends state to the service manager, if there is one; a failure is
// only logged.
func tell(o serveOptions, state string) {
	if err := o.notifier.notify(state); err != nil && !errors.Is(err, errNoManager) {
		o.log.Warn("sd_notify failed", zap.String("state", state), zap.Error(err))
	}
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

// fileSettle is how long the configuration file must stay unchanged
// before a reload reads it: an editor, a script or a bind mount that
// writes it in several steps has finished by then.
const fileSettle = time.Second

// watchFile asks for a reload on reloads once the configuration file has
// changed and then stayed unchanged for settle, so that a file written in
// several steps is applied once, complete, never half. It watches the
// file's directory, which also sees the symlink swaps of a Kubernetes
// ConfigMap and the renames of an atomic save. "Unchanged" is the content
// (size and SHA-256): the same bytes written again, a touch or a rename of
// an identical file are no change, and change nothing. The watch runs until
// ctx is done; done is closed once it has stopped.
func watchFile(ctx context.Context, path string, settle time.Duration, reloads chan<- string, log *zap.Logger) (done <-chan struct{}, err error) {
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", path, err)
	}
	if err := fsw.Add(filepath.Dir(path)); err != nil {
		fsw.Close()
		return nil, fmt.Errorf("watch %s: %w", path, err)
	}
	w := &fileWatch{path: path, settle: settle, reloads: reloads, log: log, fsw: fsw, done: make(chan struct{})}
	// Sampled after the watch is in place: a change from now on is seen.
	go w.run(ctx, readFileState(path))
	return w.done, nil
}

// fileWatch is one watchFile; its run goroutine owns every field.
type fileWatch struct {
	path    string
	settle  time.Duration
	reloads chan<- string
	log     *zap.Logger
	fsw     *fsnotify.Watcher
	done    chan struct{}
}

// fileState is what the file held when sampled.
type fileState struct {
	size    int
	sum     [sha256.Size]byte
	missing bool   // not there (between a remove and a create)
	err     string // unreadable, and why
}

func readFileState(path string) fileState {
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fileState{missing: true}
	case err != nil:
		return fileState{err: err.Error()}
	}
	return fileState{size: len(b), sum: sha256.Sum256(b)}
}

// run samples the file at every event in its directory. A sample that
// differs from the last one (re)starts the settle timer; when it fires and
// the file is still as last sampled, and differs from what was last
// asked for, it asks for a reload. A sample that differs then (a change
// whose event has not come yet) starts the timer again.
func (w *fileWatch) run(ctx context.Context, applied fileState) {
	defer close(w.done)
	defer w.fsw.Close()
	last := applied
	settled := time.NewTimer(w.settle)
	settled.Stop()
	defer settled.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-w.fsw.Events:
			if !ok {
				return
			}
			if s := readFileState(w.path); s != last {
				last = s
				settled.Reset(w.settle)
			}
		case err, ok := <-w.fsw.Errors:
			if !ok {
				return
			}
			w.log.Warn("configuration file watch", zap.String("file", w.path), zap.Error(err))
		case <-settled.C:
			s := readFileState(w.path)
			switch {
			case s != last:
				last = s
				settled.Reset(w.settle)
			case s == applied || s.missing:
				// Nothing new; a removed file waits for its replacement.
			case s.err != "":
				w.log.Warn("configuration file unreadable; the running configuration stays",
					zap.String("file", w.path), zap.String("error", s.err))
			default:
				applied = s
				select {
				case w.reloads <- "file changed":
				default: // one is already pending
				}
			}
		}
	}
}
