package sockstate

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/unstuck-proxy/unstuck/internal/netns"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// readFixture reads a fixture directory; the fixtures were taken on a
// little-endian host, whose word order they encode.
func readFixture(t *testing.T, dir string) []Socket {
	t.Helper()
	var out []Socket
	if err := walk(filepath.Join("testdata", dir), true, func(s *Socket) { out = append(out, *s) }); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestParseFixture(t *testing.T) {
	ap := netip.MustParseAddrPort
	want := []Socket{
		// tcp
		{Local: ap("127.0.0.1:8080"), Remote: ap("0.0.0.0:0"), State: Listen, RxQueue: 3, UID: 1000, Inode: 1213},
		{Local: ap("10.0.0.5:443"), Remote: ap("192.168.1.20:51000"), State: CloseWait, RxQueue: 42, UID: 33, Inode: 45678},
		{Local: ap("127.0.0.1:8080"), Remote: ap("127.0.0.1:40000"), State: Established, TxQueue: 16, UID: 1000, Inode: 45679},
		// tcp6
		{Local: ap("[::1]:8080"), Remote: ap("[::]:0"), State: Listen, UID: 1000, Inode: 2222},
		{Local: ap("127.0.0.1:9000"), Remote: ap("127.0.0.1:40001"), State: CloseWait, UID: 1000, Inode: 3333}, // v4-mapped, unmapped
		{Local: ap("[2001:db8::1]:443"), Remote: ap("[2001:db8::2]:1234"), State: TimeWait},
	}
	got := readFixture(t, "fixture")
	if len(got) != len(want) {
		t.Fatalf("got %d sockets, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("socket %d:\n got %+v\nwant %+v", i, got[i], want[i])
		}
	}
}

// A socket printed twice is listed once; reuse_port listeners, one
// address and two inodes, are two sockets.
func TestReadFromDropsRepeats(t *testing.T) {
	if !nativeLittle {
		t.Skip("fixtures encode little-endian words")
	}
	got, err := ReadFrom(filepath.Join("testdata", "duplicates"))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].Inode != 1213 || got[1].Inode != 1214 || got[2].State != Established {
		t.Fatalf("got %+v; want the two listeners and the established socket once", got)
	}
}

