package sockstate

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// DefaultDir is where List and Count read: the tables of the calling
// process's network namespace.
const DefaultDir = "/proc/net"

// ErrMalformed is wrapped by every error about a line that is not in the
// kernel's format. It means the file is not a /proc/net/tcp table (a wrong
// fixture or directory); retrying will not help.
var ErrMalformed = errors.New("sockstate: malformed line")

// Socket is one line of /proc/net/tcp or /proc/net/tcp6.
//
// Addresses are unmapped: a dual-stack (AF_INET6) socket talking IPv4 shows
// as 127.0.0.1, not ::ffff:127.0.0.1, so one filter matches both tables.
type Socket struct {
	Local, Remote netip.AddrPort
	State         State
	Inode         uint64 // 0 for sockets no fd refers to (TIME_WAIT, orphans)
	TxQueue       uint32 // bytes not yet acked by the peer (LISTEN: 0)
	RxQueue       uint32 // bytes not yet read by the app (LISTEN: accept backlog)
	UID           uint32
}

// List returns every TCP socket (IPv4 and IPv6) of the current network
// namespace.
func List() ([]Socket, error) { return ReadFrom(DefaultDir) }

// ReadFrom is List reading the files tcp and tcp6 in procNetDir (such as
// "/proc/net", "/proc/<pid>/net" or a directory of fixtures). A missing tcp6
// (IPv6 disabled) is not an error. A socket the table shows twice is listed
// once (see CountFrom).
func ReadFrom(procNetDir string) ([]Socket, error) {
	var out []Socket
	seen := make(map[socketKey]struct{})
	err := walk(procNetDir, nativeLittle, func(s *Socket) {
		if firstSight(seen, s) {
			out = append(out, *s)
		}
	})
	return out, err
}

// socketKey tells sockets apart within one read of the tables: the
// four-tuple and the inode. reuse_port listeners share the tuple, and a
// TIME_WAIT socket (inode 0) is unique by its tuple.
type socketKey struct {
	local, remote netip.AddrPort
	inode         uint64
}

// firstSight records s in seen and reports whether it was not there yet.
func firstSight(seen map[socketKey]struct{}, s *Socket) bool {
	k := socketKey{s.Local, s.Remote, s.Inode}
	if _, dup := seen[k]; dup {
		return false
	}
	seen[k] = struct{}{}
	return true
}

// Count returns how many sockets of the current network namespace are in
// each state, among those that match (nil matches all). States with no
// socket are absent from the map.
func Count(match func(Socket) bool) (map[State]int, error) {
	return CountFrom(DefaultDir, match)
}

// CountFrom is Count reading procNetDir (see ReadFrom).
//
// A socket the table shows twice counts once. The kernel prints the table
// a page per read(2), and each read walks its hash chains again from a
// saved position: a socket that others' churn moves along a chain can be
// printed twice, or skipped. Skips cannot be undone, which is why WaitFor
// polls.
func CountFrom(procNetDir string, match func(Socket) bool) (map[State]int, error) {
	var counts [NumStates]int
	var unknown map[State]int
	seen := make(map[socketKey]struct{})
	err := walk(procNetDir, nativeLittle, func(s *Socket) {
		if match != nil && !match(*s) || !firstSight(seen, s) {
			return
		}
		if s.State.Valid() {
			counts[s.State]++
			return
		}
		if unknown == nil {
			unknown = make(map[State]int)
		}
		unknown[s.State]++
	})
	if err != nil {
		return nil, err
	}
	out := make(map[State]int, NumStates+len(unknown))
	for st, n := range counts[:NumStates] {
		if n > 0 {
			out[State(st)] = n
		}
	}
	for st, n := range unknown {
		out[st] = n
	}
	return out, nil
}

// PollInterval is how often WaitFor reads the socket tables.
const PollInterval = 10 * time.Millisecond

// DefaultWaitTimeout bounds WaitFor when ctx has no deadline, so a test that
// forgot one still ends.
const DefaultWaitTimeout = 10 * time.Second

// WaitFor counts the matching sockets (see Count) every PollInterval until
// cond holds for the counts, and returns those counts. When ctx ends first
// it returns the last counts and an error that wraps ctx.Err() and shows
// them; a read error is returned at once.
func WaitFor(ctx context.Context, match func(Socket) bool, cond func(map[State]int) bool) (map[State]int, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultWaitTimeout)
		defer cancel()
	}
	tick := time.NewTicker(PollInterval)
	defer tick.Stop()
	for {
		counts, err := Count(match)
		if err != nil {
			return nil, err
		}
		if cond(counts) {
			return counts, nil
		}
		select {
		case <-ctx.Done():
			return counts, fmt.Errorf("sockstate: waited for a condition, last counts %v: %w", counts, ctx.Err())
		case <-tick.C:
		}
	}
}

