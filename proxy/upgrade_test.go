package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// upgradeObserver records what the tests of upgrades wait for: each
// pair's end arrives on ended, as it happens.
type upgradeObserver struct {
	nopObserver
	opened atomic.Int64
	ended  chan pairEndEvent

	mu       sync.Mutex
	refused  []string
	statuses []int
}

type pairEndEvent struct {
	cause             string
	toUpstream, toApp int64
}

func newUpgradeObserver() *upgradeObserver {
	return &upgradeObserver{ended: make(chan pairEndEvent, 16)}
}

func (o *upgradeObserver) PairOpened() { o.opened.Add(1) }

func (o *upgradeObserver) PairEnded(cause string, toUpstream, toApp int64) {
	o.ended <- pairEndEvent{cause: cause, toUpstream: toUpstream, toApp: toApp}
}

func (o *upgradeObserver) Refused(reason string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.refused = append(o.refused, reason)
}

func (o *upgradeObserver) Request(status int, _ string, _ time.Duration, _ int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.statuses = append(o.statuses, status)
}

// waitEnd waits for the next pair's end; the bound only keeps a broken
// test from hanging.
func (o *upgradeObserver) waitEnd(t *testing.T) pairEndEvent {
	t.Helper()
	select {
	case e := <-o.ended:
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no pair ended")
		return pairEndEvent{}
	}
}

// wsUpstream runs a WebSocket server on 127.0.0.1:0: "/ws" upgrades and
// runs script on the connection (then closes it), any other path answers
// "plain". It counts the TCP connections it accepted.
func wsUpstream(t *testing.T, script func(c *websocket.Conn)) (string, *atomic.Int64) {
	t.Helper()
	var accepted atomic.Int64
	var scripts sync.WaitGroup
	up := websocket.Upgrader{}
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ws" {
			io.WriteString(w, "plain")
			return
		}
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return // Upgrade has answered 400
		}
		scripts.Add(1)
		defer scripts.Done()
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		script(c)
	}))
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			accepted.Add(1)
		}
	}
	s.Start()
	t.Cleanup(func() { s.Close(); scripts.Wait() })
	return strings.TrimPrefix(s.URL, "http://"), &accepted
}

// echo answers n messages with themselves.
func echo(t *testing.T, c *websocket.Conn, n int) {
	for range n {
		mt, msg, err := c.ReadMessage()
		if err != nil {
			t.Errorf("upstream read: %v", err)
			return
		}
		if err := c.WriteMessage(mt, msg); err != nil {
			t.Errorf("upstream write: %v", err)
			return
		}
	}
}

// awaitEOF reads c's socket until its peer's FIN (what the pair passes on
// when the other side half-closes), failing on anything else.
func awaitEOF(t *testing.T, c *websocket.Conn) {
	t.Helper()
	nc := c.NetConn()
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := nc.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("read %d bytes, %v; want the FIN the pair passes on", n, err)
	}
}