func TestCountFromFixture(t *testing.T) {
	if !nativeLittle {
		t.Skip("fixtures encode little-endian words")
	}
	tests := []struct {
		name  string
		dir   string
		match func(Socket) bool
		want  map[State]int
	}{
		{"all", "fixture", nil, map[State]int{Listen: 2, CloseWait: 2, Established: 1, TimeWait: 1}},
		{"local 8080", "fixture", LocalPort(8080), map[State]int{Listen: 2, Established: 1}},
		{"remote 40001", "fixture", RemotePort(40001), map[State]int{CloseWait: 1}},
		{"either", "fixture", Either(LocalPort(443), RemotePort(40000)), map[State]int{CloseWait: 1, Established: 1, TimeWait: 1}},
		{"every", "fixture", Every(LocalPort(443), RemotePort(1234)), map[State]int{TimeWait: 1}},
		{"conn mapped", "fixture", Conn(netip.MustParseAddrPort("[::ffff:127.0.0.1]:9000"), netip.MustParseAddrPort("127.0.0.1:40001")), map[State]int{CloseWait: 1}},
		{"no tcp6", "v4only", nil, map[State]int{Listen: 1}},
		// An established socket printed twice (a read that resumed after
		// the chain moved) counts once; two reuse_port listeners on one
		// address, two inodes, count twice.
		{"duplicates", "duplicates", nil, map[State]int{Listen: 2, Established: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := CountFrom(filepath.Join("testdata", tt.dir), tt.match)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestReadErrors(t *testing.T) {
	if _, err := ReadFrom(filepath.Join("testdata", "malformed")); !errors.Is(err, ErrMalformed) {
		t.Errorf("malformed: got %v, want ErrMalformed", err)
	}
	if _, err := ReadFrom(filepath.Join("testdata", "nope")); err == nil {
		t.Error("missing dir: no error")
	}
}

func TestParseLineRejects(t *testing.T) {
	for _, line := range []string{
		"0: 0100007F:1F90 00000000:0000",                                           // short
		"0: 0100007:1F90 00000000:0000 0A 0:0 00:0 0 0 0 1",                        // address length
		"0: 0100007F:1F9 00000000:0000 0A 0:0 00:0 0 0 0 1",                        // port length
		"0: 0100007G:1F90 00000000:0000 0A 0:0 00:0 0 0 0 1",                       // hex
		"0: 0100007F:1F90 00000000:0000 100 0:0 00:0 0 0 0 1",                      // state
		"0: 0100007F:1F90 00000000:0000 0A 00 00:0 0 0 0 1",                        // queues
		"0: 0100007F:1F90 00000000:0000 0A 0:0 00:0 0 x 0 1",                       // uid
		"0: 0100007F:1F90 00000000:0000 0A 0:0 00:0 0 0 0 -1",                      // inode
		"0: 0100007F:1F90 00000000:0000 0A 0:0 00:0 0 0 0 99999999999999999999999", // inode overflow
	} {
		var s Socket
		if err := parseLine([]byte(line), true, &s); err == nil {
			t.Errorf("parseLine(%q) = %+v, want error", line, s)
		}
	}
}

func TestStateString(t *testing.T) {
	tests := []struct {
		s    State
		want string
	}{
		{Established, "ESTABLISHED"}, {CloseWait, "CLOSE_WAIT"}, {FinWait2, "FIN_WAIT2"},
		{NewSynRecv, "NEW_SYN_RECV"}, {0, "State(0)"}, {13, "State(13)"},
	}
	for _, tt := range tests {
		if got := tt.s.String(); got != tt.want {
			t.Errorf("State(%d).String() = %q, want %q", uint8(tt.s), got, tt.want)
		}
	}
	if n := len(States()); n != NumStates-1 {
		t.Errorf("States() has %d states, want %d", n, NumStates-1)
	}
}

func addrPort(t *testing.T, a net.Addr) netip.AddrPort {
	t.Helper()
	return a.(*net.TCPAddr).AddrPort()
}

// TestCloseWaitLive makes a real CLOSE_WAIT: the server closes its side, the
// client does not, so the client's socket has the peer's FIN and waits for
// its app to close. In a namespace of its own: its sockets are the only
// ones.
func TestCloseWaitLive(t *testing.T) {
	if !netns.Isolated(t) {
		return
	}
	for _, network := range []struct{ name, listen, dialHost string }{
		{"v4", "127.0.0.1:0", "127.0.0.1"},
		{"v6", "[::1]:0", "::1"},
		{"v4-mapped", "[::]:0", "127.0.0.1"}, // dual-stack listener: the server side is in tcp6
	} {
		t.Run(network.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", network.listen)
			if err != nil {
				t.Skipf("listen %s: %v", network.listen, err)
			}
			defer ln.Close()
			port := ln.Addr().(*net.TCPAddr).Port
			client, err := net.Dial("tcp", net.JoinHostPort(network.dialHost, fmt.Sprint(port)))
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			server, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			clientSide := Conn(addrPort(t, client.LocalAddr()), addrPort(t, client.RemoteAddr()))
			serverSide := Conn(addrPort(t, server.LocalAddr()), addrPort(t, server.RemoteAddr()))

			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if _, err := WaitFor(ctx, clientSide, func(m map[State]int) bool { return m[Established] == 1 }); err != nil {
				t.Fatal(err)
			}

			server.Close()
			if _, err := WaitFor(ctx, clientSide, func(m map[State]int) bool { return m[CloseWait] == 1 }); err != nil {
				t.Fatal("client socket:", err)
			}
			if _, err := WaitFor(ctx, serverSide, func(m map[State]int) bool { return m[FinWait2] == 1 }); err != nil {
				t.Fatal("server socket:", err)
			}
			all, err := List()
			if err != nil {
				t.Fatal(err)
			}
			var found bool
			for _, s := range all {
				if clientSide(s) {
					found = true
					if s.State != CloseWait || s.Inode == 0 {
						t.Errorf("client socket %+v: want CLOSE_WAIT with an inode", s)
					}
				}
			}
			if !found {
				t.Error("client socket not in List()")
			}

			client.Close()
			if _, err := WaitFor(ctx, clientSide, func(m map[State]int) bool {
				return m[CloseWait] == 0 && m[LastAck] == 0 && m[Established] == 0
			}); err != nil {
				t.Fatal("after client close:", err)
			}
		})
	}
}

func TestWaitForDeadline(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := WaitFor(ctx, LocalPort(1), func(map[State]int) bool { return false })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
}

// writeTable writes a tcp table of n sockets and an empty tcp6 to a new
// directory, in the kernel's layout.
func writeTable(tb testing.TB, n int) string {
	tb.Helper()
	dir := tb.TempDir()
	f, err := os.Create(filepath.Join(dir, "tcp"))
	if err != nil {
		tb.Fatal(err)
	}
	w := bufio.NewWriter(f)
	fmt.Fprintf(w, "%-149s\n", "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode")
	for i := range n {
		st := []string{"01", "08", "06", "0A"}[i%4]
		fmt.Fprintf(w, "%4d: 0100007F:%04X 0100007F:%04X %s 00000000:00000000 00:00000000 00000000  1000        0 %d 1 0000000000000000 20 4 30 10 -1                    \n",
			i, 1024+i%60000, 8080, st, 100000+i)
	}
	if err := w.Flush(); err != nil {
		tb.Fatal(err)
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tcp6"), []byte(strings.Repeat(" ", 10)+"header\n"), 0o644); err != nil {
		tb.Fatal(err)
	}
	return dir
}

// TestCountAllocs proves CountFrom allocates far less than once per socket:
// a few times per call, and as its set of the sockets seen doubles.
func TestCountAllocs(t *testing.T) {
	dir := writeTable(t, 20000)
	got, err := CountFrom(dir, RemotePort(8080))
	if err != nil {
		t.Fatal(err)
	}
	if got[Established] != 5000 || got[CloseWait] != 5000 || got[TimeWait] != 5000 || got[Listen] != 5000 {
		t.Fatalf("counts %v", got)
	}
	match := RemotePort(8080)
	allocs := testing.AllocsPerRun(5, func() {
		if _, err := CountFrom(dir, match); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 400 {
		t.Errorf("CountFrom of 20000 sockets: %v allocs, want a few per call", allocs)
	}
}

func BenchmarkCount20000(b *testing.B) {
	dir := writeTable(b, 20000)
	match := RemotePort(8080)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := CountFrom(dir, match); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkList20000(b *testing.B) {
	dir := writeTable(b, 20000)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ReadFrom(dir); err != nil {
			b.Fatal(err)
		}
	}
}

// Counters reads the namespace's own counters: a connection closed first
// by one side counts one TIME_WAIT entered, whatever the table shows later.
func TestCountersLive(t *testing.T) {
	if !netns.Isolated(t) {
		return
	}
	before, err := Counters()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	client.Close() // first: the client keeps the TIME_WAIT
	if _, err := server.Read(make([]byte, 1)); err == nil {
		t.Fatal("server read data; want EOF")
	}
	server.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := WaitFor(ctx, nil, func(m map[State]int) bool { return m[TimeWait] == 1 && len(m) == 2 }); err != nil {
		t.Fatal(err) // the TIME_WAIT and the listener
	}
	after, err := Counters()
	if err != nil {
		t.Fatal(err)
	}
	if d := after["TcpExt.TW"] - before["TcpExt.TW"]; d != 1 {
		t.Errorf("TcpExt.TW rose by %d; want 1", d)
	}
	if d := after["Tcp.ActiveOpens"] - before["Tcp.ActiveOpens"]; d != 1 {
		t.Errorf("Tcp.ActiveOpens rose by %d; want 1", d)
	}
}

func TestCountersFromFixture(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "snmp"), []byte("Tcp: RtoAlgorithm MaxConn OutRsts\nTcp: 1 -1 3\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "netstat"), []byte("TcpExt: TW TWKilled\nTcpExt: 50 0\n"), 0o644)
	got, err := CountersFrom(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got["Tcp.OutRsts"] != 3 || got["TcpExt.TW"] != 50 || len(got) != 5 {
		t.Fatalf("CountersFrom = %v", got)
	}
	os.WriteFile(filepath.Join(dir, "netstat"), []byte("TcpExt: TW\nIpExt: 1\n"), 0o644)
	if _, err := CountersFrom(dir); !errors.Is(err, ErrMalformed) {
		t.Fatalf("mismatched groups: %v; want ErrMalformed", err)
	}
}
