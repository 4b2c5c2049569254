package rig

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// dialConcurrency bounds dials in flight, so a burst of thousands of
// connections never overflows a listen backlog (which would add SYN
// retransmits of a second or more to the measurement).
const dialConcurrency = 256

// Dial connects to addr, which must be a loopback address.
func Dial(addr string) (*net.TCPConn, error) {
	if err := checkLoopback(addr); err != nil {
		return nil, err
	}
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	return nc.(*net.TCPConn), nil
}

// Get sends "GET path" on c and reads the whole response through br (c's
// reader). It reports whether the server asked to close.
func Get(c net.Conn, br *bufio.Reader, path string, timeout time.Duration) (closeConn bool, err error) {
	return Do(c, br, "GET", path, "", nil, timeout)
}

// Do sends one request on c, with X-Request-Id id unless it is empty and
// body with a Content-Length unless it is nil, and reads the whole response
// through br (c's reader). A status other than 200 is an error. It reports
// whether the server asked to close.
func Do(c net.Conn, br *bufio.Reader, method, path, id string, body []byte, timeout time.Duration) (closeConn bool, err error) {
	c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	head := method + " " + path + " HTTP/1.1\r\nHost: bench\r\n"
	if id != "" {
		head += "X-Request-Id: " + id + "\r\n"
	}
	if body != nil {
		head += "Content-Length: " + strconv.Itoa(len(body)) + "\r\n"
	}
	bufs := net.Buffers{[]byte(head + "\r\n"), body}
	if _, err := bufs.WriteTo(c); err != nil {
		return false, fmt.Errorf("write: %w", err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return false, fmt.Errorf("read: %w", err)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return false, fmt.Errorf("read body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return resp.Close, fmt.Errorf("status %d", resp.StatusCode)
	}
	return resp.Close, nil
}

// ClientConn is a client connection with its reader.
type ClientConn struct {
	*net.TCPConn
	BR *bufio.Reader
}

// RequestAll opens n connections to addr and sends one GET on each; all n
// requests are in flight at once (dials are bounded, requests are not).
// With keep the connections are returned open, else each is closed right
// after its response. It returns how many requests failed and the first
// error.
func RequestAll(addr string, n int, keep bool, timeout time.Duration) (conns []ClientConn, failed int, firstErr error) {
	var (
		mu  sync.Mutex
		wg  sync.WaitGroup
		sem = make(chan struct{}, dialConcurrency)
	)
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		failed++
		if firstErr == nil {
			firstErr = err
		}
	}
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			c, err := Dial(addr)
			<-sem
			if err != nil {
				fail(err)
				return
			}
			cc := ClientConn{c, bufio.NewReaderSize(c, 1<<10)}
			if _, err := Get(c, cc.BR, "/n/"+strconv.Itoa(i), timeout); err != nil {
				c.Close()
				fail(err)
				return
			}
			if !keep {
				c.Close()
				return
			}
			mu.Lock()
			conns = append(conns, cc)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return conns, failed, firstErr
}

// checkLoopback refuses any address that is not on 127.0.0.0/8 or ::1:
// the benchmarks send traffic nowhere else.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%s: not a loopback address; the benchmarks stay on 127.0.0.0/8", addr)
	}
	return nil
}

// Target is a place to send load: a proxy, or the upstream itself
// ("direct").
type Target struct {
	Name string
	Addr string
	PIDs []int // the proxy's processes, if known
}

// Targets is a repeatable flag: -target name=host:port[@pid,pid...].
type Targets []Target

func (t *Targets) String() string {
	var parts []string
	for _, x := range *t {
		parts = append(parts, x.Name+"="+x.Addr)
	}
	return strings.Join(parts, " ")
}

// Set parses one -target value. A bare name (such as "ideal") is a target
// without an address, for the program to interpret.
func (t *Targets) Set(s string) error {
	name, rest, _ := strings.Cut(s, "=")
	if name == "" {
		return fmt.Errorf("%q: want name=host:port[@pid,pid...]", s)
	}
	addr, pids, _ := strings.Cut(rest, "@")
	x := Target{Name: name, Addr: addr}
	if addr != "" {
		if err := checkLoopback(addr); err != nil {
			return err
		}
	}
	for _, p := range strings.Split(pids, ",") {
		if p == "" {
			continue
		}
		pid, err := strconv.Atoi(p)
		if err != nil {
			return fmt.Errorf("%q: pid %q: %w", s, p, err)
		}
		x.PIDs = append(x.PIDs, pid)
	}
	*t = append(*t, x)
	return nil
}
