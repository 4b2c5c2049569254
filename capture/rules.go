package capture

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Table is the nftables table (family inet) that Install writes and Remove
// deletes; Chain is its one chain.
const (
	Table = "unstuck"
	Chain = "output"
)

// The table's named sets, empty ones left out.
const (
	setPorts        = "ports"
	setExcludePorts = "exclude_ports"
	setExcludeUIDs  = "exclude_uids"
)

// Rules says which of the app's outbound TCP connections are redirected to
// the capture listener. A connection is captured when its destination port
// is in Ports (or Ports is empty) and its destination address is in CIDRs
// (or CIDRs is empty), of a family captured, and nothing excludes it. The
// rules sit in the nat output hook, so they see connections made in this
// network namespace, to loopback destinations too, and never forwarded or
// incoming ones.
type Rules struct {
	// Port is the capture listener's. A captured connection is redirected
	// (REDIRECT) to it on the loopback address of its family, 127.0.0.1 or
	// ::1; connections to Port itself are never captured.
	Port uint16
	// IPv4 and IPv6 are the families captured: those the listener accepts.
	IPv4, IPv6 bool

	Ports []uint16       // destination ports captured; empty: any
	CIDRs []netip.Prefix // destinations captured; empty: any address

	ExcludePorts []uint16 // destination ports never captured
	// ExcludeUIDs and ExcludeMark say which connections are unstuck's own
	// (its UID, or a socket mark it sets): they are never captured, or
	// unstuck would capture its own connections to the destinations.
	ExcludeUIDs []uint32
	ExcludeMark uint32 // 0: none
}

// Check says what is wrong with r, if anything.
func (r Rules) Check() error {
	var errs []error
	if r.Port == 0 {
		errs = append(errs, errors.New("no capture listener port"))
	}
	if !r.IPv4 && !r.IPv6 {
		errs = append(errs, errors.New("neither IPv4 nor IPv6 captured"))
	}
	if len(r.Ports) == 0 && len(r.CIDRs) == 0 {
		errs = append(errs, errors.New("no ports and no cidrs: refusing to capture every connection"))
	}
	if len(r.ExcludeUIDs) == 0 && r.ExcludeMark == 0 {
		errs = append(errs, errors.New("no exclude_uids and no mark: unstuck's own connections would be captured again"))
	}
	for _, p := range r.CIDRs {
		if !p.IsValid() || p != p.Masked() {
			errs = append(errs, fmt.Errorf("cidr %s: not a network address", p))
		} else if p.Addr().Is4() && !r.IPv4 || p.Addr().Is6() && !r.IPv6 {
			errs = append(errs, fmt.Errorf("cidr %s: its family is not captured (the capture listener does not accept it)", p))
		}
	}
	if slices.Contains(r.Ports, 0) || slices.Contains(r.ExcludePorts, 0) {
		errs = append(errs, errors.New("port 0"))
	}
	return errors.Join(errs...)
}

// Install replaces the table with r's rules, in one transaction: the old
// rules stay until the new ones are in, and installing the same r twice
// leaves the same rules. It needs CAP_NET_ADMIN in the current network
// namespace.
func Install(r Rules) error {
	if err := r.Check(); err != nil {
		return fmt.Errorf("capture rules: %w", err)
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("capture rules: nftables: %w", err)
	}
	t := table()
	c.AddTable(t) // so that the delete finds one
	c.DelTable(t)
	c.AddTable(t)
	sets, err := addSets(c, t, r)
	if err != nil {
		return fmt.Errorf("capture rules: %w", err)
	}
	policy := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{
		Name:     Chain,
		Table:    t,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookOutput,
		Priority: nftables.ChainPriorityNATDest,
		Policy:   &policy,
	})
	for _, exprs := range ruleExprs(r, sets) {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: exprs})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("capture rules: installing table inet %s: %w", Table, err)
	}
	return nil
}

// Remove deletes the table, if there is one; nothing else is touched.
func Remove() error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("capture rules: nftables: %w", err)
	}
	t := table()
	c.AddTable(t) // an empty one if there was none: the delete cannot fail
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("capture rules: removing table inet %s: %w", Table, err)
	}
	return nil
}

func table() *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyINet, Name: Table}
}

// addSets adds r's non-empty sets to t, by name.
func addSets(c *nftables.Conn, t *nftables.Table, r Rules) (map[string]*nftables.Set, error) {
	sets := map[string]*nftables.Set{}
	add := func(name string, typ nftables.SetDatatype, order binaryutil.ByteOrder, keys [][]byte) error {
		if len(keys) == 0 {
			return nil
		}
		s := &nftables.Set{Table: t, Name: name, KeyType: typ, KeyByteOrder: order}
		elems := make([]nftables.SetElement, len(keys))
		for i, k := range keys {
			elems[i] = nftables.SetElement{Key: k}
		}
		if err := c.AddSet(s, elems); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
		sets[name] = s
		return nil
	}
	return sets, errors.Join(
		add(setPorts, nftables.TypeInetService, binaryutil.BigEndian, portKeys(r.Ports)),
		add(setExcludePorts, nftables.TypeInetService, binaryutil.BigEndian, portKeys(r.ExcludePorts)),
		add(setExcludeUIDs, nftables.TypeUID, binaryutil.NativeEndian, uidKeys(r.ExcludeUIDs)),
	)
}

func portKeys(ports []uint16) [][]byte {
	var keys [][]byte
	for _, p := range uniq(ports) {
		keys = append(keys, binaryutil.BigEndian.PutUint16(p))
	}
	return keys
}

func uidKeys(uids []uint32) [][]byte {
	var keys [][]byte
	for _, u := range uniq(uids) {
		keys = append(keys, binaryutil.NativeEndian.PutUint32(u))
	}
	return keys
}

