package proxy

import (
	"bytes"
	"net"
	"net/netip"

	"github.com/valyala/fasthttp"
)

// hopHeaders are the hop-by-hop headers of RFC 9110 §7.6.1 plus the
// pre-standard ones proxies have always dropped. They describe one
// connection, so they never cross the proxy in either direction.
// Transfer-Encoding is framing: fasthttp parses it away on read and writes
// its own on the other side.
var hopHeaders = [...]string{
	fasthttp.HeaderConnection,
	fasthttp.HeaderKeepAlive,
	fasthttp.HeaderProxyConnection,
	fasthttp.HeaderTE,
	fasthttp.HeaderTrailer,
	fasthttp.HeaderTransferEncoding,
	fasthttp.HeaderUpgrade,
	// Not hop-by-hop, but never forwarded either: unstuck answers an
	// Expect: 100-continue itself before it reads the body.
	fasthttp.HeaderExpect,
}

// hopSet records which of hopHeaders a message carries: bit i for
// hopHeaders[i].
type hopSet uint16

// A hop-by-hop header past the sixteenth would not fit in a hopSet: this
// constant then overflows and the build fails.
const _ = hopSet(1 << (len(hopHeaders) - 1))

// hopBit is k's bit if k names a hop-by-hop header, else 0.
func hopBit(k []byte) hopSet {
	for i, hop := range hopHeaders {
		if len(k) == len(hop) && bytes.EqualFold(k, []byte(hop)) {
			return 1 << i
		}
	}
	return 0
}

// hopDropper finds, in one look over a message's headers, the hop-by-hop
// ones and those the Connection header names, whatever their case: names
// keep the case the peer sent (DisableNormalizing), while fasthttp's Peek
// and Del match names exactly. It keeps slices of the header's own memory,
// which stay valid while headers are only deleted, so it allocates
// nothing. The loops over each header type are in seeRequest and
// stripResponseHops (a generic one would allocate its iterator). It also
// notes what an upgrade needs: whether Connection lists "upgrade", and
// whether Upgrade names h2c.
type hopDropper struct {
	set   hopSet
	n     int
	keys  [32][]byte // the first names seen, as spelled
	named [8][]byte  // what Connection names besides close and keep-alive
	nn    int

	connUpgrade bool // Connection lists "upgrade"
	h2c         bool // Upgrade lists h2c

	keepAlive keepAlive // what Keep-Alive says (a response's concern)
}

// The bits of the two headers an upgrade is made of, and of Keep-Alive.
const (
	hopConnection hopSet = 1 << 0 // hopHeaders[0]
	hopKeepAlive  hopSet = 1 << 1 // hopHeaders[1]
	hopUpgrade    hopSet = 1 << 6 // hopHeaders[6]
)

func (d *hopDropper) see(k, v []byte) {
	bit := hopBit(k)
	d.set |= bit
	switch {
	case bit == hopConnection && !onlyCloseOrKeepAlive(v):
		for len(v) > 0 {
			var tok []byte
			tok, v, _ = bytes.Cut(v, []byte(","))
			tok = bytes.TrimSpace(tok)
			if equalFold(tok, "upgrade") {
				d.connUpgrade = true
			}
			if len(tok) > 0 && !onlyCloseOrKeepAlive(tok) && d.nn < len(d.named) {
				d.named[d.nn] = tok
				d.nn++
			}
		}
	case bit == hopUpgrade:
		d.h2c = d.h2c || namesH2C(v)
	case bit == hopKeepAlive:
		d.keepAlive.parse(v)
	}
	if d.n < len(d.keys) {
		d.keys[d.n] = k
		d.n++
	}
}

// strip deletes what see found, but for the hop-by-hop headers in keep.
// DelBytes copies the name before it deletes, so a name may point into the
// header itself.
func (d *hopDropper) strip(h interface{ DelBytes(key []byte) }, keep hopSet) {
	if d.set&^keep == 0 && d.nn == 0 {
		return
	}
	for _, k := range d.keys[:d.n] {
		if b := hopBit(k); b&^keep != 0 || b == 0 && d.isNamed(k) {
			h.DelBytes(k)
		}
	}
}

// How a request's Upgrade header is treated (upgradeOf).
type upgradeKind uint8

const (
	noUpgrade      upgradeKind = iota // no Upgrade header
	upgradeIgnored                    // stripped; the request is forwarded as any other
	upgradeForward                    // forwarded as an upgrade, on a connection of its own
)

// upgradeOf decides what a request's Upgrade header, as see found it,
// asks of unstuck. Only an HTTP/1.1 request whose Connection lists
// "upgrade" asks to switch (RFC 9110 7.8: an Upgrade without it may be
// one an HTTP/1.0 hop passed on, and an HTTP/1.0 request's is ignored).
// h2c is not an upgrade unstuck makes: the app then gets the HTTP/1.1
// answer its client falls back to, as from any server that ignores it.
func (d *hopDropper) upgradeOf(http10 bool) upgradeKind {
	switch {
	case d.set&hopUpgrade == 0:
		return noUpgrade
	case http10 || !d.connUpgrade || d.h2c:
		return upgradeIgnored
	}
	return upgradeForward
}

