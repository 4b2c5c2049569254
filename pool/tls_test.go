package pool

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/unstuck-proxy/unstuck/internal/sockstate"
	"github.com/unstuck-proxy/unstuck/internal/testtls"
	"github.com/unstuck-proxy/unstuck/internal/wait"
)

// tlsServer is a loopback TLS server that answers each line "ping" with
// "pong" and keeps its connections, so a test can close them its way.
type tlsServer struct {
	*finServer
	mu    sync.Mutex
	tls   []*tls.Conn
	snis  []string
	ready chan *tls.Conn // each connection, once its handshake is done
}

func startTLSServer(t *testing.T, cfg *tls.Config) *tlsServer {
	t.Helper()
	s := &tlsServer{ready: make(chan *tls.Conn, 1000)}
	cfg = cfg.Clone()
	cfg.GetConfigForClient = func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		s.mu.Lock()
		s.snis = append(s.snis, h.ServerName)
		s.mu.Unlock()
		return nil, nil
	}
	s.finServer = startTestServer(t, func(c net.Conn) {
		tc := tls.Server(c, cfg)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if err := tc.Handshake(); err != nil {
			return
		}
		s.mu.Lock()
		s.tls = append(s.tls, tc)
		s.mu.Unlock()
		s.ready <- tc
		br := bufio.NewReader(tc)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if line == "ping\n" {
				tc.Write([]byte("pong\n"))
			}
		}
	})
	return s
}

// next is the next connection whose handshake is done; the test fails
// if none is within 5 s.
func (s *tlsServer) next(t *testing.T) *tls.Conn {
	t.Helper()
	select {
	case tc := <-s.ready:
		return tc
	case <-time.After(5 * time.Second):
		t.Fatal("no TLS connection finished its handshake within 5s")
		return nil
	}
}

func (s *tlsServer) sni(i int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snis[i]
}

// tlsSetup is a CA, a server certificate for localhost and 127.0.0.1,
// and a client TLS config trusting the CA.
func tlsSetup(t *testing.T) (*testtls.CA, *tls.Config, *tls.Config) {
	ca := testtls.NewCA(t, "test CA")
	srv := ca.Issue(t, testtls.Leaf{Names: []string{"localhost", "127.0.0.1", "api.test"}})
	server := &tls.Config{Certificates: []tls.Certificate{srv.TLS}}
	client := &tls.Config{RootCAs: ca.Pool(), ClientSessionCache: tls.NewLRUClientSessionCache(8)}
	return ca, server, client
}

// pingPong makes one exchange on c, as a request would.
func pingPong(t *testing.T, c *Conn) {
	t.Helper()
	c.NetConn().SetDeadline(time.Now().Add(5 * time.Second))
	c.Writer().WriteString("ping\n")
	c.Writer().Flush()
	if line, err := c.Reader().ReadString('\n'); line != "pong\n" {
		t.Fatalf("read %q, %v; want pong", line, err)
	}
	c.NetConn().SetDeadline(time.Time{})
}

type tlsObserver struct {
	*recObserver
	mu      sync.Mutex
	resumed []bool
	dialErr []error
}

func (o *tlsObserver) TLSHandshake(_ string, resumed bool, _ time.Duration) {
	o.mu.Lock()
	o.resumed = append(o.resumed, resumed)
	o.mu.Unlock()
}

func (o *tlsObserver) Dialed(_ string, err error) {
	o.mu.Lock()
	o.dialErr = append(o.dialErr, err)
	o.mu.Unlock()
}

func (o *tlsObserver) handshakes() []bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]bool(nil), o.resumed...)
}

// TestTLSVersionsAndSNI: TLS 1.2 and 1.3 to the server the test made; the
// server name sent is the configured one, else the endpoint's host.
func TestTLSVersionsAndSNI(t *testing.T) {
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(v), func(t *testing.T) {
			_, server, client := tlsSetup(t)
			server.MinVersion, server.MaxVersion = v, v
			srv := startTLSServer(t, server)
			_, port, _ := net.SplitHostPort(srv.addr())
			for i, tt := range []struct{ endpoint, serverName, wantSNI string }{
				{"localhost:" + port, "", "localhost"},
				{srv.addr(), "api.test", "api.test"},
				{srv.addr(), "", ""}, // an IP address: verified against the IP SAN, no SNI sent
			} {
				cfg := client.Clone()
				cfg.ServerName = tt.serverName
				p := newTestPool(t, Config{Endpoints: []string{tt.endpoint}, TLS: cfg})
				c, err := p.Acquire(false)
				if err != nil {
					t.Fatalf("%s: %v", tt.endpoint, err)
				}
				pingPong(t, c)
				if got := c.NetConn().(*tls.Conn).ConnectionState().Version; got != v {
					t.Errorf("version %s; want %s", tls.VersionName(got), tls.VersionName(v))
				}
				if got := srv.sni(i); got != tt.wantSNI {
					t.Errorf("%s with server_name %q: server saw SNI %q; want %q", tt.endpoint, tt.serverName, got, tt.wantSNI)
				}
				p.Release(c)
			}
		})
	}
}