func uniq[T uint16 | uint32](xs []T) []T {
	xs = slices.Clone(xs)
	slices.Sort(xs)
	return slices.Compact(xs)
}

// ruleExprs returns the chain's rules in order; String writes the same in
// nft's syntax. Each exclusion returns (the connection goes on untouched);
// a connection that passes them all and matches a family (and a CIDR, if
// there are any) is redirected.
func ruleExprs(r Rules, sets map[string]*nftables.Set) [][]expr.Any {
	var rules [][]expr.Any
	ret := &expr.Verdict{Kind: expr.VerdictReturn}
	rules = append(rules, []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		ret,
	}, append(dport(), &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(r.Port)}, ret))
	if s := sets[setExcludeUIDs]; s != nil {
		rules = append(rules, []expr.Any{
			&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
			&expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID},
			ret,
		})
	}
	if r.ExcludeMark != 0 {
		rules = append(rules, []expr.Any{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(r.ExcludeMark)},
			ret,
		})
	}
	if s := sets[setExcludePorts]; s != nil {
		rules = append(rules, append(dport(), &expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID}, ret))
	}
	if s := sets[setPorts]; s != nil {
		rules = append(rules, append(dport(), &expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID, Invert: true}, ret))
	}
	redirect := []expr.Any{
		&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(r.Port)},
		&expr.Redir{RegisterProtoMin: 1, Flags: unix.NF_NAT_RANGE_PROTO_SPECIFIED},
	}
	for _, fam := range families(r) {
		match := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{fam.proto}},
		}
		if len(r.CIDRs) == 0 {
			rules = append(rules, concat(match, redirect))
			continue
		}
		for _, p := range r.CIDRs {
			if p.Addr().Is4() == (fam.proto == unix.NFPROTO_IPV4) {
				rules = append(rules, concat(match, daddrIn(p, fam.daddrOffset), redirect))
			}
		}
	}
	return rules
}

type family struct {
	name        string // as nft writes it
	proto       byte   // NFPROTO_*
	daddrOffset uint32 // of the destination address in the network header
}

var (
	ipv4 = family{"ip", unix.NFPROTO_IPV4, 16}
	ipv6 = family{"ip6", unix.NFPROTO_IPV6, 24}
)

func families(r Rules) []family {
	var fs []family
	if r.IPv4 {
		fs = append(fs, ipv4)
	}
	if r.IPv6 {
		fs = append(fs, ipv6)
	}
	return fs
}

// dport loads the TCP destination port into register 1.
func dport() []expr.Any {
	return []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}}
}

// daddrIn matches a destination address in p; a full-length prefix is a
// plain comparison, as nft writes it.
func daddrIn(p netip.Prefix, offset uint32) []expr.Any {
	n := uint32(p.Addr().BitLen() / 8)
	e := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: n}}
	if p.Bits() < p.Addr().BitLen() {
		e = append(e, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: n, Mask: maskBytes(p), Xor: make([]byte, n)})
	}
	return append(e, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Addr().AsSlice()})
}

// maskBytes returns the network mask of p's length, in p's family's size.
func maskBytes(p netip.Prefix) []byte {
	b := make([]byte, p.Addr().BitLen()/8)
	for i := range p.Bits() {
		b[i/8] |= 0x80 >> (i % 8)
	}
	return b
}

func concat(parts ...[]expr.Any) []expr.Any {
	var e []expr.Any
	for _, p := range parts {
		e = append(e, p...)
	}
	return e
}

// String writes r as the table nft would list, for logs and for people.
func (r Rules) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n", Table)
	set := func(name, typ string, elems []string) {
		if len(elems) > 0 {
			fmt.Fprintf(&b, "\tset %s {\n\t\ttype %s\n\t\telements = { %s }\n\t}\n", name, typ, strings.Join(elems, ", "))
		}
	}
	set(setPorts, "inet_service", itoa(uniq(r.Ports)))
	set(setExcludePorts, "inet_service", itoa(uniq(r.ExcludePorts)))
	set(setExcludeUIDs, "uid", itoa(uniq(r.ExcludeUIDs)))
	fmt.Fprintf(&b, "\tchain %s {\n\t\ttype nat hook output priority dstnat; policy accept;\n", Chain)
	line := func(s string) { b.WriteString("\t\t" + s + "\n") }
	line("meta l4proto != tcp return")
	line(fmt.Sprintf("tcp dport %d return", r.Port))
	if len(r.ExcludeUIDs) > 0 {
		line("meta skuid @" + setExcludeUIDs + " return")
	}
	if r.ExcludeMark != 0 {
		line(fmt.Sprintf("meta mark %#x return", r.ExcludeMark))
	}
	if len(r.ExcludePorts) > 0 {
		line("tcp dport @" + setExcludePorts + " return")
	}
	if len(r.Ports) > 0 {
		line("tcp dport != @" + setPorts + " return")
	}
	for _, fam := range families(r) {
		if len(r.CIDRs) == 0 {
			line(fmt.Sprintf("meta nfproto %s redirect to :%d", map[byte]string{unix.NFPROTO_IPV4: "ipv4", unix.NFPROTO_IPV6: "ipv6"}[fam.proto], r.Port))
		}
		for _, p := range r.CIDRs {
			if p.Addr().Is4() == (fam.proto == unix.NFPROTO_IPV4) {
				line(fmt.Sprintf("%s daddr %s redirect to :%d", fam.name, p, r.Port))
			}
		}
	}
	b.WriteString("\t}\n}\n")
	return b.String()
}

func itoa[T uint16 | uint32](xs []T) []string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.FormatUint(uint64(x), 10)
	}
	return s
}