// LocalPort matches sockets whose local port is p.
func LocalPort(p uint16) func(Socket) bool {
	return func(s Socket) bool { return s.Local.Port() == p }
}

// RemotePort matches sockets whose remote port is p.
func RemotePort(p uint16) func(Socket) bool {
	return func(s Socket) bool { return s.Remote.Port() == p }
}

// Port matches sockets with p on either end.
func Port(p uint16) func(Socket) bool {
	return func(s Socket) bool { return s.Local.Port() == p || s.Remote.Port() == p }
}

// End matches sockets with ap (address and port; may be IPv4-mapped) at
// either end: a listener's address matches its accepted connections and
// the clients connected to it, and none of another address's.
func End(ap netip.AddrPort) func(Socket) bool {
	ap = unmap(ap)
	return func(s Socket) bool { return s.Local == ap || s.Remote == ap }
}

// Conn matches the one socket with these local and remote ends (either may
// be IPv4-mapped; see Socket).
func Conn(local, remote netip.AddrPort) func(Socket) bool {
	local, remote = unmap(local), unmap(remote)
	return func(s Socket) bool { return s.Local == local && s.Remote == remote }
}

// Ends are one connection's two ends as one side sees them.
type Ends struct{ Local, Remote netip.AddrPort }

// EndsOf returns the ends of c, a TCP connection, as its side sees them.
func EndsOf(c net.Conn) Ends {
	return Ends{Local: c.LocalAddr().(*net.TCPAddr).AddrPort(), Remote: c.RemoteAddr().(*net.TCPAddr).AddrPort()}
}

// Peer returns the ends as the other side of the connection sees them.
func (e Ends) Peer() Ends { return Ends{Local: e.Remote, Remote: e.Local} }

// Conns matches the sockets with exactly these ends (either address may be
// IPv4-mapped). Tests that count states should match whole four-tuples, not
// ports: Linux hands the same ephemeral port to connections towards
// different peers, and a listener may get a port whose old connections
// still linger in TIME_WAIT, so a port alone can match another test's
// sockets.
func Conns(ends ...Ends) func(Socket) bool {
	set := make(map[Ends]bool, len(ends))
	for _, e := range ends {
		set[Ends{unmap(e.Local), unmap(e.Remote)}] = true
	}
	return func(s Socket) bool { return set[Ends{s.Local, s.Remote}] }
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// Either matches sockets that any of fs matches (none: no socket).
func Either(fs ...func(Socket) bool) func(Socket) bool {
	return func(s Socket) bool {
		for _, f := range fs {
			if f(s) {
				return true
			}
		}
		return false
	}
}

// Every matches sockets that all of fs match (none: every socket).
func Every(fs ...func(Socket) bool) func(Socket) bool {
	return func(s Socket) bool {
		for _, f := range fs {
			if !f(s) {
				return false
			}
		}
		return true
	}
}

// readers holds 64 KiB bufio.Readers: a 20,000-socket table is ~3 MB, and a
// large buffer means fewer read(2) calls, each of which makes the kernel
// walk its hash tables again from the saved position.
var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 64<<10) }}

// walk calls fn for each socket in dir/tcp and dir/tcp6. fn must not keep s.
// littleEndian says how the kernel printed 32-bit address words: in the
// host's order (nativeLittle).
func walk(dir string, littleEndian bool, fn func(s *Socket)) error {
	for _, name := range [...]string{"tcp", "tcp6"} {
		path := filepath.Join(dir, name)
		f, err := os.Open(path)
		if err != nil {
			if name == "tcp6" && errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return fmt.Errorf("sockstate: %w", err)
		}
		err = walkFile(f, path, littleEndian, fn)
		f.Close() // read-only: nothing to lose
		if err != nil {
			return err
		}
	}
	return nil
}

func walkFile(f io.Reader, path string, littleEndian bool, fn func(s *Socket)) error {
	br := readers.Get().(*bufio.Reader)
	br.Reset(f)
	defer func() {
		br.Reset(nil)
		readers.Put(br)
	}()
	var s Socket
	for lineNo := 1; ; lineNo++ {
		line, err := br.ReadSlice('\n')
		if err != nil && err != io.EOF {
			if err == bufio.ErrBufferFull {
				return fmt.Errorf("%w: %s:%d: longer than %d bytes", ErrMalformed, path, lineNo, br.Size())
			}
			return fmt.Errorf("sockstate: reading %s: %w", path, err)
		}
		if lineNo > 1 && len(trimSpace(line)) > 0 { // line 1 is the header
			if perr := parseLine(line, littleEndian, &s); perr != nil {
				return fmt.Errorf("%w: %s:%d: %v", ErrMalformed, path, lineNo, perr)
			}
			fn(&s)
		}
		if err == io.EOF {
			return nil
		}
	}
}

