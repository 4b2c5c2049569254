package proxy

import (
	"bufio"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// The Keep-Alive header is read tolerantly: any case, spacing, quotes,
// semicolons, fractions of a second; what does not parse is skipped, and
// the smaller of two values counts.
func TestKeepAliveParse(t *testing.T) {
	const none = -1
	for _, tc := range []struct {
		values  []string
		timeout time.Duration
		max     int
	}{
		{[]string{"timeout=5, max=100"}, 5 * time.Second, 100},
		{[]string{"timeout=5"}, 5 * time.Second, none},
		{[]string{"max=7"}, 0, 7},
		{[]string{"Timeout = 15 ,MAX= 3"}, 15 * time.Second, 3},
		{[]string{`timeout="2", max="9"`}, 2 * time.Second, 9},
		{[]string{"timeout=5; max=10"}, 5 * time.Second, 10},
		{[]string{"timeout=0.3"}, 300 * time.Millisecond, none},
		{[]string{"timeout=2.", "max=1"}, 2 * time.Second, 1},
		{[]string{"timeout=1.0000000009"}, time.Second, none},
		{[]string{"timeout=0"}, 0, 0}, // no idle connection kept: no request again
		{[]string{"timeout=10, timeout=4"}, 4 * time.Second, none},
		{[]string{"timeout=10, max=50", "timeout=20, max=5"}, 10 * time.Second, 5},
		{[]string{"300"}, 0, none}, // RFC 2068's bare number: no parameter
		{[]string{"timeout=-1, max=x"}, 0, none},
		{[]string{"timeout=5s, max=1e3"}, 0, none},
		{[]string{"timeout=9999999999"}, 0, none}, // too long to be meant
		{[]string{"timeout=, max=, =5, timeout"}, 0, none},
		{[]string{"foo=1, timeout=3, bar"}, 3 * time.Second, none},
		{[]string{"timeout=."}, 0, none},
		{[]string{""}, 0, none},
	} {
		var k keepAlive
		for _, v := range tc.values {
			k.parse([]byte(v))
		}
		if k.timeout != tc.timeout || k.maxOrNone() != tc.max {
			t.Errorf("%q: timeout %v, max %d; want %v, %d", tc.values, k.timeout, k.maxOrNone(), tc.timeout, tc.max)
		}
		if said := tc.timeout > 0 || tc.max != none; k.said() != said {
			t.Errorf("%q: said %v", tc.values, k.said())
		}
	}
}

// stripResponseHops reports a response's Keep-Alive, in whatever case its
// name came, and removes it, without allocating.
func TestStripResponseHopsReadsKeepAlive(t *testing.T) {
	var h fasthttp.ResponseHeader
	h.DisableNormalizing()
	raw := "HTTP/1.1 200 OK\r\nkeep-ALIVE: timeout=4, max=99\r\nContent-Length: 0\r\n\r\n"
	parse := func() {
		h.Reset()
		h.DisableNormalizing()
		if err := h.Read(bufio.NewReader(strings.NewReader(raw))); err != nil {
			t.Fatal(err)
		}
	}
	parse()
	k := stripResponseHops(&h)
	if k.timeout != 4*time.Second || k.maxOrNone() != 99 {
		t.Errorf("timeout %v, max %d; want 4s, 99", k.timeout, k.maxOrNone())
	}
	if v := h.Peek("keep-ALIVE"); v != nil {
		t.Errorf("Keep-Alive left in the response: %q", v)
	}
	if raceEnabled {
		return
	}
	parse()
	if allocs := testing.AllocsPerRun(100, func() {
		h.SetCanonical([]byte("keep-ALIVE"), []byte("timeout=4, max=99"))
		stripResponseHops(&h)
	}); allocs > 0 {
		t.Errorf("%.1f allocations per response with Keep-Alive; want 0", allocs)
	}
}