// TestTLSClientCertificate: a server that requires a client certificate
// gets one when it is configured, and refuses the connection when not.
func TestTLSClientCertificate(t *testing.T) {
	ca, server, client := tlsSetup(t)
	server.ClientAuth, server.ClientCAs = tls.RequireAndVerifyClientCert, ca.Pool()
	server.MaxVersion = tls.VersionTLS12 // a refused certificate fails the handshake itself (TLS 1.3 tells only at the first read)
	srv := startTLSServer(t, server)

	withCert := client.Clone()
	withCert.Certificates = []tls.Certificate{ca.Issue(t, testtls.Leaf{Names: []string{"app"}, Client: true}).TLS}
	p := newTestPool(t, Config{Endpoints: []string{srv.addr()}, TLS: withCert})
	c, err := p.Acquire(false)
	if err != nil {
		t.Fatalf("with a client certificate: %v", err)
	}
	pingPong(t, c)
	p.Release(c)

	without := client.Clone()
	without.ClientSessionCache = nil // the session above would resume, and resumption skips client authentication
	p = newTestPool(t, Config{Endpoints: []string{srv.addr()}, TLS: without})
	_, err = p.Acquire(false)
	if got := DialErrorReason(err); got != "tls_client_certificate_required" {
		t.Errorf("without one: %v, reason %q; want tls_client_certificate_required", err, got)
	}
}

// TestTLSVerificationFailures: each way a server's certificate can be
// wrong fails the dial with its own reason.
func TestTLSVerificationFailures(t *testing.T) {
	ca, _, client := tlsSetup(t)
	other := testtls.NewCA(t, "another CA")
	for _, tt := range []struct {
		name   string
		cert   testtls.Issued
		reason string
	}{
		{"unknown authority", other.Issue(t, testtls.Leaf{Names: []string{"127.0.0.1"}}), "tls_unknown_authority"},
		{"name mismatch", ca.Issue(t, testtls.Leaf{Names: []string{"elsewhere.test"}}), "tls_name_mismatch"},
		{"expired", ca.Issue(t, testtls.Leaf{Names: []string{"127.0.0.1"}, NotAfter: time.Now().Add(-time.Minute)}), "tls_expired"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := startTLSServer(t, &tls.Config{Certificates: []tls.Certificate{tt.cert.TLS}})
			p := newTestPool(t, Config{Endpoints: []string{srv.addr()}, TLS: client})
			_, err := p.Acquire(false)
			var de *DialError
			if !errors.As(err, &de) {
				t.Fatalf("Acquire: %v; want a DialError", err)
			}
			if got := DialErrorReason(err); got != tt.reason {
				t.Errorf("reason %q (%v); want %q", got, err, tt.reason)
			}
			if open, _ := p.counts(); open != 0 {
				t.Errorf("%d connections open after a failed handshake", open)
			}
		})
	}
	t.Run("version", func(t *testing.T) {
		srv := startTLSServer(t, &tls.Config{Certificates: []tls.Certificate{ca.Issue(t, testtls.Leaf{Names: []string{"127.0.0.1"}}).TLS},
			MaxVersion: tls.VersionTLS12})
		cfg := client.Clone()
		cfg.MinVersion = tls.VersionTLS13
		p := newTestPool(t, Config{Endpoints: []string{srv.addr()}, TLS: cfg})
		_, err := p.Acquire(false)
		if got := DialErrorReason(err); got != "tls_version" {
			t.Errorf("reason %q (%v); want tls_version", got, err)
		}
	})
	t.Run("counts toward ejection", func(t *testing.T) {
		// A failed handshake is the endpoint's failure, as a failed
		// connect is: two in a row eject it, and the next Acquire finds
		// no endpoint instead of dialing it again.
		srv := startTLSServer(t, &tls.Config{Certificates: []tls.Certificate{other.Issue(t, testtls.Leaf{Names: []string{"127.0.0.1"}}).TLS}})
		p := newTestPool(t, Config{Endpoints: []string{srv.addr()}, TLS: client,
			Outlier: OutlierConfig{ConsecutiveFailures: 2, BaseEjection: time.Minute, MaxEjectionPercent: 100}})
		for i := range 2 {
			if got := DialErrorReason(func() error { _, err := p.Acquire(false); return err }()); got != "tls_unknown_authority" {
				t.Fatalf("Acquire %d: reason %q; want tls_unknown_authority", i, got)
			}
		}
		if _, err := p.Acquire(false); !errors.Is(err, ErrNoEndpoint) {
			t.Fatalf("after two failed handshakes: %v; want ErrNoEndpoint (ejected)", err)
		}
	})
	t.Run("handshake timeout", func(t *testing.T) {
		silent := startTestServer(t, func(c net.Conn) { io.Copy(io.Discard, c) }) // accepts, never answers
		p := newTestPool(t, Config{Endpoints: []string{silent.addr()}, TLS: client, TLSHandshakeTimeout: 100 * time.Millisecond})
		_, err := p.Acquire(false)
		if got := DialErrorReason(err); got != "tls_handshake_timeout" {
			t.Errorf("reason %q (%v); want tls_handshake_timeout", got, err)
		}
	})
}

