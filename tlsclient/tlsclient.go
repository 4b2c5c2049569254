// Package tlsclient builds the TLS client configuration of an upstream
// from its tls keys: the roots it trusts, its client certificate (re-read
// when the files change, so a certificate rotated by cert-manager or a
// Vault agent needs no restart), the oldest version it accepts, ALPN, and
// a session cache so that a reconnect resumes instead of a full handshake.
package tlsclient

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/unstuck-proxy/unstuck/config"
)

// sessionCacheSize is how many sessions an upstream keeps for resumption:
// one per server name is what it uses; the rest is room for many names.
const sessionCacheSize = 64

// New returns the TLS configuration for an upstream whose tls keys are c.
// stream says the upstream serves tcp listeners: no ALPN unless c names
// some, where an HTTP upstream offers http/1.1. It reads the files now and
// fails if one is missing, is not PEM, or the key does not match the
// certificate.
func New(c config.TLS, stream bool) (*tls.Config, error) {
	cfg := &tls.Config{
		ServerName:         c.ServerName,
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: c.InsecureSkipVerify,
		NextProtos:         c.ALPN,
		ClientSessionCache: tls.NewLRUClientSessionCache(sessionCacheSize),
	}
	if c.MinVersion == "1.3" {
		cfg.MinVersion = tls.VersionTLS13
	}
	if len(cfg.NextProtos) == 0 && !stream {
		cfg.NextProtos = []string{"http/1.1"}
	}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("tls.ca_file: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls.ca_file %s: no PEM certificate in it", c.CAFile)
		}
	}
	if c.CertFile != "" {
		kp := &keyPair{certFile: c.CertFile, keyFile: c.KeyFile}
		if err := kp.load(); err != nil {
			return nil, err
		}
		cfg.GetClientCertificate = kp.get
	}
	return cfg, nil
}

// keyPair is a client certificate read from its files, read again when
// either file's size or modification time changes. A rotation caught
// half-written (the key no longer matches) keeps the last good pair and is
// tried again at the next handshake.
type keyPair struct {
	certFile, keyFile string

	mu    sync.Mutex
	cert  *tls.Certificate
	stamp [2]fileStamp // of certFile and keyFile when cert was read
}

type fileStamp struct {
	size int64
	mod  time.Time
}

func stampOf(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{fi.Size(), fi.ModTime()}, nil
}

// load reads the pair; on failure it keeps the pair it had.
func (kp *keyPair) load() error {
	var stamps [2]fileStamp
	for i, f := range []string{kp.certFile, kp.keyFile} {
		s, err := stampOf(f)
		if err != nil {
			return fmt.Errorf("tls: %w", err)
		}
		stamps[i] = s
	}
	cert, err := tls.LoadX509KeyPair(kp.certFile, kp.keyFile)
	if err != nil {
		return fmt.Errorf("tls.cert_file %s, tls.key_file %s: %w", kp.certFile, kp.keyFile, err)
	}
	kp.cert, kp.stamp = &cert, stamps
	return nil
}

// get is the handshake's GetClientCertificate: the pair, re-read first if
// its files changed. It stats two files per handshake, and handshakes are
// what a pool avoids.
func (kp *keyPair) get(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	kp.mu.Lock()
	defer kp.mu.Unlock()
	c, errC := stampOf(kp.certFile)
	k, errK := stampOf(kp.keyFile)
	if err := errors.Join(errC, errK); err == nil && [2]fileStamp{c, k} != kp.stamp {
		_ = kp.load() // a failure keeps the last good pair; the next handshake tries again
	}
	return kp.cert, nil
}
