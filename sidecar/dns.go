package sidecar

import (
	"net"

	"github.com/unstuck-proxy/unstuck/config"
	"github.com/unstuck-proxy/unstuck/pool"
	"github.com/unstuck-proxy/unstuck/resolve"
)

// dnsResolver looks endpoint names up; nil: the system's resolver. Tests
// point it at a DNS server of their own before New.
var dnsResolver *net.Resolver

// startDNS keeps p's endpoints in step with DNS when upstream name gives
// an endpoint by name: every dns_refresh, each address of the name is an
// endpoint (resolve/). It returns what stops that, which returns once no
// more SetEndpoints can come; stop p's resolver before closing p. For an
// upstream of IP addresses only, stop does nothing.
func (s *Sidecar) startDNS(name string, u config.Upstream, p *pool.Pool) (stop func()) {
	if !resolve.HasNames(u.Endpoints) {
		return func() {}
	}
	return resolve.New(resolve.Config{
		Upstream:  name,
		Endpoints: u.Endpoints,
		Refresh:   u.DNSRefresh,
		Resolver:  dnsResolver,
		Set:       p.SetEndpoints,
		OnFailure: s.metrics.DNSErrors(name),
		Logger:    s.log,
	}).Start()
}