// TestTLSResumption: the second connection to an endpoint resumes the
// first one's session, for TLS 1.2 and 1.3.
func TestTLSResumption(t *testing.T) {
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(v), func(t *testing.T) {
			_, server, client := tlsSetup(t)
			server.MaxVersion = v
			srv := startTLSServer(t, server)
			obs := &tlsObserver{recObserver: newRecObserver()}
			p := newTestPool(t, Config{Endpoints: []string{srv.addr()}, TLS: client, Observer: obs})
			c, err := p.Acquire(false)
			if err != nil {
				t.Fatal(err)
			}
			pingPong(t, c) // reads the TLS 1.3 ticket that follows the handshake
			p.Discard(c, CauseError)
			c, err = p.Acquire(false)
			if err != nil {
				t.Fatal(err)
			}
			pingPong(t, c)
			p.Release(c)
			if got := obs.handshakes(); len(got) != 2 || got[0] || !got[1] {
				t.Errorf("handshakes resumed: %v; want [false true]", got)
			}
		})
	}
}

// TestTLSSessionTicketOnIdleConnection: a TLS 1.3 server's session
// tickets may arrive after the handshake, on a connection already idle
// (many servers send them once the client's Finished is in). They are TLS
// records, not unsolicited bytes: the connection is reused, and the ticket
// is kept for the next one. A relay holds the tickets back until the
// connection is idle.
func TestTLSSessionTicketOnIdleConnection(t *testing.T) {
	_, server, client := tlsSetup(t)
	server.MinVersion = tls.VersionTLS13
	srv := startTLSServer(t, server)
	relay, release := startTicketDelayRelay(t, srv.addr())
	obs := &tlsObserver{recObserver: newRecObserver()}
	p := newTestPool(t, Config{Endpoints: []string{relay}, TLS: client, Observer: obs})
	c, err := p.Acquire(false)
	if err != nil {
		t.Fatal(err)
	}
	p.Release(c) // idle, tickets not sent yet
	close(release)
	again := acquireOnceBytesWait(t, p, c, "the tickets")
	if again != c {
		t.Fatalf("the idle connection was not reused (closes: %v)", obs.closed)
	}
	pingPong(t, again)
	p.Discard(again, CauseError)
	if n, _ := obs.counts(CauseUnsolicited); n != 0 {
		t.Errorf("%d connections closed as unsolicited: a ticket was taken for data", n)
	}
	third, err := p.Acquire(false)
	if err != nil {
		t.Fatal(err)
	}
	p.Release(third)
	if got := obs.handshakes(); len(got) != 2 || !got[1] {
		t.Errorf("handshakes resumed: %v; want the second resumed with the ticket read while idle", got)
	}
}

