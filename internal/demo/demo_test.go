package demo

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// fasthttp's process-wide clock and its worker pool's cleaner,
		// which sleeps out its period after Shutdown.
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*workerPool).Start.func2"),
	)
}

// TestRun plays both phases with small numbers: the direct phase leaves
// the app with sockets in CLOSE_WAIT, the phase through unstuck never does
// and loses no request.
func TestRun(t *testing.T) {
	const conns = 20
	var out bytes.Buffer
	res, err := Run(context.Background(), Options{
		Conns:        conns,
		Duration:     2 * time.Second,
		UpstreamIdle: 300 * time.Millisecond,
		Out:          &out,
	})
	t.Logf("output:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	if res.Interrupted {
		t.Error("Interrupted without a cancelled context")
	}

	d, u := res.Direct, res.Unstuck
	for _, ph := range []Phase{d, u} {
		// 0, 0.5s, ..., 2s
		if len(ph.Samples) != 5 {
			t.Errorf("%s: %d samples, want 5", ph.Name, len(ph.Samples))
		}
	}
	if len(d.Samples) == 0 || len(u.Samples) == 0 {
		t.FailNow()
	}
	if last := d.Samples[len(d.Samples)-1]; last.AppCloseWait == 0 {
		t.Errorf("direct: the app ended with no socket in CLOSE_WAIT; samples %+v", d.Samples)
	}
	if d.Failed == 0 || d.Reconnects == 0 {
		t.Errorf("direct: %d failed requests, %d reconnects; want some of each", d.Failed, d.Reconnects)
	}
	for _, s := range u.Samples {
		if s.AppCloseWait != 0 {
			t.Errorf("through unstuck at %v: %d app sockets in CLOSE_WAIT, want 0", s.At, s.AppCloseWait)
		}
	}
	if u.Failed != 0 || u.FirstError != "" {
		t.Errorf("through unstuck: %d failed requests (first: %s), want 0", u.Failed, u.FirstError)
	}
	if u.OK == 0 || u.Reconnects != 0 {
		t.Errorf("through unstuck: %d ok, %d reconnects; want some ok and no reconnect", u.OK, u.Reconnects)
	}
	if u.UpstreamFins == 0 || len(u.FinToClose) != u.UpstreamFins {
		t.Errorf("through unstuck: %d of %d upstream FINs answered by a close, want all (and some)",
			len(u.FinToClose), u.UpstreamFins)
	}
	if res.OpenSockets != 0 {
		t.Errorf("%d demo sockets still open after Run", res.OpenSockets)
	}

	text := out.String()
	for _, want := range []string{TableHeader + "\n", " time (s) | app", "requests failed", "because unstuck closed"} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(text, "\r") {
		t.Error("output has \\r, though Out is no terminal")
	}
}

// TestRunInterrupted: when ctx ends, Run stops at once, reports what it
// measured and closes everything.
func TestRunInterrupted(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 800*time.Millisecond)
	defer cancel()
	var out bytes.Buffer
	start := time.Now()
	res, err := Run(ctx, Options{
		Conns:        10,
		Duration:     time.Minute,
		UpstreamIdle: 200 * time.Millisecond,
		Out:          &out,
		Terminal:     true,
	})
	t.Logf("output:\n%q", out.String())
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("Run took %v after its context ended", took)
	}
	if !res.Interrupted || len(res.Direct.Samples) == 0 || len(res.Unstuck.Samples) != 0 {
		t.Errorf("Interrupted %v, %d direct and %d unstuck samples; want true, some, none",
			res.Interrupted, len(res.Direct.Samples), len(res.Unstuck.Samples))
	}
	if res.OpenSockets != 0 {
		t.Errorf("%d demo sockets still open after Run", res.OpenSockets)
	}
	text := out.String()
	for _, want := range []string{"\r  ", TableHeader, "Interrupted during the direct phase"} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}
}