// TestUpgradeWebSocketEcho: a WebSocket through an HTTP listener, with a
// real client and server (gorilla/websocket, whose handshake checks that
// Connection, Upgrade and the Sec-WebSocket-* headers arrived). Messages,
// binary ones holding what the framing guard would take for bare LFs and
// head ends, echo back whole. The upstream connection is dialed for the
// upgrade (a pooled one was idle) and is not pooled after; the pair's end
// is reported with the side that closed first, for each side.
func TestUpgradeWebSocketEcho(t *testing.T) {
	msgs := [][]byte{
		[]byte("hello"),
		[]byte("GET / HTTP/1.1\nHost: x\n\n"),
		bytes.Repeat([]byte("\r\n\r\n\x00\n"), 20000),
	}
	for _, tc := range []struct {
		name      string
		server    func(t *testing.T, c *websocket.Conn)
		client    func(t *testing.T, c *websocket.Conn)
		wantCause string
	}{{
		// The server sends its close frame, waits for the client's, and
		// closes TCP; the client waits for that FIN before its own close.
		name: "server closes first",
		server: func(t *testing.T, c *websocket.Conn) {
			echo(t, c, len(msgs))
			if err := c.WriteControl(websocket.CloseMessage,
				websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"), time.Now().Add(5*time.Second)); err != nil {
				t.Errorf("upstream close frame: %v", err)
			}
			if _, _, err := c.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
				t.Errorf("upstream got %v; want the client's close frame", err)
			}
		},
		client: func(t *testing.T, c *websocket.Conn) {
			if _, _, err := c.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
				t.Errorf("client got %v; want the server's close frame", err)
			}
			awaitEOF(t, c)
		},
		wantCause: PairUpstreamFIN,
	}, {
		// The client sends its close frame, waits for the server's, and
		// closes TCP; the server waits for that FIN before its own close.
		name: "client closes first",
		server: func(t *testing.T, c *websocket.Conn) {
			echo(t, c, len(msgs))
			if _, _, err := c.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseGoingAway) {
				t.Errorf("upstream got %v; want the client's close frame", err)
			}
			awaitEOF(t, c)
		},
		client: func(t *testing.T, c *websocket.Conn) {
			if err := c.WriteControl(websocket.CloseMessage,
				websocket.FormatCloseMessage(websocket.CloseGoingAway, "leaving"), time.Now().Add(5*time.Second)); err != nil {
				t.Errorf("client close frame: %v", err)
			}
			if _, _, err := c.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseGoingAway) {
				t.Errorf("client got %v; want the server's close frame", err)
			}
		},
		wantCause: PairAppFIN,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			upAddr, accepted := wsUpstream(t, func(c *websocket.Conn) { tc.server(t, c) })
			obs := newUpgradeObserver()
			s, addr := startServer(t, proxyOpts{listener: Config{Observer: obs}}, upAddr)
			p := s.up.Load().Pool

			// A plain request first: its connection idles in the pool.
			c := dialRaw(t, addr)
			c.send("GET /plain HTTP/1.1\r\nHost: app\r\n\r\n")
			if resp, body := c.response("GET"); resp.StatusCode != 200 || body != "plain" {
				t.Fatalf("plain request: %d %q", resp.StatusCode, body)
			}

			ws, resp, err := websocket.DefaultDialer.Dial("ws://"+addr+"/ws", nil)
			if err != nil {
				t.Fatalf("dial through the proxy: %v (response %v)", err, resp)
			}
			defer ws.Close()
			ws.SetReadDeadline(time.Now().Add(10 * time.Second))
			if resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("status %d", resp.StatusCode)
			}
			for _, m := range msgs {
				if err := ws.WriteMessage(websocket.BinaryMessage, m); err != nil {
					t.Fatal(err)
				}
				mt, got, err := ws.ReadMessage()
				if err != nil || mt != websocket.BinaryMessage || !bytes.Equal(got, m) {
					t.Fatalf("echo of %d bytes: type %d, %d bytes, %v", len(m), mt, len(got), err)
				}
			}
			tc.client(t, ws)
			ws.Close()

			end := obs.waitEnd(t)
			if end.cause != tc.wantCause {
				t.Errorf("pair ended %q; want %q", end.cause, tc.wantCause)
			}
			if end.toUpstream == 0 || end.toApp == 0 {
				t.Errorf("pair moved %d bytes up, %d to the app", end.toUpstream, end.toApp)
			}
			if n := obs.opened.Load(); n != 1 {
				t.Errorf("%d pairs opened; want 1", n)
			}
			if n := accepted.Load(); n != 2 {
				t.Errorf("upstream accepted %d connections; want 2 (the upgrade on one of its own)", n)
			}
			// The upgrade's connection is closed before the end is
			// reported: only the plain request's idles.
			for _, st := range p.Stats() {
				if st.Open != 1 || st.Idle != 1 {
					t.Errorf("pool after the pair: %+v; want the plain request's connection alone, idle", st)
				}
			}
		})
	}
}

// upgradeHead is an upgrade request as a WebSocket client sends it.
const upgradeHead = "GET /chat HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
	"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"

