package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/unstuck-proxy/unstuck/internal/testpeer"
	"github.com/unstuck-proxy/unstuck/pool"
)

// TestFailure: every upstream failure maps to one status and one reason
// (errors.go's failure, the one place that does).
func TestFailure(t *testing.T) {
	timeout := &net.OpError{Op: "read", Err: os.ErrDeadlineExceeded}
	for _, tc := range []struct {
		name   string
		err    error
		status int
		reason string
	}{
		{"exhausted", fmt.Errorf("acquire: %w", pool.ErrExhausted), 503, ReasonPoolExhausted},
		{"no endpoint", pool.ErrNoEndpoint, 503, ReasonNoEndpoint},
		{"pool closed", pool.ErrClosed, 503, ReasonShutdown},
		{"upgrade at shutdown", errShuttingDown, 503, ReasonShutdown},
		{"dial refused", &pool.DialError{Addr: "10.0.0.1:80", Err: syscall.ECONNREFUSED}, 502, ReasonDialError},
		{"dial timeout", &pool.DialError{Addr: "10.0.0.1:80", Err: timeout}, 504, ReasonDialError},
		{"response header timeout", &upstreamError{op: "read", err: timeout, timeout: true}, 504, ReasonTimeout},
		{"user timeout", &upstreamError{op: "read", err: syscall.ETIMEDOUT}, 504, ReasonTimeout},
		{"closed before the head", &upstreamError{op: "read", err: io.EOF}, 502, ReasonUpstreamReset},
		{"reset", &upstreamError{op: "write", err: syscall.ECONNRESET}, 502, ReasonUpstreamReset},
		{"broken pipe", &upstreamError{op: "write", err: syscall.EPIPE}, 502, ReasonUpstreamReset},
		{"malformed head", &upstreamError{op: "read", err: errRespBareLF}, 502, ReasonBadResponse},
		{"too many 1xx", &upstreamError{op: "read", err: errTooManyInterim}, 502, ReasonBadResponse},
	} {
		status, reason := failure(tc.err)
		if status != tc.status || reason != tc.reason {
			t.Errorf("%s: failure(%v) = %d %s; want %d %s", tc.name, tc.err, status, reason, tc.status, tc.reason)
		}
		if class, ok := Reasons[reason]; !ok || class != status/100 {
			t.Errorf("%s: Reasons[%q] = %d, %v; want class %d", tc.name, reason, class, ok, status/100)
		}
	}
}

// TestOwnAnswersCarryReason: the observer and the access log tell
// unstuck's own 502/504 from the upstream's, by reason; the upstream's
// answers have none. The access log line has the Envoy- and nginx-like
// fields.
func TestOwnAnswersCarryReason(t *testing.T) {
	// Encoded as each line is written, as a real logger's are: the access
	// line's byte fields are views of fasthttp's buffers.
	var logBuf testpeer.SyncBuffer
	core := zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(&logBuf), zap.InfoLevel)
	obs := newCountingObserver()
	slow := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
			return
		}
		w.WriteHeader(http.StatusBadGateway) // the upstream's own 502
		io.WriteString(w, "from upstream")
	})
	addr := startProxy(t, proxyOpts{
		listener: Config{Logger: zap.New(core), Observer: obs, AccessLog: true},
		upstream: Upstream{ResponseHeaderTimeout: 100 * time.Millisecond},
	}, addrOf(slow))
	dead := startProxy(t, proxyOpts{listener: Config{Logger: nopLogger, Observer: obs}}, testpeer.FreeAddr(t))

	client := &http.Client{Timeout: 10 * time.Second}
	get := func(url string, hdr map[string]string, body string) int {
		t.Helper()
		method := http.MethodGet
		var rd io.Reader
		if body != "" {
			method, rd = http.MethodPost, strings.NewReader(body)
		}
		req, _ := http.NewRequestWithContext(context.Background(), method, url, rd)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", url, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get("http://"+addr+"/upstream", map[string]string{"User-Agent": "reason-test/1", "X-Request-Id": "req-42"}, "hello"); code != 502 {
		t.Errorf("upstream's 502: got %d", code)
	}
	if code := get("http://"+addr+"/slow", nil, ""); code != 504 {
		t.Errorf("response_header timeout: got %d; want 504", code)
	}
	if code := get("http://"+dead+"/", nil, ""); code != 502 {
		t.Errorf("dead endpoint: got %d; want 502", code)
	}
	obs.mu.Lock()
	reasons := obs.reasons
	obs.mu.Unlock()
	if reasons[""] != 1 || reasons[ReasonTimeout] != 1 || reasons[ReasonDialError] != 1 {
		t.Errorf("reasons %v; want one each of \"\" (the upstream's 502), timeout and dial_error", reasons)
	}

	var lines []map[string]any
	for line := range strings.Lines(logBuf.String()) {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if m["msg"] == "access" {
			lines = append(lines, m)
		}
	}
	if len(lines) != 2 {
		t.Fatalf("%d access lines; want 2:\n%s", len(lines), logBuf.String())
	}
	first, second := lines[0], lines[1]
	for k, want := range map[string]any{
		"method": "POST", "uri": "/upstream", "protocol": "HTTP/1.1", "status": 502.0,
		"request_bytes": 5.0, "bytes": float64(len("from upstream")),
		"user_agent": "reason-test/1", "x_request_id": "req-42", "endpoint": addrOf(slow),
	} {
		if first[k] != want {
			t.Errorf("access line 1: %s = %#v; want %#v", k, first[k], want)
		}
	}
	if _, ok := first["response_flag"]; ok {
		t.Errorf("access line 1: response_flag %v on the upstream's own answer", first["response_flag"])
	}
	if d, ok := first["upstream_time"].(float64); !ok || d <= 0 {
		t.Errorf("access line 1: upstream_time %#v", first["upstream_time"])
	}
	if second["response_flag"] != ReasonTimeout || second["status"] != 504.0 {
		t.Errorf("access line 2: status %v response_flag %v; want 504 timeout", second["status"], second["response_flag"])
	}
	if _, ok := second["x_request_id"]; ok {
		t.Error("access line 2: x_request_id without the header")
	}
}
