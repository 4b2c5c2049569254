// Package testpeer provides misbehaving HTTP/1.1 upstreams and a legacy
// client for unstuck's tests, over real sockets on 127.0.0.1.
//
// The servers are hand-rolled over a net.Listener because the tests need to
// control exactly when each FIN is sent; net/http would hide that. Every
// server answers 200 and records each request it received in full (see
// Record), so a test can tell a POST that arrived twice. Paths:
//
//	/upload      body "<sha256 hex of request body> <length>"
//	/bytes/N     N deterministic bytes (see Bytes), streamed, with header
//	             X-Body-Sha256; ?chunked=1 sends them chunked
//	/sleep/D     waits D (a time.ParseDuration string), then answers as below
//	/status/N    answers with status N
//	anything     body "<method> <target> id=<X-Request-Id> len=<n> sha256=<hex>\n"
//
// Every response carries X-Request-Id (echoed), X-Conn (the connection's
// accept number, from 1), X-Conn-Seq (the request's number on it, from 1),
// X-Received-Length and X-Received-Sha256 (of the request body). A request
// with "X-Close: 1" or "Connection: close", or any HTTP/1.0 request, is
// answered with "Connection: close" and the connection is closed.
//
// Servers: Server (well-behaved keep-alive), IdleCloser (FINs idle
// connections), RaceCloser (FINs right after a response). Client:
// LegacyClient (never closes a socket it gave up on). Helpers: TCPPair
// (both ends of a loopback connection), SyncBuffer (a buffer written and
// read at once).
package testpeer
