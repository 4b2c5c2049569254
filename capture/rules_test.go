package capture

import (
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/unstuck-proxy/unstuck/internal/netns"
	"github.com/unstuck-proxy/unstuck/internal/nftlist"
	"github.com/unstuck-proxy/unstuck/sockopt"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func list(t *testing.T) (nftlist.Listing, bool) {
	t.Helper()
	return nftlist.List(t, Table, Chain)
}

var testRules = Rules{
	Port: 15001, IPv4: true, IPv6: true,
	Ports:        []uint16{9000, 5432, 9000},
	CIDRs:        []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("::1/128")},
	ExcludePorts: []uint16{22},
	ExcludeUIDs:  []uint32{1337, 0},
	ExcludeMark:  0x1e7,
}

// Installing the same rules twice leaves the same table (listed through
// the nftables library, the way the kernel holds it), and Remove takes
// it away, twice without error.
func TestInstallIdempotentAndRemove(t *testing.T) {
	if !netns.Isolated(t) {
		return
	}
	if _, ok := list(t); ok {
		t.Fatal("a table before Install")
	}
	if err := Install(testRules); err != nil {
		t.Fatal(err)
	}
	first, ok := list(t)
	if !ok {
		t.Fatal("no table after Install")
	}
	// 2 fixed returns, uid, mark, exclude_ports, ports; 2 IPv4 CIDRs and 1 IPv6.
	if len(first.Rules) != 9 || len(first.Sets) != 3 || len(first.Sets["ports inet_service"]) != 2 {
		t.Fatalf("installed:\n%s\nwant 9 rules, 3 sets, ports deduplicated", strings.Join(first.Rules, "\n"))
	}
	if err := Install(testRules); err != nil {
		t.Fatal(err)
	}
	second, _ := list(t)
	if !reflect.DeepEqual(first, second) {
		t.Fatalf("installed twice, the rules differ:\nfirst:  %+v\nsecond: %+v", first, second)
	}
	// Fewer rules replace more: nothing of the first install is left.
	smaller := Rules{Port: 15001, IPv4: true, Ports: []uint16{9000}, ExcludeUIDs: []uint32{1337}}
	if err := Install(smaller); err != nil {
		t.Fatal(err)
	}
	if l, _ := list(t); len(l.Rules) != 5 || len(l.Sets) != 2 {
		t.Fatalf("after a smaller install: %d rules, sets %v; want 5 rules, 2 sets", len(l.Rules), l.Sets)
	}
	for range 2 {
		if err := Remove(); err != nil {
			t.Fatal(err)
		}
		if l, ok := list(t); ok {
			t.Fatalf("table left after Remove: %+v", l)
		}
	}
}

// Rules that would capture everything, or unstuck itself, are refused
// before anything is installed.
func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    Rules
		want string
	}{
		{"everything", Rules{Port: 1, IPv4: true, ExcludeUIDs: []uint32{1}}, "no ports and no cidrs"},
		{"no exclusion", Rules{Port: 1, IPv4: true, Ports: []uint16{2}}, "captured again"},
		{"family", Rules{Port: 1, IPv4: true, CIDRs: []netip.Prefix{netip.MustParsePrefix("::1/128")}, ExcludeUIDs: []uint32{1}}, "family is not captured"},
		{"host bits", Rules{Port: 1, IPv4: true, CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.1/8")}, ExcludeUIDs: []uint32{1}}, "not a network address"},
		{"no port", Rules{IPv4: true, Ports: []uint16{2}, ExcludeUIDs: []uint32{1}}, "no capture listener port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.r.Check(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Check: %v; want %q", err, tc.want)
			}
		})
	}
	if err := testRules.Check(); err != nil {
		t.Fatal(err)
	}
}

// String writes what Install installs, in nft's syntax.
func TestString(t *testing.T) {
	got := testRules.String()
	for _, want := range []string{
		"set ports {\n\t\ttype inet_service\n\t\telements = { 5432, 9000 }",
		"set exclude_uids {\n\t\ttype uid\n\t\telements = { 0, 1337 }",
		"type nat hook output priority dstnat; policy accept;",
		"meta skuid @exclude_uids return",
		"meta mark 0x1e7 return",
		"tcp dport != @ports return",
		"ip daddr 10.1.0.0/16 redirect to :15001",
		"ip6 daddr ::1/128 redirect to :15001",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("String lacks %q:\n%s", want, got)
		}
	}
}

