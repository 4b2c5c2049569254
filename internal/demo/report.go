package demo

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// plainEvery is how many samples apart the progress lines are when Out is
// not a terminal.
const plainEvery = 3

// TableHeader is the first line of the table Run prints.
const TableHeader = "          |   direct   |        through unstuck"

// reporter writes Run's output. Only the goroutine running Run uses it.
type reporter struct {
	opts    Options
	w       io.Writer
	lineLen int // length of the progress line on screen (Terminal)
}

func newReporter(opts Options) *reporter { return &reporter{opts: opts, w: opts.Out} }

func (p *reporter) printf(format string, args ...any) { fmt.Fprintf(p.w, format, args...) }

func (p *reporter) intro() {
	o := p.opts
	p.printf("unstuck demo: a legacy app that never closes a socket keeps %d keep-alive\n", o.Conns)
	p.printf("connections and sends one request on each every %v. The upstream closes\n", o.WaveEvery())
	p.printf("connections idle for %v. Each phase runs %v, all on 127.0.0.1.\n", o.UpstreamIdle, o.Duration)
}

func (p *reporter) phaseStart(name, path string) {
	p.printf("\n%s: %s\n", name, path)
}

// progress reports sample s, the i-th of phase name.
func (p *reporter) progress(name string, s Sample, i int, last bool) {
	line := fmt.Sprintf("  %4.1fs  requests ok %d, failed %d  reconnects %d  app CLOSE_WAIT %d",
		s.At.Seconds(), s.OK, s.Failed, s.Dials-p.opts.Conns, s.AppCloseWait)
	if name == PhaseUnstuck {
		line += fmt.Sprintf("  unstuck upstream-side CLOSE_WAIT %d", s.UpstreamCloseWait)
	}
	if !p.opts.Terminal {
		if last || (i > 0 && i%plainEvery == 0) {
			p.printf("%s\n", line)
		}
		return
	}
	pad := max(p.lineLen-len(line), 0)
	p.printf("\r%s%s", line, strings.Repeat(" ", pad))
	p.lineLen = len(line)
}

// phaseEnd ends the progress line of a terminal.
func (p *reporter) phaseEnd() {
	if p.opts.Terminal && p.lineLen > 0 {
		p.printf("\n")
	}
	p.lineLen = 0
}

// report writes the table, the summary and the conclusion.
func (p *reporter) report(res Result) {
	d, u := res.Direct, res.Unstuck
	p.printf("\nSockets in CLOSE_WAIT, every %v:\n\n", SampleEvery)
	p.printf("%s\n", TableHeader)
	p.printf(" time (s) | app        | app        | unstuck, upstream side\n")
	p.printf("          | CLOSE_WAIT | CLOSE_WAIT | CLOSE_WAIT\n")
	p.printf("----------+------------+------------+-----------------------\n")
	for i := range max(len(d.Samples), len(u.Samples)) {
		at, dcw, ucw, uup := "", "-", "-", "-"
		if i < len(d.Samples) {
			at = fmt.Sprintf("%.1f", d.Samples[i].At.Seconds())
			dcw = fmt.Sprint(d.Samples[i].AppCloseWait)
		}
		if i < len(u.Samples) {
			at = fmt.Sprintf("%.1f", u.Samples[i].At.Seconds())
			ucw = fmt.Sprint(u.Samples[i].AppCloseWait)
			uup = fmt.Sprint(u.Samples[i].UpstreamCloseWait)
		}
		p.printf(" %8s | %10s | %10s | %22s\n", at, dcw, ucw, uup)
	}

	ran := func(ph Phase) bool { return len(ph.Samples) > 0 }
	row := func(label string, dv, uv any) {
		ds, us := fmt.Sprint(dv), fmt.Sprint(uv)
		if !ran(d) {
			ds = "-"
		}
		if !ran(u) {
			us = "-"
		}
		p.printf("%-38s %10s %16s\n", label, ds, us)
	}
	p.printf("\n%-38s %10s %16s\n", "", "direct", "through unstuck")
	row("requests ok", d.OK, u.OK)
	row("requests failed", d.Failed, u.Failed)
	row("reconnects by the app", d.Reconnects, u.Reconnects)
	row("max app CLOSE_WAIT", d.MaxAppCloseWait, u.MaxAppCloseWait)
	row("max unstuck upstream-side CLOSE_WAIT", "-", u.MaxUpstreamCloseWait)
	row("upstream connections opened", d.UpstreamConns, u.UpstreamConns)
	row("upstream idle FINs answered by a close",
		fmt.Sprintf("%d of %d", len(d.FinToClose), d.UpstreamFins),
		fmt.Sprintf("%d of %d", len(u.FinToClose), u.UpstreamFins))

	p.printf("\n")
	if ran(u) && len(u.FinToClose) > 0 {
		lat := slices.Clone(u.FinToClose)
		slices.Sort(lat)
		p.printf("Through unstuck, the upstream saw its FIN answered by a close after %v\n(median; max %v).\n",
			roundLatency(lat[len(lat)/2]), roundLatency(lat[len(lat)-1]))
	}
	if d.FirstError != "" {
		p.printf("A failed request, direct: %s\n", d.FirstError)
	}
	if u.FirstError != "" {
		p.printf("A failed request, through unstuck: %s\n", u.FirstError)
	}
	if res.OpenSockets > 0 {
		p.printf("Warning: %d of the demo's sockets are still open after cleanup.\n", res.OpenSockets)
	}
	p.printf("\n%s\n", wrap(conclusion(res), 78))
}

// conclusion is the one sentence the demo ends with.
func conclusion(res Result) string {
	d, u := res.Direct, res.Unstuck
	switch {
	case res.Interrupted && len(u.Samples) == 0:
		return fmt.Sprintf("Interrupted during the direct phase: so far the app had %d sockets in CLOSE_WAIT and %d failed requests.",
			d.MaxAppCloseWait, d.Failed)
	case u.MaxAppCloseWait == 0 && u.Failed == 0:
		s := fmt.Sprintf("Directly, the app was left with %d sockets in CLOSE_WAIT and %d failed requests; "+
			"through unstuck it had none of either, because unstuck closed each upstream connection "+
			"the moment the upstream's FIN arrived and kept the app's own connections open.",
			d.MaxAppCloseWait, d.Failed)
		if res.Interrupted {
			s = "Interrupted, but so far: " + s
		}
		return s
	default:
		return fmt.Sprintf("Unexpected: through unstuck the app still saw %d failed requests and up to %d sockets in CLOSE_WAIT "+
			"(unstuck's upstream side: up to %d); directly it had %d failed requests and up to %d sockets in CLOSE_WAIT.",
			u.Failed, u.MaxAppCloseWait, u.MaxUpstreamCloseWait, d.Failed, d.MaxAppCloseWait)
	}
}

func roundLatency(d time.Duration) time.Duration {
	if d >= time.Millisecond {
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}

// wrap breaks s into lines of at most width bytes, between words.
func wrap(s string, width int) string {
	var b strings.Builder
	n := 0
	for i, w := range strings.Fields(s) {
		switch {
		case i == 0:
		case n+1+len(w) > width:
			b.WriteByte('\n')
			n = 0
		default:
			b.WriteByte(' ')
			n++
		}
		b.WriteString(w)
		n += len(w)
	}
	return b.String()
}
