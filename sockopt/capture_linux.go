package sockopt

import (
	"encoding/binary"
	"net/netip"

	"golang.org/x/sys/unix"
)

// ip6tSoOriginalDst is IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h).
const ip6tSoOriginalDst = 80

// OriginalDst returns the address an accepted connection was made to
// before NAT redirected it (REDIRECT, DNAT), from conntrack:
// SO_ORIGINAL_DST, or IP6T_SO_ORIGINAL_DST with ipv6. ipv6 is the family
// of the connection, not of the socket: an IPv4 connection on a
// dual-stack socket (a v4-mapped local address) is ipv6 false. A
// connection that was not redirected gets its own local address; one
// conntrack does not know (no NAT table anywhere in the namespace) gets
// ENOENT.
func OriginalDst(fd int, ipv6 bool) (netip.AddrPort, error) {
	if ipv6 {
		info, err := unix.GetsockoptIPv6MTUInfo(fd, unix.IPPROTO_IPV6, ip6tSoOriginalDst) // a sockaddr_in6 and room to spare
		if err != nil {
			return netip.AddrPort{}, err
		}
		return netip.AddrPortFrom(netip.AddrFrom16(info.Addr.Addr), netToHost(info.Addr.Port)), nil
	}
	mreq, err := unix.GetsockoptIPv6Mreq(fd, unix.IPPROTO_IP, unix.SO_ORIGINAL_DST) // 20 bytes: a sockaddr_in fits
	if err != nil {
		return netip.AddrPort{}, err
	}
	sin := mreq.Multiaddr // family (2 bytes, host order), port (2, network order), address (4)
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(sin[4:8])), binary.BigEndian.Uint16(sin[2:4])), nil
}

// netToHost turns a port as a sockaddr holds it (network byte order, read
// as a host integer) into its value.
func netToHost(p uint16) uint16 {
	return binary.BigEndian.Uint16(binary.NativeEndian.AppendUint16(nil, p))
}

// SetMark sets SO_MARK, which the capture rules' mark exclusion matches:
// connections so marked are never captured. It needs CAP_NET_ADMIN.
func SetMark(fd int, mark uint32) error {
	return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(mark))
}
