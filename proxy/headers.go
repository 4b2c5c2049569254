package proxy

import (
	"bytes"
	"net"
	"net/netip"
	"strings"

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
}

// headerList is the subset of fasthttp's header types the stripping needs.
type headerList interface {
	Peek(key string) []byte
	Del(key string)
}

// hopSet records which of hopHeaders a message carries: bit i for
// hopHeaders[i]. Zero, the common case, costs no deletion; otherwise only
// the headers present are deleted (an upstream's "Connection: keep-alive"
// costs one Del, not seven).
type hopSet uint8

const connectionHop hopSet = 1 // hopHeaders[0] is Connection

// A ninth hop-by-hop header would not fit in a hopSet: this constant then
// overflows and the build fails.
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

// requestHops and responseHops look once over the headers. (Two
// functions, not one on an interface, so the iterator stays on the stack.)
func requestHops(h *fasthttp.RequestHeader) (set hopSet) {
	for k := range h.All() {
		set |= hopBit(k)
	}
	return set
}

func responseHops(h *fasthttp.ResponseHeader) (set hopSet) {
	for k := range h.All() {
		set |= hopBit(k)
	}
	return set
}

// stripHopHeaders removes the hop-by-hop headers in set and every header
// the Connection header names. It copies the Connection value first
// because Del may reuse that memory; that copy is the only allocation, and
// only for messages that carry a Connection header naming other headers.
func stripHopHeaders(h headerList, set hopSet) {
	if set&connectionHop != 0 {
		if conn := h.Peek(fasthttp.HeaderConnection); len(conn) > 0 && !onlyCloseOrKeepAlive(conn) {
			for tok := range strings.SplitSeq(string(conn), ",") {
				tok = strings.TrimSpace(tok)
				if tok != "" && !strings.EqualFold(tok, "close") && !strings.EqualFold(tok, "keep-alive") {
					h.Del(tok)
				}
			}
		}
	}
	for i, k := range hopHeaders {
		if set&(1<<i) != 0 {
			h.Del(k)
		}
	}
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
	if prior := req.Header.Peek(fasthttp.HeaderXForwardedFor); len(prior) > 0 {
		scratch = append(append(scratch, prior...), ", "...)
	}
	scratch = ip.AppendTo(scratch)
	req.Header.SetBytesV(fasthttp.HeaderXForwardedFor, scratch)
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
// hop-by-hop headers out, X-Forwarded-For/-Proto in, always HTTP/1.1 with
// keep-alive towards the upstream. fasthttp has already noted whether the
// app asked to close its own connection, so dropping Connection here does
// not change what happens to the app's connection.
func prepareRequest(req *fasthttp.Request, client netip.Addr, hostHeader string) {
	if hops := requestHops(&req.Header); hops != 0 {
		stripHopHeaders(&req.Header, hops)
	}
	// unstuck answered any Expect: 100-continue itself before reading the
	// body; the upstream gets the whole request at once.
	req.Header.Del(fasthttp.HeaderExpect)
	req.Header.SetProtocol("HTTP/1.1")
	// fasthttp's server has parsed the URI; without these, Write would
	// rebuild the request line from it (normalising the path) and replace
	// Host with the URI's host. A proxy forwards both as they came.
	req.UseHostHeader = true
	req.URI().DisablePathNormalizing = true
	appendForwardedFor(req, client)
	req.Header.Set(fasthttp.HeaderXForwardedProto, "http")
	if hostHeader != "" {
		req.Header.SetHost(hostHeader)
	}
}