// namesH2C reports whether an Upgrade value lists h2c (in any case, with
// or without a version).
func namesH2C(v []byte) bool {
	for len(v) > 0 {
		var tok []byte
		tok, v, _ = bytes.Cut(v, []byte(","))
		tok, _, _ = bytes.Cut(bytes.TrimSpace(tok), []byte("/"))
		if equalFold(tok, "h2c") {
			return true
		}
	}
	return false
}

func (d *hopDropper) isNamed(k []byte) bool {
	for _, n := range d.named[:d.nn] {
		if bytes.EqualFold(k, n) {
			return true
		}
	}
	return false
}

// seeRequest sees a request's headers (prepareRequest strips them);
// stripResponseHops removes a response's hop-by-hop headers and those its
// Connection header names, and returns what its Keep-Alive said.
func (d *hopDropper) seeRequest(h *fasthttp.RequestHeader) {
	for k, v := range h.All() {
		d.see(k, v)
	}
}

func stripResponseHops(h *fasthttp.ResponseHeader) keepAlive {
	var d hopDropper
	for k, v := range h.All() {
		d.see(k, v)
	}
	d.strip(h, 0)
	return d.keepAlive
}

// onlyCloseOrKeepAlive reports the common Connection values that name no
// other header.
func onlyCloseOrKeepAlive(v []byte) bool {
	return bytes.EqualFold(v, []byte("close")) || bytes.EqualFold(v, []byte("keep-alive"))
}

// appendForwardedFor appends the client's address to X-Forwarded-For,
// keeping what earlier proxies wrote. An invalid ip (a unix socket peer)
// adds nothing.
func appendForwardedFor(req *fasthttp.Request, ip netip.Addr) {
	if !ip.IsValid() {
		return
	}
	var buf [128]byte
	scratch := buf[:0]
	var key [len(fasthttp.HeaderXForwardedFor)]byte
	copy(key[:], fasthttp.HeaderXForwardedFor)
	for k, v := range req.Header.All() {
		if len(k) == len(key) && bytes.EqualFold(k, key[:]) {
			// Keep the app's spelling of the name, and what earlier
			// proxies wrote.
			copy(key[:], k)
			scratch = append(append(scratch, v...), ", "...)
			break
		}
	}
	scratch = ip.AppendTo(scratch)
	req.Header.SetCanonical(key[:], scratch)
}

// setXForwardedProto sets X-Forwarded-Proto: http, replacing the app's own
// in whatever case it spelled the name.
func setXForwardedProto(h *fasthttp.RequestHeader) {
	var key [len(fasthttp.HeaderXForwardedProto)]byte
	copy(key[:], fasthttp.HeaderXForwardedProto)
	for k := range h.All() {
		if len(k) == len(key) && bytes.EqualFold(k, key[:]) {
			copy(key[:], k)
			break
		}
	}
	h.SetCanonical(key[:], []byte("http"))
}

// remoteIP is a peer's IP address; invalid for a unix socket peer.
func remoteIP(a net.Addr) netip.Addr {
	if a, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	}
	return netip.Addr{}
}

// clientIP is the app's IP address for X-Forwarded-For. An app connection
// works it out once, at accept, not once per request.
func clientIP(ctx *fasthttp.RequestCtx) netip.Addr {
	if c, ok := ctx.Conn().(*appConn); ok {
		return c.clientIP
	}
	return remoteIP(ctx.RemoteAddr())
}

// prepareRequest turns the app's request into the upstream's, in place:
// hop-by-hop headers out (those hops saw; an upgrade keeps its Connection
// and Upgrade, which are the request), X-Forwarded-For/-Proto in, always
// HTTP/1.1 with keep-alive towards the upstream. fasthttp has already
// noted whether the app asked to close its own connection, so dropping
// Connection here does not change what happens to the app's connection.
func prepareRequest(req *fasthttp.Request, hops *hopDropper, upgrade bool, client netip.Addr, hostHeader string) {
	var keep hopSet
	if upgrade {
		keep = hopConnection | hopUpgrade
	}
	hops.strip(&req.Header, keep)
	// fasthttp would add Content-Type: application/octet-stream to a body
	// that came without one.
	req.Header.SetNoDefaultContentType(true)
	req.Header.SetProtocol("HTTP/1.1")
	// writeRequest sends the target and Host as they came.
	if uri := req.Header.RequestURI(); len(uri) > 0 && uri[0] != '/' && uri[0] != '*' {
		// Absolute-form (checkRequest made sure it names the Host
		// header's host): the upstream gets origin-form, which every
		// server reads.
		u := req.URI()
		u.DisablePathNormalizing = true
		req.Header.SetRequestURIBytes(u.RequestURI())
	}
	appendForwardedFor(req, client)
	setXForwardedProto(&req.Header)
	if hostHeader != "" {
		req.Header.SetHost(hostHeader)
	}
}
