package sidecar

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/unstuck-proxy/unstuck/internal/testtls"
)

// TestHTTPSUpstream: a plain-HTTP app through unstuck to an HTTPS server
// that the test's CA signed; with another CA, the app gets 502 and the
// dial error is counted with its reason.
func TestHTTPSUpstream(t *testing.T) {
	ca := testtls.NewCA(t, "test CA")
	cert := ca.Issue(t, testtls.Leaf{Names: []string{"api.test"}})
	var sni, alpn string
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sni, alpn = r.TLS.ServerName, r.TLS.NegotiatedProtocol
		fmt.Fprintf(w, "hello over %s", tls.VersionName(r.TLS.Version))
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert.TLS}, NextProtos: []string{"http/1.1"}}
	srv.StartTLS()
	defer srv.Close()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(caFile, ca.PEM, 0o600)

	cfg := testConfig(srv.Listener.Addr().String())
	u := cfg.Upstreams["backend"]
	u.TLS.Enabled, u.TLS.CAFile, u.TLS.ServerName = true, caFile, "api.test"
	cfg.Upstreams["backend"] = u
	sc := start(t, cfg)
	code, body := get(t, sc.ListenerAddr("app").String(), "/")
	if code != 200 || !strings.HasPrefix(body, "hello over TLS 1.3") || sni != "api.test" || alpn != "http/1.1" {
		t.Errorf("through unstuck: %d %q, SNI %q, ALPN %q; want 200 over TLS 1.3, SNI api.test, ALPN http/1.1", code, body, sni, alpn)
	}

	other := testtls.NewCA(t, "another CA")
	os.WriteFile(caFile, other.PEM, 0o600)
	cfg = clone(cfg)
	pinned(t, cfg, sc)
	u = cfg.Upstreams["backend"]
	u.Retries = 0
	cfg.Upstreams["backend"] = u
	if err := sc.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if code, body := get(t, sc.ListenerAddr("app").String(), "/"); code != http.StatusBadGateway {
		t.Errorf("with another CA: %d %q; want 502", code, body)
	}
	series := fmt.Sprintf(`unstuck_upstream_dial_errors_total{endpoint=%q,reason="tls_unknown_authority",upstream="backend"}`, srv.Listener.Addr().String())
	if n := scrape(t, sc, series); n != 1 {
		t.Errorf("%s = %v; want 1", series, n)
	}
}

// TestTCPListenerToTLSUpstream: a tcp listener whose upstream speaks TLS:
// the app's plain bytes reach the TLS server, and its answer the app.
func TestTCPListenerToTLSUpstream(t *testing.T) {
	ca := testtls.NewCA(t, "test CA")
	cert := ca.Issue(t, testtls.Leaf{Names: []string{"127.0.0.1"}})
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert.TLS}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		c.Write([]byte("tls says " + line))
	}()
	defer func() { ln.Close(); <-done }()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(caFile, ca.PEM, 0o600)

	cfg := testConfig(ln.Addr().String())
	l := cfg.Listeners["app"]
	l.Protocol = "tcp"
	cfg.Listeners["app"] = l
	u := cfg.Upstreams["backend"]
	u.TLS.Enabled, u.TLS.CAFile = true, caFile
	cfg.Upstreams["backend"] = u
	sc := start(t, cfg)
	app, err := net.Dial("tcp", sc.ListenerAddr("app").String())
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	app.SetDeadline(time.Now().Add(5 * time.Second))
	app.Write([]byte("hello\n"))
	got, err := io.ReadAll(app)
	if string(got) != "tls says hello\n" {
		t.Errorf("app read %q, %v; want the TLS server's answer", got, err)
	}
}
