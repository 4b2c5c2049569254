// Package netns runs a test in a network namespace of its own, for tests
// that count socket states: there /proc/net/tcp lists the test's sockets
// and no one else's, and no other test's connections take its ports or
// take over its TIME_WAIT sockets, so counts can be exact.
//
// Creating a network namespace needs CAP_SYS_ADMIN (root). Without it the
// tests that ask for one are skipped, saying so; as root they always run.
// Nothing here needs a binary: the re-run uses clone(2) with CLONE_NEWNET,
// the loopback comes up through an ioctl, and Blackhole writes nftables
// rules over netlink.
package netns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// envParent holds, in the re-run test binary, the network namespace of
// the process that started it ("net:[inode]"). A process whose own
// namespace differs is isolated.
const envParent = "UNSTUCK_TEST_NETNS_PARENT"

// why is the first half of the skip message.
const why = "this test runs in a network namespace of its own (it counts socket states, or drops packets)"

// EnvNoNetns, set to any value, makes Isolated skip as it does without
// CAP_SYS_ADMIN: how to see a non-root run's skips as root.
const EnvNoNetns = "UNSTUCK_TEST_NO_NETNS"

// Isolated reports whether the calling test runs in a network namespace of
// its own. If not, it runs the test again in a new one and reports false:
// the test binary re-executes itself with -test.run matching only this
// test, in a new network namespace whose loopback is up, and that run's
// output and result become this test's. The caller returns at once:
//
//	if !netns.Isolated(t) {
//		return
//	}
//
// Everything the test does, from its first line to its cleanups, then
// happens in the namespace, processes it starts included. A test that
// calls t.Parallel first has its re-run run beside the other parallel
// tests.
//
// Without CAP_SYS_ADMIN (not root), or with UNSTUCK_TEST_NO_NETNS set, the
// test is skipped. As root, a namespace that cannot be made fails the
// test.
func Isolated(t *testing.T) bool {
	t.Helper()
	if inside(t) {
		if err := loopbackUp(); err != nil {
			t.Fatalf("netns: bringing up lo in the test's namespace: %v", err)
		}
		return true
	}
	if os.Getenv(EnvNoNetns) != "" {
		t.Skipf("netns: %s; %s is set", why, EnvNoNetns)
	}
	rerun(t)
	return false
}

// inside reports whether this process runs in a namespace its parent test
// binary made for it.
func inside(t *testing.T) bool {
	t.Helper()
	parent := os.Getenv(envParent)
	if parent == "" {
		return false
	}
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatalf("netns: %v", err)
	}
	if self == parent {
		t.Fatalf("netns: %s=%s names this process's own namespace: not isolated", envParent, parent)
	}
	return true
}

// rerun runs t's test alone in a new network namespace and reports its
// result as t's.
func rerun(t *testing.T) {
	t.Helper()
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatalf("netns: %v", err)
	}
	args := []string{"-test.run=" + runPattern(t.Name()), "-test.count=1", "-test.v"}
	ctx := context.Background()
	if d, ok := t.Deadline(); ok {
		// The child panics with its goroutines a little before the
		// parent's own deadline would.
		left := time.Until(d) * 9 / 10
		args = append(args, "-test.timeout="+left.String())
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, d)
		defer cancel()
	}
	args = append(args, passOn(os.Args[1:])...)
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = append(os.Environ(), envParent+"="+self)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		if errors.Is(err, syscall.EPERM) && os.Geteuid() != 0 {
			t.Skipf("netns: %s, and creating one needs root (CAP_SYS_ADMIN); uid %d: %v", why, os.Geteuid(), err)
		}
		t.Fatalf("netns: re-running the test in a new network namespace: %v", err)
	}
	err = cmd.Wait()
	res := result(t.Name(), out.String())
	switch {
	case err != nil:
		t.Fatalf("in its own network namespace: %v\n%s", err, out.String())
	case res == "SKIP":
		t.Skipf("in its own network namespace:\n%s", out.String())
	case res != "PASS":
		t.Fatalf("in its own network namespace the test did not run (%s):\n%s", cmd, out.String())
	}
	t.Logf("in its own network namespace:\n%s", out.String())
}

// runPattern is a -test.run pattern that matches name and nothing else.
func runPattern(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	return strings.Join(parts, "/")
}

// result is "PASS", "FAIL" or "SKIP" as -test.v output reports the test
// name, or "" if it does not.
func result(name, out string) string {
	m := regexp.MustCompile(`(?m)^\s*--- (PASS|FAIL|SKIP): ` + regexp.QuoteMeta(name) + ` \(`).FindStringSubmatch(out)
	if m == nil {
		return ""
	}
	return m[1]
}

// passOn returns the arguments of the test binary the re-run keeps: the
// package's own flags and -test.short, -test.paniconexit0. Not the run
// selection, counts, profiles or output files, which belong to the
// parent.
func passOn(args []string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(name, "test.") {
			out = append(out, a)
			continue
		}
		switch name {
		case "test.short", "test.paniconexit0":
			out = append(out, a)
		}
		// "-test.run X": the value is the next argument, and passed on it
		// would end the child's flags (a test's own flags after it, such
		// as -soak.duration, would be lost).
		if !strings.Contains(a, "=") && !testBoolFlags[name] {
			i++
		}
	}
	return out
}

// testBoolFlags are the testing package's flags that take no value.
var testBoolFlags = map[string]bool{
	"test.v": true, "test.short": true, "test.failfast": true, "test.paniconexit0": true,
	"test.benchmem": true, "test.fullpath": true,
}

// loopbackUp sets IFF_UP on lo, as `ip link set lo up` does: a new network
// namespace's loopback starts down, with 127.0.0.1/8 and ::1 once up.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("SIOCGIFFLAGS: %w", err)
	}
	if ifr.Uint16()&unix.IFF_UP != 0 {
		return nil
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("SIOCSIFFLAGS: %w", err)
	}
	return nil
}

// Blackhole silently drops every TCP packet that arrives in the test's
// namespace from or to port, or every packet at all with port 0: the
// senders' kernels see their packets leave and nothing come back, no FIN,
// no RST, no ICMP, as with a peer whose network blackholes it. It lasts
// until the namespace ends with the test. Only for a test in a namespace
// of its own (see Isolated): it fails the test otherwise.
func Blackhole(t *testing.T, port uint16) {
	t.Helper()
	if !inside(t) {
		t.Fatal("netns: Blackhole outside a namespace of the test's own would blackhole the host")
	}
	c, err := nftables.New()
	if err != nil {
		t.Fatalf("netns: nftables: %v", err)
	}
	policy := nftables.ChainPolicyAccept
	if port == 0 {
		policy = nftables.ChainPolicyDrop
	}
	table := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "blackhole"})
	chain := c.AddChain(&nftables.Chain{
		Name:     "input",
		Table:    table,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookInput,
		Priority: nftables.ChainPriorityFilter,
		Policy:   &policy,
	})
	if port != 0 {
		const sourcePort, destPort = 0, 2 // offsets in the TCP header
		for _, offset := range []uint32{sourcePort, destPort} {
			c.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: []expr.Any{
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: offset, Len: 2},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
				&expr.Verdict{Kind: expr.VerdictDrop},
			}})
		}
	}
	if err := c.Flush(); err != nil {
		t.Fatalf("netns: nftables drop rule for port %d: %v", port, err)
	}
}