// parseLine parses one table line:
//
//	sl  local_address rem_address   st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...
//	0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 1000 0 12345 1 ...
func parseLine(line []byte, littleEndian bool, s *Socket) error {
	var f [10][]byte
	rest := line
	for i := range f {
		f[i], rest = nextField(rest)
		if len(f[i]) == 0 {
			return fmt.Errorf("%d fields, want at least %d", i, len(f))
		}
	}
	var err error
	if s.Local, err = parseAddrPort(f[1], littleEndian); err != nil {
		return fmt.Errorf("local address %q: %v", f[1], err)
	}
	if s.Remote, err = parseAddrPort(f[2], littleEndian); err != nil {
		return fmt.Errorf("remote address %q: %v", f[2], err)
	}
	st, ok := parseHex(f[3])
	if !ok || st > 0xff {
		return fmt.Errorf("state %q", f[3])
	}
	s.State = State(st)
	tx, rx, ok := cut(f[4], ':')
	txv, ok1 := parseHex(tx)
	rxv, ok2 := parseHex(rx)
	if !ok || !ok1 || !ok2 || txv > 0xffffffff || rxv > 0xffffffff {
		return fmt.Errorf("queues %q", f[4])
	}
	s.TxQueue, s.RxQueue = uint32(txv), uint32(rxv)
	uid, ok := parseDec(f[7])
	if !ok || uid > 0xffffffff {
		return fmt.Errorf("uid %q", f[7])
	}
	s.UID = uint32(uid)
	if s.Inode, ok = parseDec(f[9]); !ok {
		return fmt.Errorf("inode %q", f[9])
	}
	return nil
}

// parseAddrPort parses "0100007F:1F90" (IPv4) or 32 hex digits and a port
// (IPv6). The kernel prints each 32-bit word of the address as a number in
// host byte order, and the port as a number.
func parseAddrPort(b []byte, littleEndian bool) (netip.AddrPort, error) {
	hexAddr, hexPort, ok := cut(b, ':')
	port, okp := parseHex(hexPort)
	if !ok || !okp || len(hexPort) != 4 {
		return netip.AddrPort{}, errors.New("bad port")
	}
	var a [16]byte
	switch len(hexAddr) {
	case 8, 32:
	default:
		return netip.AddrPort{}, errors.New("bad address length")
	}
	for i := 0; i < len(hexAddr)/8; i++ {
		w, ok := parseHex(hexAddr[i*8 : i*8+8])
		if !ok {
			return netip.AddrPort{}, errors.New("bad hex")
		}
		if littleEndian {
			binary.LittleEndian.PutUint32(a[i*4:], uint32(w))
		} else {
			binary.BigEndian.PutUint32(a[i*4:], uint32(w))
		}
	}
	var addr netip.Addr
	if len(hexAddr) == 8 {
		addr = netip.AddrFrom4([4]byte(a[:4]))
	} else {
		addr = netip.AddrFrom16(a).Unmap()
	}
	return netip.AddrPortFrom(addr, uint16(port)), nil
}

func nextField(b []byte) (field, rest []byte) {
	i := 0
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	j := i
	for j < len(b) && !isSpace(b[j]) {
		j++
	}
	return b[i:j], b[j:]
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func trimSpace(b []byte) []byte {
	f, _ := nextField(b)
	return f
}

func cut(b []byte, sep byte) (before, after []byte, found bool) {
	for i, c := range b {
		if c == sep {
			return b[:i], b[i+1:], true
		}
	}
	return b, nil, false
}

// parseHex parses up to 16 hex digits.
func parseHex(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 16 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		d := hexVal[c]
		if d > 15 {
			return 0, false
		}
		v = v<<4 | uint64(d)
	}
	return v, true
}

// parseDec parses up to 19 decimal digits (no overflow possible).
func parseDec(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 19 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + uint64(c-'0')
	}
	return v, true
}

var nativeLittle = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

var hexVal = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = byte(c - '0')
	}
	for c := 'a'; c <= 'f'; c++ {
		t[c] = byte(c-'a') + 10
		t[c-'a'+'A'] = byte(c-'a') + 10
	}
	return t
}()
