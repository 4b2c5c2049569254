package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"
)

// startWatch runs watchFile on path until the test ends and returns its
// reload requests.
func startWatch(t *testing.T, path string, settle time.Duration) <-chan string {
	t.Helper()
	reloads := make(chan string, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done, err := watchFile(ctx, path, settle, reloads, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); <-done })
	return reloads
}

// noReload fails the test if a reload is requested within d.
func noReload(t *testing.T, reloads <-chan string, d time.Duration, when string) {
	t.Helper()
	select {
	case why := <-reloads:
		t.Fatalf("reload requested (%s) %s", why, when)
	case <-time.After(d):
	}
}

// expectReload waits for a reload request, within d.
func expectReload(t *testing.T, reloads <-chan string, d time.Duration) {
	t.Helper()
	select {
	case <-reloads:
	case <-time.After(d):
		t.Fatalf("no reload requested within %v", d)
	}
}

const (
	fullConfig   = "listeners:\n  - listen: 127.0.0.1:8080\n    upstream: app\nupstreams:\n  app:\n    endpoints: [127.0.0.1:9090]\n"
	watchSettle  = 500 * time.Millisecond
	writeGap     = 300 * time.Millisecond
	reloadWithin = 5 * time.Second
)

// A file rewritten in place in two writes 300 ms apart is reloaded once,
// after the second write and a settle window, never from its first half.
func TestWatchFileWaitsForStableFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "unstuck.yaml")
	if err := os.WriteFile(path, []byte("listeners: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	reloads := startWatch(t, path, watchSettle)

	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	half := len(fullConfig) / 2
	if _, err := f.WriteString(fullConfig[:half]); err != nil {
		t.Fatal(err)
	}
	noReload(t, reloads, writeGap, "after the first half") // the gap between the writes
	second := time.Now()
	if _, err := f.WriteString(fullConfig[half:]); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	expectReload(t, reloads, reloadWithin)
	if took := time.Since(second); took < watchSettle {
		t.Fatalf("reload %v after the second write; want at least the settle window, %v", took, watchSettle)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != fullConfig {
		t.Fatalf("file at reload: %q, %v", b, err)
	}
	noReload(t, reloads, 2*watchSettle, "a second time")
}

// A Kubernetes ConfigMap update swaps the ..data symlink to a new
// directory: one reload. Events that leave the file's content as it was
// (a file beside it, the same bytes renamed over it) reload nothing.
func TestWatchFileFollowsConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	writeVersion := func(version, content string) {
		t.Helper()
		if err := os.Mkdir(filepath.Join(dir, version), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, version, "unstuck.yaml"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	swapData := func(version string) {
		t.Helper()
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(version, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	writeVersion("..v1", "listeners: []\n")
	swapData("..v1")
	path := filepath.Join(dir, "unstuck.yaml")
	if err := os.Symlink(filepath.Join("..data", "unstuck.yaml"), path); err != nil {
		t.Fatal(err)
	}
	const settle = 100 * time.Millisecond
	reloads := startWatch(t, path, settle)

	if err := os.WriteFile(filepath.Join(dir, "unrelated"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	writeVersion("..v2", "listeners: []\n") // same content, new directory
	swapData("..v2")
	noReload(t, reloads, 4*settle, "for events that left the content as it was")

	writeVersion("..v3", fullConfig)
	swapData("..v3")
	if err := os.RemoveAll(filepath.Join(dir, "..v1")); err != nil {
		t.Fatal(err)
	}
	expectReload(t, reloads, reloadWithin)
	noReload(t, reloads, 4*settle, "a second time")
}
