package netns

import (
	"errors"
	"net"
	"os"
	"slices"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/unstuck-proxy/unstuck/internal/sockstate"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// In its own namespace a test sees only its own sockets, on a loopback
// that is up, in a namespace other than the one that started it.
func TestIsolated(t *testing.T) {
	if !Isolated(t) {
		return
	}
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if self == os.Getenv(envParent) {
		t.Fatalf("namespace %s is the parent's", self)
	}
	if socks, err := sockstate.List(); err != nil || len(socks) != 0 {
		t.Fatalf("a new namespace lists sockets %v (%v); want none", socks, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("lo is not up: %v", err)
	}
	defer c.Close()
	counts, err := sockstate.Count(nil)
	if err != nil {
		t.Fatal(err)
	}
	if counts[sockstate.Listen] != 1 || counts[sockstate.Established]+counts[sockstate.SynRecv] != 2 {
		t.Fatalf("sockets %v; want the test's listener and its one connection, nothing else", counts)
	}
}

// Subtests isolate on their own, with a pattern that matches only them.
func TestIsolatedSubtest(t *testing.T) {
	for _, name := range []string{"a b", "a+b"} {
		t.Run(name, func(t *testing.T) {
			if !Isolated(t) {
				return
			}
			if os.Getenv(envParent) == "" {
				t.Fatal("not re-run")
			}
		})
	}
}

// Blackhole drops one port's packets silently (a dial times out, it is
// not refused) and leaves the others alone.
func TestBlackhole(t *testing.T) {
	if !Isolated(t) {
		return
	}
	open, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	dropped, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer dropped.Close()
	Blackhole(t, uint16(dropped.Addr().(*net.TCPAddr).Port))
	if c, err := net.DialTimeout("tcp", open.Addr().String(), 5*time.Second); err != nil {
		t.Fatalf("port not blackholed: %v", err)
	} else {
		c.Close()
	}
	c, err := net.DialTimeout("tcp", dropped.Addr().String(), 300*time.Millisecond)
	var ne net.Error
	if err == nil || !errors.As(err, &ne) || !ne.Timeout() {
		if c != nil {
			c.Close()
		}
		t.Fatalf("dial to the blackholed port: %v; want a timeout", err)
	}
}

func TestRunPattern(t *testing.T) {
	for _, tc := range []struct{ name, want string }{
		{"TestA", `^TestA$`},
		{"TestA/b+c", `^TestA$/^b\+c$`},
	} {
		if got := runPattern(tc.name); got != tc.want {
			t.Errorf("runPattern(%q) = %q; want %q", tc.name, got, tc.want)
		}
	}
}

func TestPassOn(t *testing.T) {
	got := passOn([]string{"-test.run=X", "-test.count=3", "-test.v=test2json", "-test.short=true",
		"-test.paniconexit0", "-test.timeout=10m0s", "-test.coverprofile=c.out", "-soak.duration=1s"})
	want := []string{"-test.short=true", "-test.paniconexit0", "-soak.duration=1s"}
	if !slices.Equal(got, want) {
		t.Fatalf("passOn = %q; want %q", got, want)
	}
	// A test flag's value as the next argument is dropped with it: left
	// in, it would end the child's flags before -soak.duration.
	got = passOn([]string{"-test.run", "TestChaosSoak", "-test.v", "-soak.duration", "12m", "-test.timeout", "30m"})
	want = []string{"-soak.duration", "12m"}
	if !slices.Equal(got, want) {
		t.Fatalf("passOn = %q; want %q", got, want)
	}
}
