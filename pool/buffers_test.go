package pool

import (
	"bufio"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
)

// bigHeaderServer answers every request on a connection with a 200 whose
// header block is about headerBytes long.
func bigHeaderServer(t *testing.T, headerBytes int) *finServer {
	t.Helper()
	resp := "HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("a", headerBytes) + "\r\nContent-Length: 2\r\n\r\nok"
	return startTestServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if line == "\r\n" {
				if _, err := c.Write([]byte(resp)); err != nil {
					return
				}
			}
		}
	})
}

// The read buffer is ResponseHeaderBytes: 64 KiB by default, so a 20 KiB
// header block parses; with 8 KiB fasthttp reports ErrSmallBuffer.
func TestResponseHeaderBytesSizesReadBuffer(t *testing.T) {
	srv := bigHeaderServer(t, 20<<10)
	for _, tc := range []struct {
		name  string
		bytes int
		ok    bool
	}{
		{"default", 0, true},
		{"8KiB", 8192, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newTestPool(t, Config{Endpoints: []string{srv.addr()}, ResponseHeaderBytes: tc.bytes})
			c, err := p.Acquire(false)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Writer().WriteString("GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			if err := c.Writer().Flush(); err != nil {
				t.Fatal(err)
			}
			var resp fasthttp.Response
			err = resp.Read(c.Reader())
			var small *fasthttp.ErrSmallBuffer
			switch {
			case tc.ok && err != nil:
				t.Fatalf("20 KiB of headers: %v", err)
			case tc.ok && string(resp.Body()) != "ok":
				t.Fatalf("body %q", resp.Body())
			case !tc.ok && !errors.As(err, &small):
				t.Fatalf("20 KiB of headers in an 8 KiB buffer: got %v, want ErrSmallBuffer", err)
			}
			if err != nil {
				p.Discard(c, CauseError)
				return
			}
			p.Release(c)
		})
	}
}

// Two pools with different sizes never trade read buffers.
func TestReadBuffersArePerPool(t *testing.T) {
	srv := newFinServer(t)
	small := newTestPool(t, Config{Endpoints: []string{srv.addr()}, ResponseHeaderBytes: 4096})
	big := newTestPool(t, Config{Endpoints: []string{srv.addr()}})
	for range 3 {
		for _, tc := range []struct {
			p    *Pool
			size int
		}{{small, 4096}, {big, 64 << 10}} {
			c, err := tc.p.Acquire(false)
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Reader().Size(); got != tc.size {
				t.Fatalf("read buffer of %d bytes; want %d", got, tc.size)
			}
			tc.p.Release(c)
		}
	}
}
