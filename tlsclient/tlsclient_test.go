package tlsclient

import (
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/unstuck-proxy/unstuck/config"
	"github.com/unstuck-proxy/unstuck/internal/testpeer"
	"github.com/unstuck-proxy/unstuck/internal/testtls"
	"github.com/unstuck-proxy/unstuck/internal/wait"
	"github.com/unstuck-proxy/unstuck/pool"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestNewRefusesBadFiles(t *testing.T) {
	dir := t.TempDir()
	ca := testtls.NewCA(t, "ca")
	one := ca.Issue(t, testtls.Leaf{Names: []string{"app"}, Client: true})
	two := ca.Issue(t, testtls.Leaf{Names: []string{"app"}, Client: true})
	certFile, _ := one.WriteFiles(t, dir, "one")
	_, otherKey := two.WriteFiles(t, dir, "two")
	notPEM := filepath.Join(dir, "ca.pem")
	os.WriteFile(notPEM, []byte("not a certificate"), 0o600)
	for _, tt := range []struct {
		name string
		c    config.TLS
		want string
	}{
		{"missing ca_file", config.TLS{CAFile: filepath.Join(dir, "nope.pem")}, "no such file"},
		{"ca_file not PEM", config.TLS{CAFile: notPEM}, "no PEM certificate"},
		{"key of another certificate", config.TLS{CertFile: certFile, KeyFile: otherKey}, "private key does not match public key"},
		{"missing cert_file", config.TLS{CertFile: filepath.Join(dir, "nope.crt"), KeyFile: otherKey}, "no such file"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.c, false); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New: %v; want an error saying %q", err, tt.want)
			}
		})
	}
}

func TestNewDefaults(t *testing.T) {
	for _, tt := range []struct {
		c      config.TLS
		stream bool
		alpn   []string
		min    uint16
	}{
		{config.TLS{MinVersion: "1.2"}, false, []string{"http/1.1"}, tls.VersionTLS12},
		{config.TLS{MinVersion: "1.3"}, true, nil, tls.VersionTLS13},
		{config.TLS{ALPN: []string{"postgresql"}}, true, []string{"postgresql"}, tls.VersionTLS12},
	} {
		cfg, err := New(tt.c, tt.stream)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(cfg.NextProtos, ",") != strings.Join(tt.alpn, ",") || cfg.MinVersion != tt.min || cfg.ClientSessionCache == nil {
			t.Errorf("%+v stream %v: ALPN %q, min %x, cache %v; want %q, %x, a cache", tt.c, tt.stream, cfg.NextProtos, cfg.MinVersion, cfg.ClientSessionCache != nil, tt.alpn, tt.min)
		}
	}
}

// TestClientCertificateRotation: a server that requires a client
// certificate sees the new one on the next connection after the files are
// replaced, with no restart; a half-written rotation keeps the old one.
func TestClientCertificateRotation(t *testing.T) {
	dir := t.TempDir()
	ca := testtls.NewCA(t, "ca")
	server := ca.Issue(t, testtls.Leaf{Names: []string{"127.0.0.1"}})
	first := ca.Issue(t, testtls.Leaf{Names: []string{"app"}, Client: true, Serial: 100})
	second := ca.Issue(t, testtls.Leaf{Names: []string{"app"}, Client: true, Serial: 200})
	certFile, keyFile := first.WriteFiles(t, dir, "client")
	caFile := filepath.Join(dir, "ca.pem")
	os.WriteFile(caFile, ca.PEM, 0o600)

	var mu sync.Mutex
	var serials []int64
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{server.TLS}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool(),
		SessionTicketsDisabled: true, // every connection a full handshake, so each shows its certificate
		VerifyConnection: func(cs tls.ConnectionState) error {
			mu.Lock()
			serials = append(serials, cs.PeerCertificates[0].SerialNumber.Int64())
			mu.Unlock()
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	testpeer.AcceptLoop(t, ln, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.(*tls.Conn).Handshake()
		c.Close()
	})

	cfg, err := New(config.TLS{CAFile: caFile, CertFile: certFile, KeyFile: keyFile}, true)
	if err != nil {
		t.Fatal(err)
	}
	p, err := pool.New(pool.Config{Endpoints: []string{ln.Addr().String()}, TLS: cfg, Stream: true})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	dial := func() {
		t.Helper()
		c, err := p.AcquireNew()
		if err != nil {
			t.Fatal(err)
		}
		p.Discard(c, pool.CauseError)
	}
	dial()
	// Half-written: the new certificate with the old key. Kept: the old pair.
	later := time.Now().Add(time.Minute)
	os.WriteFile(certFile, second.CertPEM, 0o600)
	os.Chtimes(certFile, later, later)
	dial()
	os.WriteFile(keyFile, second.KeyPEM, 0o600)
	os.Chtimes(keyFile, later.Add(time.Second), later.Add(time.Second))
	dial()
	// A TLS 1.3 client is done before the server has verified its
	// certificate: wait for the server's third look.
	wait.Until(t, 5*time.Second, "the server's third handshake", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(serials) == 3
	})
	mu.Lock()
	defer mu.Unlock()
	if want := []int64{100, 100, 200}; len(serials) != 3 || serials[0] != want[0] || serials[1] != want[1] || serials[2] != want[2] {
		t.Errorf("server saw client certificates %v; want %v", serials, want)
	}
}