// The rules do what they say in the kernel: a connection to a captured
// port reaches the capture listener, which reads the original destination
// (IPv4 and IPv6, on a dual-stack listener); one to another port, one
// made by an excluded UID and one with the excluded mark reach the server
// itself.
func TestRedirect(t *testing.T) {
	if !netns.Isolated(t) {
		return
	}
	capt := listen(t, "[::]:0") // dual-stack, as a capture listener for both families
	servers := map[string]net.Listener{
		"captured4":  listen(t, "127.0.0.5:0"),
		"captured6":  listen(t, "[::1]:0"),
		"other port": listen(t, "127.0.0.5:0"),
	}
	port := func(ln net.Listener) uint16 { return uint16(ln.Addr().(*net.TCPAddr).Port) }
	const appUID, unstuckUID, mark = 4242, 1337, 0x1e7
	r := Rules{
		Port: port(capt), IPv4: true, IPv6: true,
		Ports:       []uint16{port(servers["captured4"]), port(servers["captured6"])},
		ExcludeUIDs: []uint32{unstuckUID}, ExcludeMark: mark,
	}
	if err := Install(r); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name     string
		server   net.Listener
		uid      int
		mark     uint32
		captured bool
	}{
		{"captured4", servers["captured4"], appUID, 0, true},
		{"captured6", servers["captured6"], appUID, 0, true},
		{"root is an app too", servers["captured4"], 0, 0, true},
		{"other port", servers["other port"], appUID, 0, false},
		{"excluded uid", servers["captured4"], unstuckUID, 0, false},
		{"excluded mark", servers["captured6"], 0, mark, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := tc.server.Addr().String()
			c, err := dialAs(dst, tc.uid, tc.mark)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			want := tc.server
			if tc.captured {
				want = capt
			}
			got := accept(t, want)
			defer got.Close()
			if got.RemoteAddr().(*net.TCPAddr).Port != c.LocalAddr().(*net.TCPAddr).Port {
				t.Fatalf("accepted %v; want the connection from %v", got.RemoteAddr(), c.LocalAddr())
			}
			orig, err := originalDst(got)
			if err != nil {
				t.Fatal(err)
			}
			wantDst := netip.MustParseAddrPort(dst)
			if !tc.captured {
				wantDst = netip.MustParseAddrPort(got.LocalAddr().String()) // not redirected: its own address
			}
			if orig != wantDst {
				t.Fatalf("original destination %v; want %v", orig, wantDst)
			}
		})
	}
}

func listen(t *testing.T, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func accept(t *testing.T, ln net.Listener) net.Conn {
	t.Helper()
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
	c, err := ln.Accept()
	if err != nil {
		t.Fatalf("nothing accepted on %v: %v", ln.Addr(), err)
	}
	return c
}

// originalDst reads c's original destination as a capture listener does.
func originalDst(c net.Conn) (netip.AddrPort, error) {
	local := netip.MustParseAddrPort(c.LocalAddr().String())
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var dst netip.AddrPort
	var derr error
	if err := raw.Control(func(fd uintptr) {
		dst, derr = sockopt.OriginalDst(int(fd), !local.Addr().Unmap().Is4())
	}); err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port()), derr
}

// dialAs connects to addr from a socket created with effective UID uid
// (on this thread alone, as the socket's owner is taken at its creation)
// and with SO_MARK mark if not 0.
func dialAs(addr string, uid int, mark uint32) (net.Conn, error) {
	runtime.LockOSThread()
	if uid != 0 {
		// The raw syscall changes this thread only, unlike syscall.Setresuid.
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), uintptr(uid), ^uintptr(0)); e != 0 {
			runtime.UnlockOSThread()
			return nil, fmt.Errorf("setresuid: %w", e)
		}
	}
	d := net.Dialer{Timeout: 5 * time.Second}
	if mark != 0 {
		d.Control = sockopt.Control(func(fd int) error { return sockopt.SetMark(fd, mark) })
	}
	c, err := d.Dial("tcp", addr)
	if uid != 0 {
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), 0, ^uintptr(0)); e != 0 {
			// The thread stays locked and dies with the goroutine.
			return c, fmt.Errorf("setresuid back to 0: %w", e)
		}
	}
	runtime.UnlockOSThread()
	return c, err
}