// startTicketDelayRelay relays TCP to addr, holding back what a Go TLS
// 1.3 server sends after its first flight (ServerHello, change cipher
// spec, then four encrypted records: EncryptedExtensions, Certificate,
// CertificateVerify, Finished): the session tickets, until release is
// closed. It serves one connection at a time.
func startTicketDelayRelay(t *testing.T, addr string) (string, chan struct{}) {
	release := make(chan struct{})
	srv := startTestServer(t, func(app net.Conn) {
		up, err := net.Dial("tcp", addr)
		if err != nil {
			return
		}
		defer up.Close()
		go func() {
			io.Copy(up, app)
			up.Close() // the relay's end: the copy below ends too
		}()
		br := bufio.NewReader(up)
		encrypted := 0
		for encrypted < 4 {
			var hdr [5]byte
			if _, err := io.ReadFull(br, hdr[:]); err != nil {
				return
			}
			body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
			if _, err := io.ReadFull(br, body); err != nil {
				return
			}
			if hdr[0] == 23 { // application_data: every record after ServerHello in TLS 1.3
				encrypted++
			}
			app.Write(append(hdr[:], body...))
		}
		select {
		case <-release:
		case <-time.After(10 * time.Second):
		}
		io.Copy(app, br)
	})
	return srv.addr(), release
}

// TestTLSIdleCloseAsFastAsTCP: a server closes idle connections, with
// close_notify and FIN, or FIN alone; on TLS as on plain TCP the watcher
// closes each at once (no CLOSE_WAIT), side by side in one test. A
// close_notify without FIN is found by the peek before reuse.
func TestTLSIdleCloseAsFastAsTCP(t *testing.T) {
	_, server, client := tlsSetup(t)
	for _, tt := range []struct {
		name        string
		tls         bool
		closeNotify bool
	}{
		{"plain TCP", false, false},
		{"TLS, close_notify and FIN", true, true},
		{"TLS, FIN alone", true, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var srv *finServer
			var tlsSrv *tlsServer
			cfg := Config{Observer: newRecObserver()}
			if tt.tls {
				tlsSrv = startTLSServer(t, server)
				srv, cfg.TLS = tlsSrv.finServer, client
			} else {
				srv = startTestServer(t, func(c net.Conn) { io.Copy(io.Discard, c) })
			}
			cfg.Endpoints = []string{srv.addr()}
			p := newTestPool(t, cfg)
			conns := acquireN(t, p, srv, 8)
			for _, c := range conns {
				p.Release(c)
			}
			if tt.closeNotify {
				for range conns {
					tlsSrv.next(t).CloseWrite() // close_notify; finAll adds the FIN
				}
			}
			lat := srv.finAll(t, 5*time.Second)
			worst := time.Duration(0)
			for _, d := range lat {
				if d < 0 {
					t.Fatalf("a connection the server closed was not closed by the pool")
				}
				worst = max(worst, d)
			}
			t.Logf("server FIN to the pool's close: %v at worst over %d connections", worst, len(lat))
			counts, err := sockstate.Count(sockstate.RemotePort(uint16(srv.ln.Addr().(*net.TCPAddr).Port)))
			if err != nil {
				t.Fatal(err)
			}
			if n := counts[sockstate.CloseWait]; n != 0 {
				t.Errorf("%d of the pool's sockets in CLOSE_WAIT", n)
			}
		})
	}
	t.Run("TLS, close_notify without FIN", func(t *testing.T) {
		srv := startTLSServer(t, server)
		obs := newRecObserver()
		p := newTestPool(t, Config{Endpoints: []string{srv.addr()}, TLS: client, Observer: obs})
		c, err := p.Acquire(false)
		if err != nil {
			t.Fatal(err)
		}
		pingPong(t, c)
		p.Release(c)
		srv.next(t).CloseWrite() // close_notify; the TCP connection stays open
		again := acquireOnceBytesWait(t, p, c, "close_notify")
		if again == c {
			t.Fatal("a connection whose server sent close_notify was handed out")
		}
		pingPong(t, again)
		p.Release(again)
		if n, _ := obs.counts(CauseFIN); n != 1 {
			t.Errorf("%d closes for fin; want 1 (close_notify)", n)
		}
	})
}

// acquireOnceBytesWait waits until bytes (what) wait in idle connection c's
// socket, then acquires from p.
func acquireOnceBytesWait(t *testing.T, p *Pool, c *Conn, what string) *Conn {
	t.Helper()
	wait.Until(t, 5*time.Second, what+" in the idle socket", func() bool {
		n := 0
		c.control(func(fd int) { n, _ = sockoptPeekLen(fd) })
		return n > 0
	})
	again, err := p.Acquire(false)
	if err != nil {
		t.Fatal(err)
	}
	return again
}

// sockoptPeekLen returns the bytes waiting in fd's receive queue.
func sockoptPeekLen(fd int) (int, error) { return unix.IoctlGetInt(fd, unix.SIOCINQ) }
