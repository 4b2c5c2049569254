package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// Defaults of the healthcheck command.
const (
	healthcheckPath    = "/healthz"
	healthcheckTimeout = 2 * time.Second
	// healthcheckBodyMax caps how much of a failed answer's body is read
	// for the reason (/readyz says why on one short line).
	healthcheckBodyMax = 512
)

func newHealthcheckCmd(stdout, stderr io.Writer, environ []string) *cobra.Command {
	var (
		addr    string
		path    string
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "healthcheck",
		Short: "Exit 0 if the admin listener answers 200, else say why and exit 1",
		Long: `healthcheck sends GET http://ADDR/healthz (or --path) to a running
unstuck's admin listener and exits 0 on 200. On any other status, no
answer within --timeout, or a refused connection, it prints the reason and
exits 1. It is for images without a shell: Docker's HEALTHCHECK and
Kubernetes exec probes.

Without --addr it checks admin.listen of the configuration that
"unstuck" with the same --config and UNSTUCK_* environment would run
(by default 127.0.0.1:9901). An admin listener on 0.0.0.0 or [::] is
checked on loopback.`,
		Example: `  unstuck healthcheck
  unstuck healthcheck --config /etc/unstuck/config.yaml --path /readyz
  unstuck healthcheck --addr 127.0.0.1:9901`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !strings.HasPrefix(path, "/") {
				return fmt.Errorf("--path %q: want an absolute path such as /readyz", path)
			}
			if timeout <= 0 {
				return errors.New("--timeout must be positive")
			}
			if !cmd.Flags().Changed("addr") {
				cfg, err := loadConfig(cmd, stderr, environ)
				if err != nil {
					return err
				}
				if cfg.Admin.Listen == "" {
					fmt.Fprintln(stderr, `unstuck healthcheck: the admin listener is off (admin.listen is ""); nothing to check`)
					return exitError(exitFailed)
				}
				addr = cfg.Admin.Listen
			}
			target, err := healthcheckURL(addr, path)
			if err != nil {
				return err
			}
			if err := healthcheck(cmd.Context(), target, timeout); err != nil {
				fmt.Fprintf(stderr, "unstuck healthcheck: GET %s: %v\n", target, err)
				return exitError(exitFailed)
			}
			fmt.Fprintf(stdout, "ok: GET %s: 200\n", target)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&addr, "addr", "", "admin listener `HOST:PORT` to check (default: admin.listen of the configuration, 127.0.0.1:9901 unless it says otherwise)")
	f.StringVar(&path, "path", healthcheckPath, "`PATH` to GET, such as /readyz")
	f.DurationVar(&timeout, "timeout", healthcheckTimeout, "give up after this long")
	return cmd
}

// healthcheckURL returns the URL of path on the admin listener at addr. An
// unspecified host (0.0.0.0, ::, or none) means every interface, so the
// check goes to loopback.
func healthcheckURL(addr, path string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("admin address %q: want host:port: %w", addr, err)
	}
	if ip, err := netip.ParseAddr(host); host == "" || (err == nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
		if err == nil && ip.Is6() {
			host = "::1"
		}
	}
	u := url.URL{Scheme: "http", Host: net.JoinHostPort(host, port), Path: path}
	return u.String(), nil
}

// healthcheck sends one GET to target and returns nil if the answer is
// 200. Otherwise the error says why: the status and the first line of the
// body, or the connection's failure.
func healthcheck(ctx context.Context, target string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return err
	}
	client := &http.Client{
		// No proxy from the environment, no keep-alive: one request to a
		// local listener, then exit.
		Transport:     &http.Transport{Proxy: nil, DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("no answer within %v", timeout)
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the URL is already in the message
		}
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, healthcheckBodyMax)) // a cut body still says why
	reason := strings.TrimSpace(strings.SplitN(string(body), "\n", 2)[0])
	if reason == "" {
		return errors.New(resp.Status)
	}
	return fmt.Errorf("%s: %s", resp.Status, reason)
}
