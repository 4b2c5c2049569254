package admin

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// exhaustedEnv makes the test binary, re-executed by
// TestHealthzWithDescriptorsExhausted, run the admin server with every
// file descriptor taken (see exhaustedChild).
const exhaustedEnv = "UNSTUCK_TEST_ADMIN_EXHAUSTED"

// With every file descriptor of the process taken, /healthz still answers
// 200, twice in a row (the reserve is back after the first connection).
// The exhaustion runs in a child process: a low RLIMIT_NOFILE would starve
// the whole test binary. This process probes it, as a kubelet would.
func TestHealthzWithDescriptorsExhausted(t *testing.T) {
	if os.Getenv(exhaustedEnv) != "" {
		exhaustedChild(t)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHealthzWithDescriptorsExhausted$", "-test.count=1")
	cmd.Env = append(os.Environ(), exhaustedEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := false
	defer func() {
		if !exited {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()

	addr := make(chan string, 1)
	output := make(chan string, 1) // the child's test output, once it ends
	go func() {
		var out strings.Builder
		defer func() { output <- out.String() }()
		defer close(addr)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "exhausted "); ok {
				addr <- a
				break
			}
			fmt.Fprintln(&out, sc.Text())
		}
		io.Copy(&out, stdout)
	}()
	var a string
	select {
	case a = <-addr:
	case <-time.After(30 * time.Second):
		t.Fatalf("child not ready within 30s\n%s", stderr.String())
	}
	if a == "" {
		out := <-output
		cmd.Wait()
		exited = true
		t.Fatalf("child ended before it was ready\n%s%s", out, stderr.String())
	}

	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for i := range 2 {
		resp, err := client.Get("http://" + a + "/healthz")
		if err != nil {
			t.Fatalf("probe %d with the child's descriptors exhausted: %v", i+1, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "ok\n" {
			t.Fatalf("probe %d: %d %q; want 200 \"ok\\n\"", i+1, resp.StatusCode, body)
		}
	}
	stdin.Close() // the child cleans up and exits
	out := <-output
	err = cmd.Wait()
	exited = true
	if err != nil {
		t.Fatalf("child: %v\n%s%s", err, out, stderr.String())
	}
}

// exhaustedChild starts the admin server, lowers RLIMIT_NOFILE, opens
// files until EMFILE, says where it listens, and serves until its stdin
// closes.
func exhaustedChild(t *testing.T) {
	s := New(Config{})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(t.Context())

	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	open, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	limit := unix.Rlimit{Cur: uint64(len(open) + 64), Max: old.Max}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &limit); err != nil {
		t.Fatal(err)
	}
	var hoard []*os.File
	defer func() {
		for _, f := range hoard {
			f.Close()
		}
	}()
	for range limit.Cur { // bounded: the limit is reached first
		f, err := os.Open(os.DevNull)
		if errors.Is(err, syscall.EMFILE) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		hoard = append(hoard, f)
	}
	if _, err := os.Open(os.DevNull); !errors.Is(err, syscall.EMFILE) {
		t.Fatalf("descriptors not exhausted: %v", err)
	}
	fmt.Printf("exhausted %s\n", s.Addr())
	io.Copy(io.Discard, os.Stdin) // until the parent closes it
}
