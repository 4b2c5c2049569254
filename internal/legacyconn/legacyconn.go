// Package legacyconn holds keep-alive connections the way the legacy
// applications unstuck sits in front of do: a connection that fails, or
// that the server asks to close, is given up on and replaced at the next
// request, but its socket is never closed. Once the peer has closed, an
// abandoned socket sits in CLOSE_WAIT until Close, as in production.
//
// The demo's legacy app and testpeer's LegacyClient are both built on it,
// so the leak the demo shows is the one the tests model. It is not a test
// double: the product binary links it through the demo.
package legacyconn

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/unstuck-proxy/unstuck/internal/sockstate"
)

// Options configure Dial.
type Options struct {
	// Name prefixes dial errors, as in "legacy app: dial tcp ...".
	Name string
	// Conns is how many connections (slots) to hold.
	Conns int
	// DialTimeout bounds each dial.
	DialTimeout time.Duration
	// ReadBuffer is the size of each connection's reader; 0: bufio's
	// default.
	ReadBuffer int
}

// Conns is a fixed set of slots, each holding at most one connection to
// one address. Its methods are safe for concurrent use.
type Conns struct {
	addr  string
	opts  Options
	slots []*slot

	mu        sync.Mutex // guards everything below
	closed    bool
	all       []*net.TCPConn   // every connection ever opened, live or abandoned
	ends      []sockstate.Ends // our side of each of all
	dials     int
	abandoned int
}

// slot is one connection. mu is held for a whole exchange, so exchanges on
// one slot run one at a time.
type slot struct {
	mu   sync.Mutex
	conn *net.TCPConn // nil: dial before the next exchange
	br   *bufio.Reader
}

// Dial opens opts.Conns connections to addr. After it returns the caller
// owns the Conns and must Close it.
func Dial(addr string, opts Options) (*Conns, error) {
	c := &Conns{addr: addr, opts: opts}
	for range opts.Conns {
		sl := &slot{}
		if err := c.dial(sl); err != nil {
			c.Close()
			return nil, err
		}
		c.slots = append(c.slots, sl)
	}
	return c, nil
}

// Len returns how many slots there are.
func (c *Conns) Len() int { return len(c.slots) }

// dial gives sl a new connection. The caller holds sl.mu (or owns sl).
func (c *Conns) dial(sl *slot) error {
	nc, err := net.DialTimeout("tcp", c.addr, c.opts.DialTimeout)
	if err != nil {
		return fmt.Errorf("%s: %w", c.opts.Name, err)
	}
	tc := nc.(*net.TCPConn)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		tc.Close()
		return net.ErrClosed
	}
	c.all = append(c.all, tc)
	c.ends = append(c.ends, sockstate.EndsOf(tc))
	c.dials++
	br := bufio.NewReader(tc)
	if c.opts.ReadBuffer > 0 {
		br = bufio.NewReaderSize(tc, c.opts.ReadBuffer)
	}
	sl.conn, sl.br = tc, br
	return nil
}

// abandon drops sl's connection without closing it: the leak being
// modelled. The caller holds sl.mu.
func (c *Conns) abandon(sl *slot) {
	sl.conn, sl.br = nil, nil
	c.mu.Lock()
	c.abandoned++
	c.mu.Unlock()
}

// Exchange runs one request on slot i (from 0), holding the slot for all
// of it. It dials first if the slot's connection was given up on, bounds
// the exchange by timeout, and calls rt, which writes the request on conn
// and reads the response through br. An error from rt gives the
// connection up and is returned; so does closeConn (the server asked to
// close), though the exchange succeeded.
func (c *Conns) Exchange(i int, timeout time.Duration, rt func(conn net.Conn, br *bufio.Reader) (closeConn bool, err error)) error {
	sl := c.slots[i]
	sl.mu.Lock()
	defer sl.mu.Unlock()
	if sl.conn == nil {
		if err := c.dial(sl); err != nil {
			return err
		}
	}
	conn := sl.conn
	conn.SetDeadline(time.Now().Add(timeout))
	closeConn, err := rt(conn, sl.br)
	switch {
	case err != nil:
		c.abandon(sl)
		return err
	case closeConn:
		c.abandon(sl) // a legacy app drops the connection but never closes it
	default:
		conn.SetDeadline(time.Time{})
	}
	return nil
}

// Counts returns how many connections were opened, the first ones
// included, and how many were given up on and left open.
func (c *Conns) Counts() (dials, abandoned int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dials, c.abandoned
}

// Ends returns our side of every connection opened so far, live or
// abandoned, in dial order.
func (c *Conns) Ends() []sockstate.Ends {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]sockstate.Ends(nil), c.ends...)
}

// Match returns a sockstate filter for our own sockets, those opened so
// far.
func (c *Conns) Match() func(sockstate.Socket) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return sockstate.Conns(c.ends...)
}

// Close closes every connection ever opened, abandoned or not, and
// interrupts exchanges in progress. Later calls return nil.
func (c *Conns) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	var errs []error
	for _, tc := range c.all {
		if err := tc.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