// TestUpgradeBytesAroundTheHeads: bytes the app sends right behind its
// upgrade request (in the same write: fasthttp reads them with the head)
// reach the upstream before anything else; the 101's head reaches the app
// byte for byte, and bytes the upstream sends right behind it (in the same
// write) follow it. Then bytes flow both ways, and the request went up
// with its Connection, Upgrade and Sec-WebSocket-* headers.
func TestUpgradeBytesAroundTheHeads(t *testing.T) {
	const early = "early\nbytes\r\n\r\nGET / HTTP/1.1\n" // no HTTP, whatever the guard would say
	const head101 = "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nCONNECTION: Upgrade\r\n" +
		"X-Odd:   spaced  \r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
	const serverFirst = "server speaks first"
	gotEarly := make(chan string, 1)
	up := startPeer(t, func(c net.Conn, br *bufio.Reader) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, head101+serverFirst)
		b := make([]byte, len(early))
		_, err := io.ReadFull(br, b)
		gotEarly <- string(b)
		if err != nil {
			return
		}
		io.Copy(c, br) // echo until the app's FIN
	})
	obs := newUpgradeObserver()
	addr := startProxy(t, proxyOpts{listener: Config{Observer: obs}}, up.addr())

	c := dialRaw(t, addr)
	c.send(upgradeHead + early)
	want := head101 + serverFirst
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c.br, got); err != nil || string(got) != want {
		t.Fatalf("app got %q, %v; want %q", got, err, want)
	}
	select {
	case e := <-gotEarly:
		if e != early {
			t.Fatalf("upstream got %q first; want %q", e, early)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the early bytes never reached the upstream")
	}
	c.send("ping")
	pong := make([]byte, 4)
	if _, err := io.ReadFull(c.br, pong); err != nil || string(pong) != "ping" {
		t.Fatalf("echo %q, %v", pong, err)
	}
	c.c.(*net.TCPConn).CloseWrite()
	if rest, err := io.ReadAll(c.br); err != nil || len(rest) != 0 {
		t.Fatalf("after the app's FIN: %q, %v; want the upstream's FIN", rest, err)
	}
	end := obs.waitEnd(t)
	if end.cause != PairAppFIN {
		t.Errorf("pair ended %q; want %q", end.cause, PairAppFIN)
	}
	if want := int64(len(early) + 4); end.toUpstream != want {
		t.Errorf("%d bytes to the upstream; want %d", end.toUpstream, want)
	}
	if want := int64(len(head101) + len(serverFirst) + 4); end.toApp != want {
		t.Errorf("%d bytes to the app; want %d (the 101's head counts)", end.toApp, want)
	}

	sent := up.got(0)
	sentHead, _, _ := strings.Cut(sent, "\r\n\r\n")
	for _, h := range []string{"Connection: Upgrade", "Upgrade: websocket",
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"} {
		if !strings.Contains(sentHead, "\r\n"+h+"\r\n") && !strings.HasSuffix(sentHead, "\r\n"+h) {
			t.Errorf("upstream request lacks %q:\n%s", h, sentHead)
		}
	}
}

// TestUpgradeNot101IsAResponse: an upstream that answers an upgrade
// request with anything but 101 has its answer passed on as an ordinary
// response; the app connection then closes (what follows an upgrade
// request is not known to be HTTP), and the upstream connection is not
// pooled.
func TestUpgradeNot101IsAResponse(t *testing.T) {
	up := startPeer(t, serveHTTP(func(*http.Request) string {
		return "HTTP/1.1 426 Upgrade Required\r\nContent-Length: 6\r\nX-Why: old\r\n\r\nno ws!"
	}))
	obs := newUpgradeObserver()
	s, addr := startServer(t, proxyOpts{listener: Config{Observer: obs}}, up.addr())
	c := dialRaw(t, addr)
	c.send(upgradeHead)
	resp, body := c.response("GET")
	if resp.StatusCode != http.StatusUpgradeRequired || body != "no ws!" || resp.Header.Get("X-Why") != "old" {
		t.Fatalf("got %d %q %v", resp.StatusCode, body, resp.Header)
	}
	if !resp.Close {
		t.Error("the response does not say Connection: close")
	}
	if !c.eof() {
		t.Error("the app connection stayed open after the refused upgrade")
	}
	if idle := idleConns(s.up.Load().Pool); idle != 0 {
		t.Errorf("%d upstream connections idle; the upgrade's must not be pooled", idle)
	}
	if n := obs.opened.Load(); n != 0 {
		t.Errorf("%d pairs opened", n)
	}
}

