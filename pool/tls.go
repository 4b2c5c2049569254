package pool

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/unstuck-proxy/unstuck/sockopt"
)

// DefaultTLSHandshakeTimeout is dial.tls_handshake_timeout's default.
const DefaultTLSHandshakeTimeout = 5 * time.Second

// tlsFor returns base for the endpoint addr: its ServerName, when base
// leaves it empty, is addr's host (SNI for a name; an IP address is
// verified against the certificate's IP SANs and sent as no SNI). nil
// base: nil, plain TCP.
func tlsFor(base *tls.Config, addr string) *tls.Config {
	if base == nil {
		return nil
	}
	cfg := base.Clone()
	if cfg.ServerName == "" {
		if host, _, err := net.SplitHostPort(addr); err == nil {
			cfg.ServerName = host
		}
	}
	return cfg
}

// handshake makes c, a TCP connection just dialed and registered, a TLS
// client connection: the watcher keeps watching the TCP socket, and every
// read and write of a holder goes through TLS. It is bounded by
// TLSHandshakeTimeout and cancelled by Close.
func (p *Pool) handshake(c *Conn) error {
	timeout := p.cfg.TLSHandshakeTimeout
	if timeout <= 0 {
		timeout = DefaultTLSHandshakeTimeout
	}
	ctx, cancel := context.WithTimeout(p.dialCtx, timeout)
	defer cancel()
	start := time.Now()
	tc, err := clientHandshake(ctx, c.tcp, c.ep.tls)
	if err != nil {
		return err
	}
	p.cfg.Observer.TLSHandshake(c.ep.addr, tc.ConnectionState().DidResume, time.Since(start))
	c.nc = tc
	c.io.nc = tc
	return nil
}

// clientHandshake runs a TLS client handshake over nc within ctx. Its
// error says why where it can: TLSTimeoutError when ctx's deadline ran
// out, NoClientCertError when the server asked for a certificate cfg has
// none of.
func clientHandshake(ctx context.Context, nc net.Conn, cfg *tls.Config) (*tls.Conn, error) {
	asked := false
	if len(cfg.Certificates) == 0 && cfg.GetClientCertificate == nil {
		// No certificate to give: note whether the server asks for one,
		// so that its refusal can say why.
		cfg = cfg.Clone()
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			asked = true
			return &tls.Certificate{}, nil
		}
	}
	tc := tls.Client(nc, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		switch {
		case ctx.Err() == context.DeadlineExceeded:
			return nil, &TLSTimeoutError{Err: err}
		case asked:
			return nil, &NoClientCertError{Err: err}
		}
		return nil, err
	}
	return tc, nil
}

// NoClientCertError is a handshake that failed after the server asked
// for a client certificate and none was configured (tls.cert_file).
type NoClientCertError struct{ Err error }

func (e *NoClientCertError) Error() string {
	return "the server asked for a client certificate and none is configured: " + e.Err.Error()
}
func (e *NoClientCertError) Unwrap() error { return e.Err }

// TLSTimeoutError is a TLS handshake that did not finish within
// dial.tls_handshake_timeout.
type TLSTimeoutError struct{ Err error }

func (e *TLSTimeoutError) Error() string { return "tls handshake timeout: " + e.Err.Error() }
func (e *TLSTimeoutError) Unwrap() error { return e.Err }

// tlsSettleWait bounds the read that settles an idle TLS connection's
// records: they are in the socket already (a peek saw them), so it only
// waits out a record split across segments.
const tlsSettleWait = time.Millisecond

// settleTLS reads what a TLS server sent an idle connection. Records of
// TLS itself (TLS 1.3 session tickets, key updates) are handled by
// crypto/tls and leave nothing to read: the connection is fine, and a
// ticket is stored for resumption. close_notify reads as EOF, a close.
// Application data is unsolicited. Holder only (acquireIdleUnlock, handedOver).
func (c *Conn) settleTLS() sockopt.PeekResult {
	tc := c.nc.(*tls.Conn)
	var b [1]byte
	_ = tc.SetReadDeadline(time.Now().Add(tlsSettleWait))
	n, err := tc.Read(b[:])
	_ = tc.SetReadDeadline(time.Time{})
	var ne net.Error
	switch {
	case n > 0:
		return sockopt.Unsolicited
	case errors.Is(err, io.EOF):
		return sockopt.PeerFIN
	case errors.As(err, &ne) && ne.Timeout():
		if r := c.peek(); r != sockopt.Unsolicited {
			return r
		}
		return sockopt.Open // the rest of a record still on its way: crypto/tls holds the part it read
	}
	return sockopt.PeerRST
}

// peerGone reports a close whose peer has already ended the connection:
// nothing, close_notify included, is written to it.
func peerGone(cause Cause) bool {
	switch cause {
	case CauseFIN, CauseRST, CauseTimeout, CauseUnsolicited, CauseError:
		return true
	}
	return false
}

// DialErrorReasons is every name DialErrorReason gives.
var DialErrorReasons = []string{
	"refused", "timeout", "unreachable", "tls_unknown_authority", "tls_name_mismatch", "tls_expired",
	"tls_handshake_timeout", "tls_version", "tls_client_certificate_required", "tls_bad_certificate",
	"tls_other", "other",
}

// DialErrorReason names why a dial failed, for logs and metrics: refused,
// timeout, unreachable, tls_unknown_authority, tls_name_mismatch,
// tls_expired, tls_handshake_timeout, tls_version,
// tls_client_certificate_required (the server asked, none is configured),
// tls_bad_certificate (the server refused ours), tls_other, other.
func DialErrorReason(err error) string {
	if err == nil {
		return ""
	}
	var (
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		alert    tls.AlertError
		verify   *tls.CertificateVerificationError
		timeout  *TLSTimeoutError
		nocert   *NoClientCertError
		ne       net.Error
	)
	switch {
	case errors.As(err, &nocert):
		return "tls_client_certificate_required"
	case errors.As(err, &timeout):
		return "tls_handshake_timeout"
	case errors.As(err, &unknown):
		return "tls_unknown_authority"
	case errors.As(err, &hostname):
		return "tls_name_mismatch"
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return "tls_expired"
	case errors.As(err, &alert) && alert == 70, isTLSVersionError(err): // protocol_version
		return "tls_version"
	case errors.As(err, &alert) && (alert == 42 || alert == 43 || alert == 116): // bad/unsupported certificate, certificate_required
		return "tls_bad_certificate"
	case errors.As(err, &verify), errors.As(err, &alert), errors.As(err, &invalid):
		return "tls_other"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "unreachable"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return "other"
}

// isTLSVersionError reports crypto/tls's own refusal of the server's
// protocol version (it has no error type for it).
func isTLSVersionError(err error) bool {
	s := err.Error()
	return strings.Contains(s, "protocol version") || strings.Contains(s, "unsupported versions")
}
