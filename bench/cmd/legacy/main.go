// Command legacy counts the sockets left in CLOSE_WAIT by a legacy client
// that never closes a socket on EOF, talking straight to an upstream that
// closes idle connections, and through each proxy.
//
// It is the upstream: a keep-alive server that closes a connection idle for
// -idle (1s). It is also the client: it holds -conns (500) keep-alive
// connections and, in each of -rounds rounds -pause apart, sends one GET on
// each. Before a request it checks its connection; one that the peer
// closed, or that fails, is given up and a new one dialed, but the old
// socket is never closed, as the legacy app does. At the end it counts,
// from /proc/net/tcp{,6}, the client's own sockets and the proxy's sockets
// (by the PIDs given with -target) that sit in CLOSE_WAIT.
//
//	legacy -listen 127.0.0.1:19300 -target direct=127.0.0.1:19300 \
//	    -target unstuck=127.0.0.1:19305@4242
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/unstuck-proxy/unstuck/bench/internal/rig"
	"github.com/unstuck-proxy/unstuck/internal/sockstate"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:19300", "the upstream's address; the proxies forward here")
	idle := flag.Duration("idle", time.Second, "the upstream closes connections idle this long")
	conns := flag.Int("conns", 500, "connections the legacy client holds")
	rounds := flag.Int("rounds", 4, "rounds of one request per connection")
	pause := flag.Duration("pause", 1500*time.Millisecond, "pause after each round (longer than -idle)")
	var targets rig.Targets
	flag.Var(&targets, "target", "name=host:port[@pid,pid...]; repeatable")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("legacy: ")

	up, err := rig.Listen(*listen, rig.UpstreamConfig{IdleTimeout: *idle})
	if err != nil {
		log.Fatal(err)
	}
	defer up.Close()

	fmt.Println("| path | requests | failed | client connections opened | client sockets in CLOSE_WAIT | proxy sockets in CLOSE_WAIT |")
	fmt.Println("|---|---:|---:|---:|---:|---:|")
	for _, t := range targets {
		c := &client{addr: t.Addr, slots: make([]*rig.ClientConn, *conns)}
		for range *rounds {
			c.round()
			time.Sleep(*pause)
		}
		clientCW, proxyCW, err := closeWaits(t)
		if err != nil {
			log.Fatal(err)
		}
		proxyCol := strconv.Itoa(proxyCW)
		if len(t.PIDs) == 0 {
			proxyCol = "-"
		}
		fmt.Printf("| %s | %d | %d | %d | %d | %s |\n", t.Name, c.requests, c.failed, c.dials, clientCW, proxyCol)
		c.closeAll()
		up.CloseAll()
		time.Sleep(300 * time.Millisecond)
	}
}

// client is the legacy app. Each slot is used by one goroutine per round.
type client struct {
	addr  string
	slots []*rig.ClientConn // nil: dial before the next request

	mu        sync.Mutex // guards the fields below
	abandoned []*rig.ClientConn
	requests  int
	failed    int
	dials     int
}

// round sends one GET on every slot, 64 at a time.
func (c *client) round() {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := range c.slots {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			c.request(i)
		}()
	}
	wg.Wait()
}

func (c *client) request(i int) {
	cc := c.slots[i]
	if cc != nil && peerClosed(cc) {
		c.abandon(i)
		cc = nil
	}
	var err error
	if cc == nil {
		var nc *net.TCPConn
		if nc, err = rig.Dial(c.addr); err == nil {
			cc = &rig.ClientConn{TCPConn: nc, BR: bufio.NewReaderSize(nc, 4<<10)}
			c.slots[i] = cc
			c.mu.Lock()
			c.dials++
			c.mu.Unlock()
		}
	}
	closeConn := false
	if err == nil {
		closeConn, err = rig.Get(cc, cc.BR, "/legacy", 5*time.Second)
	}
	if cc != nil && (err != nil || closeConn) {
		c.abandon(i)
	}
	c.mu.Lock()
	c.requests++
	if err != nil {
		c.failed++
	}
	c.mu.Unlock()
}

// peerClosed looks at a connection, waiting at most a millisecond: true if
// the peer has closed it (or sent something unasked). A deadline already
// past would not even try the read.
func peerClosed(cc *rig.ClientConn) bool {
	cc.SetReadDeadline(time.Now().Add(time.Millisecond))
	_, err := cc.BR.Peek(1)
	cc.SetReadDeadline(time.Time{})
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

// abandon drops slot i's connection without closing it: the leak being
// modelled. The socket stays referenced so no finalizer closes it.
func (c *client) abandon(i int) {
	c.mu.Lock()
	c.abandoned = append(c.abandoned, c.slots[i])
	c.mu.Unlock()
	c.slots[i] = nil
}

func (c *client) closeAll() {
	for _, cc := range append(c.abandoned, c.slots...) {
		if cc != nil {
			cc.Close()
		}
	}
}

// closeWaits counts the sockets in CLOSE_WAIT that this process holds
// towards t (the legacy client's) and that t's processes hold (the
// proxy's).
func closeWaits(t rig.Target) (client, proxy int, err error) {
	_, port, _ := net.SplitHostPort(t.Addr)
	self, err := socketInodes(os.Getpid())
	if err != nil {
		return 0, 0, err
	}
	theirs := make(map[uint64]bool)
	for _, pid := range t.PIDs {
		inodes, err := socketInodes(pid)
		if err != nil {
			return 0, 0, err
		}
		for ino := range inodes {
			theirs[ino] = true
		}
	}
	socks, err := sockstate.List()
	if err != nil {
		return 0, 0, err
	}
	for _, s := range socks {
		if s.State != sockstate.CloseWait {
			continue
		}
		if self[s.Inode] && strconv.Itoa(int(s.Remote.Port())) == port {
			client++
		}
		if theirs[s.Inode] {
			proxy++
		}
	}
	return client, proxy, nil
}

// socketInodes returns the inodes of the sockets process pid has open.
func socketInodes(pid int) (map[uint64]bool, error) {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := make(map[uint64]bool, len(entries))
	for _, e := range entries {
		link, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		if ino, ok := strings.CutPrefix(link, "socket:["); ok {
			if n, err := strconv.ParseUint(strings.TrimSuffix(ino, "]"), 10, 64); err == nil {
				out[n] = true
			}
		}
	}
	return out, nil
}