// TestUpgradeRefusedWhenDisabled: with upgrade: false an upgrade request
// is answered 501 with a body that says why, and nothing reaches the
// upstream: it never even gets a connection.
func TestUpgradeRefusedWhenDisabled(t *testing.T) {
	up := startPeer(t, serveOK)
	obs := newUpgradeObserver()
	addr := startProxy(t, proxyOpts{listener: Config{Observer: obs, RefuseUpgrade: true}}, up.addr())
	c := dialRaw(t, addr)
	c.send(upgradeHead)
	resp, body := c.response("GET")
	if resp.StatusCode != http.StatusNotImplemented || body != upgradeRefusedBody {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	if !c.eof() {
		t.Error("the app connection stayed open")
	}
	// A plain request on another connection goes through: had the refused
	// one been forwarded, the peer would have received it first.
	c2 := dialRaw(t, addr)
	c2.send("GET /after HTTP/1.1\r\nHost: app\r\n\r\n")
	if resp, _ := c2.response("GET"); resp.StatusCode != 200 {
		t.Fatalf("plain request: %d", resp.StatusCode)
	}
	if got := string(up.gotAll()); !strings.HasPrefix(got, "GET /after ") || strings.Contains(got, "/chat") {
		t.Errorf("upstream received %q; want the plain request alone", got)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if len(obs.refused) != 1 || obs.refused[0] != RefuseUpgrade {
		t.Errorf("refusals %v; want [%s]", obs.refused, RefuseUpgrade)
	}
}

// TestUpgradeIgnored: an Upgrade that unstuck does not make (h2c; an
// HTTP/1.0 request's; one that Connection does not list) is stripped and
// the request forwarded as any other; the app connection closes after the
// response, as after every request that carries Upgrade.
func TestUpgradeIgnored(t *testing.T) {
	for _, tc := range []struct{ name, req string }{
		{"h2c", "GET / HTTP/1.1\r\nHost: app\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"},
		{"HTTP/1.0", "GET / HTTP/1.0\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"},
		{"no Connection: upgrade", "GET / HTTP/1.1\r\nHost: app\r\nUpgrade: websocket\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := startPeer(t, serveOK)
			addr := startProxy(t, proxyOpts{}, up.addr())
			c := dialRaw(t, addr)
			c.send(tc.req)
			if resp, body := c.response("GET"); resp.StatusCode != 200 || body != "ok" {
				t.Fatalf("got %d %q", resp.StatusCode, body)
			}
			if !c.eof() {
				t.Error("the app connection stayed open")
			}
			got := strings.ToLower(up.got(0))
			for _, h := range []string{"upgrade", "http2-settings", "connection"} {
				if strings.Contains(got, "\n"+h+":") {
					t.Errorf("upstream got %s:\n%s", h, got)
				}
			}
		})
	}
}

// TestUpgradeNeverRetried: an upgrade request whose connection the
// upstream closes without an answer gets 502, although retries are on:
// the upstream received it once.
func TestUpgradeNeverRetried(t *testing.T) {
	up := startPeer(t, func(c net.Conn, br *bufio.Reader) { http.ReadRequest(br) })
	addr := startProxy(t, proxyOpts{upstream: Upstream{Retries: 3}}, up.addr())
	c := dialRaw(t, addr)
	c.send(upgradeHead)
	if resp, _ := c.response("GET"); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("got %d; want 502", resp.StatusCode)
	}
	if n := strings.Count(string(up.gotAll()), "GET /chat "); n != 1 {
		t.Errorf("upstream received the upgrade request %d times", n)
	}
}

// TestUnaskedSwitchIsBadGateway: a 101 to a request that did not ask to
// upgrade is a broken upstream: 502, and its connection is not pooled.
func TestUnaskedSwitchIsBadGateway(t *testing.T) {
	up := startPeer(t, serveHTTP(func(*http.Request) string {
		return "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
	}))
	s, addr := startServer(t, proxyOpts{}, up.addr())
	c := dialRaw(t, addr)
	c.send("GET / HTTP/1.1\r\nHost: app\r\n\r\n")
	if resp, _ := c.response("GET"); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("got %d; want 502", resp.StatusCode)
	}
	if idle := idleConns(s.up.Load().Pool); idle != 0 {
		t.Errorf("%d upstream connections idle after an unasked 101", idle)
	}
}

// TestUpgradeShutdownEndsPairs: Shutdown lets an upgraded pair run until
// its context ends, then ends it (PairShutdown), both sides reset, and
// returns only once it is closed.
func TestUpgradeShutdownEndsPairs(t *testing.T) {
	upAddr, _ := wsUpstream(t, func(c *websocket.Conn) {
		for {
			mt, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			c.WriteMessage(mt, msg)
		}
	})
	obs := newUpgradeObserver()
	s, addr := startServer(t, proxyOpts{listener: Config{Observer: obs}}, upAddr)
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err := ws.WriteMessage(websocket.TextMessage, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := ws.ReadMessage(); err != nil || string(msg) != "hi" {
		t.Fatalf("echo %q, %v", msg, err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the drain is over at once
	if err := s.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Shutdown: %v; want the context's error", err)
	}
	select {
	case end := <-obs.ended: // reported before Shutdown returned
		if end.cause != PairShutdown {
			t.Errorf("pair ended %q; want %q", end.cause, PairShutdown)
		}
	default:
		t.Fatal("Shutdown returned before the pair ended")
	}
	if _, _, err := ws.ReadMessage(); err == nil {
		t.Fatal("the app's WebSocket is still open")
	}
}

// The bits upgrades rely on name the right headers.
func TestHopBitsOfUpgrade(t *testing.T) {
	if hopBit([]byte("connection")) != hopConnection || hopBit([]byte("UPGRADE")) != hopUpgrade {
		t.Fatal("hopConnection or hopUpgrade is not its header's bit in hopHeaders")
	}
}
