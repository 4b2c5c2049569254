package config

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/unstuck-proxy/unstuck/sockopt"
)

// wants says how a value of each type is written, for messages. A struct
// type that is not here holds keys of its own.
var wants = map[reflect.Type]string{
	reflect.TypeFor[string]():         "a string",
	reflect.TypeFor[[]string]():       `a list such as ["127.0.0.1:9000"]`,
	reflect.TypeFor[int]():            "an integer",
	reflect.TypeFor[int64]():          "an integer",
	reflect.TypeFor[bool]():           "true or false",
	reflect.TypeFor[time.Duration]():  "a duration such as 2s",
	reflect.TypeFor[sockopt.Linger](): "graceful, reset or a duration such as 2s",
	reflect.TypeFor[os.FileMode]():    `an octal file mode such as "0660"`,
	reflect.TypeFor[netip.Addr]():     "an IP address such as 10.0.0.5",
	reflect.TypeFor[PortRange]():      "a port range such as 20000-29999",
	reflect.TypeFor[[]uint16]():       "a list of ports such as [5432, 6379]",
	reflect.TypeFor[[]uint32]():       "a list of user IDs such as [1337]",
	reflect.TypeFor[[]netip.Prefix](): `a list such as ["10.0.0.0/8", "127.0.0.5"]`,
	reflect.TypeFor[Percent]():        "a percentage such as 20%",
}

// field is one key with a value, relative to the top level, a listener or
// an upstream.
type field struct {
	key    string // "." separates levels
	index  []int  // of the struct field, for reflect's FieldByIndex
	typ    reflect.Type
	tag    reflect.StructTag
	want   string
	size   bool // an integer written as a size (kind:"size")
	def    string
	hasDef bool
}

// entries is listeners or upstreams: a map of names to settings.
type entries struct {
	key, what, example string // "listeners", "listener", "app"
	fields             []field
}

var (
	topFields, entryKinds = fieldsOf(reflect.TypeFor[Config](), "", nil)
	listenerFields        = entryKinds[0].fields
	upstreamFields        = entryKinds[1].fields
)

// fieldsOf returns the keys of struct t and of the structs it holds, each
// prefixed with prefix, and the maps of names to settings it holds.
func fieldsOf(t reflect.Type, prefix string, index []int) (fs []field, es []entries) {
	for i := range t.NumField() {
		sf := t.Field(i)
		f := field{key: prefix + sf.Tag.Get("key"), index: append(slices.Clip(index), i), typ: sf.Type, tag: sf.Tag, size: sf.Tag.Get("kind") == "size"}
		f.def, f.hasDef = sf.Tag.Lookup("default")
		f.want = cmp.Or(sf.Tag.Get("want"), map[string]string{"size": "a size such as 64KiB"}[sf.Tag.Get("kind")], wants[sf.Type])
		switch {
		case f.key == prefix:
		case sf.Type.Kind() == reflect.Map:
			inner, _ := fieldsOf(sf.Type.Elem(), "", nil)
			es = append(es, entries{f.key, strings.TrimSuffix(f.key, "s"), sf.Tag.Get("example"), inner})
		case f.want == "":
			inner, _ := fieldsOf(sf.Type, f.key+".", f.index)
			fs = append(fs, inner...)
		default:
			fs = append(fs, f)
		}
	}
	return fs, es
}

// fill sets every key of fields in the struct v to its default.
func fill(v reflect.Value, fields []field) {
	for _, f := range fields {
		if f.hasDef {
			x, _ := f.parse(f.def)
			v.FieldByIndex(f.index).Set(x)
		}
	}
}

// plainNumber is a number written without a unit, such as 90 or 0.5.
var plainNumber = regexp.MustCompile(`^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)$`)

// parse parses s, as written in the file or a variable, into a value of
// the field's type. The message, empty when s is good, quotes s. What is
// wrong with a value of the right type (a bound, a range) is left to check.
func (f field) parse(s string) (reflect.Value, string) {
	x, msg := reflect.Zero(f.typ).Interface(), ""
	var err error // s does not parse; without a message of its own, the one at the end
	switch x.(type) {
	case string:
		if x = s; f.tag.Get("oneof") != "" {
			x = strings.ToLower(s)
		}
	case []string:
		x = splitList(s)
	case []uint16, []uint32, []netip.Prefix:
		var msgs []string
		x = f.parseItems(splitList(s), func(_ int, m string) { msgs = append(msgs, m) }).Interface()
		msg = strings.Join(msgs, "; ")
	case uint16: // a port, an item of a list
		n, errN := strconv.ParseUint(s, 10, 16)
		if x = uint16(n); errN != nil || n == 0 {
			msg = fmt.Sprintf("%q is not a port; want 1 to 65535", s)
		}
	case uint32: // a user ID
		n, errN := strconv.ParseUint(s, 10, 32)
		if x = uint32(n); errN != nil {
			msg = fmt.Sprintf("%q is not a user ID; want 0 to 4294967295", s)
		}
	case netip.Prefix: // a CIDR, or an address alone
		p, errP := netip.ParsePrefix(s)
		if a, errA := netip.ParseAddr(s); errA == nil {
			p, errP = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
		}
		switch x = p; {
		case errP != nil:
			msg = fmt.Sprintf("%q is not an address or CIDR; want one such as 10.0.0.0/8 or 127.0.0.5", s)
		case p != p.Masked():
			msg = fmt.Sprintf("%q has bits set past its prefix length; want %s", s, p.Masked())
		}
	case int, int64:
		if f.size {
			x, msg = parseSize(s)
		} else if x, err = strconv.ParseInt(s, 10, 64); err != nil {
			msg = fmt.Sprintf("%q is not an integer", s)
		}
	case bool:
		x, err = strconv.ParseBool(s)
	case time.Duration:
		x, msg = parseDuration(s)
	case sockopt.Linger: // graceful, reset or a duration
		d, m := parseDuration(s)
		x, msg = sockopt.Linger{Mode: sockopt.Bounded, Timeout: d}, m
		if _, errD := time.ParseDuration(s); errD != nil && !plainNumber.MatchString(s) {
			msg, err = "", strconv.ErrSyntax // neither a duration nor a number
		}
		if mode, ok := map[string]sockopt.LingerMode{"graceful": sockopt.Graceful, "reset": sockopt.Reset}[strings.ToLower(s)]; ok {
			x, msg, err = sockopt.Linger{Mode: mode}, "", nil
		}
	case os.FileMode: // in octal, as for chmod: "0660" or "660"; check refuses more than 0777
		if x, _ = strconv.ParseUint(s, 8, 32); s == "" || strings.Trim(s, "01234567") != "" {
			msg = fmt.Sprintf("%q is not an octal file mode; want one such as 0660", s)
		}
	case netip.Addr: // "" is the zero Addr
		a, errA := netip.ParseAddr(s)
		x = a
		if _, errPort := netip.ParseAddrPort(s); s != "" && errA != nil && errPort == nil {
			msg = fmt.Sprintf("%q: want an IP address without a port (set ports with dial.source_ports)", s)
		} else if s != "" && errA != nil {
			msg = fmt.Sprintf("%q is not an IP address; want one such as 10.0.0.5 or 2001:db8::5", s)
		}
	case Percent: // "20%"
		n, ok := strings.CutSuffix(s, "%")
		if x, err = strconv.ParseInt(strings.TrimSpace(n), 10, 64); err == nil && !ok {
			msg = fmt.Sprintf("%q: want a percentage with its sign, such as %s%%", s, s)
		}
	case PortRange: // "lo-hi"; "" is the zero PortRange
		lo, hi, _ := strings.Cut(s, "-")
		a, errA := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
		b, errB := strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
		switch x, err = (PortRange{uint16(a), uint16(b)}), errors.Join(errA, errB); {
		case s == "":
			err = nil
		case errors.Is(err, strconv.ErrRange) && !errors.Is(err, strconv.ErrSyntax):
			msg = fmt.Sprintf("%q: port out of range (want 1-65535)", s)
		}
	}
	if err != nil && msg == "" {
		msg = fmt.Sprintf("%q: want %s", s, f.want)
	}
	return reflect.ValueOf(x).Convert(f.typ), msg
}

// splitList splits a list written in one string (a variable), at commas
// or spaces.
func splitList(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' })
}

// parseItems parses the items of a list of f's type, tells bad of each
// one that does not parse, and returns the list of the others.
func (f field) parseItems(items []string, bad func(i int, msg string)) reflect.Value {
	v := reflect.MakeSlice(f.typ, 0, len(items))
	for i, s := range items {
		if x, msg := (field{typ: f.typ.Elem()}).parse(s); msg != "" {
			bad(i, msg)
		} else {
			v = reflect.Append(v, x)
		}
	}
	return v
}

// check says what is wrong with the value v of f, parsed or built; "" if
// nothing.
func (f field) check(v reflect.Value) string {
	switch x := v.Interface().(type) {
	case time.Duration, int, int64, Percent:
		return f.checkNumber(v.Int())
	case sockopt.Linger:
		if x.Mode == sockopt.Bounded && x.Timeout <= 0 {
			return "a duration must be positive (use reset for an immediate RST)"
		} else if x.Mode == sockopt.Bounded {
			return f.checkNumber(int64(x.Timeout))
		}
	case os.FileMode:
		if x&^os.ModePerm != 0 {
			return "want 0 to 0777"
		}
	case []uint16:
		if slices.Contains(x, 0) {
			return "port 0; want 1 to 65535"
		}
	case []netip.Prefix:
		for _, p := range x {
			if !p.IsValid() || p != p.Masked() {
				return fmt.Sprintf("%s is not a network address", p)
			}
		}
	case PortRange:
		if x != (PortRange{}) && (x.Lo == 0 || x.Hi == 0) {
			return "port out of range (want 1-65535)"
		} else if x.Lo > x.Hi {
			return "the first port is more than the last"
		}
	case string:
		if oneof := f.tag.Get("oneof"); oneof != "" && !slices.Contains(strings.Split(oneof, ","), x) {
			i := strings.LastIndex(oneof, ",") // every oneof has two values or more
			return "want " + strings.ReplaceAll(oneof[:i], ",", ", ") + " or " + oneof[i+1:]
		}
	}
	return ""
}

// checkNumber checks a duration, size or count against f's tags.
func (f field) checkNumber(n int64) string {
	bound := func(tag string, none int64) int64 {
		if s, ok := f.tag.Lookup(tag); ok {
			x, _ := f.parse(s) // of a duration, size or count: linger has neither min nor max
			return x.Int()
		}
		return none
	}
	min, max, kernel := bound("min", 0), bound("max", math.MaxInt64), f.tag.Get("kernel")
	res, _ := time.ParseDuration(f.tag.Get("res"))
	unit := map[time.Duration]string{time.Second: "seconds", time.Millisecond: "milliseconds"}[res]
	switch {
	case n < 0:
		return "must not be negative"
	case res > 0 && n%int64(res) != 0:
		return fmt.Sprintf("want whole %s (the kernel counts %s in %s)", unit, kernel, unit)
	case n < min && min == 1 && f.typ == reflect.TypeFor[time.Duration]():
		return "must be more than 0"
	case n < min && f.size && formatSize(min) != strconv.FormatInt(min, 10):
		return fmt.Sprintf("want at least %d (%s)", min, formatSize(min))
	case n < min:
		return "want at least " + f.format(reflect.ValueOf(min).Convert(f.typ))
	case n > max && kernel != "":
		return fmt.Sprintf("want at most %s (the kernel's limit for %s)", f.format(reflect.ValueOf(max).Convert(f.typ)), kernel)
	case n > max:
		return "want at most " + f.format(reflect.ValueOf(max).Convert(f.typ))
	}
	return ""
}

// format writes the value v of f as a configuration would.
func (f field) format(v reflect.Value) string {
	if f.size {
		return formatSize(v.Int())
	} else if m, ok := v.Interface().(os.FileMode); ok {
		return fmt.Sprintf("%#o", m)
	}
	return fmt.Sprint(v.Interface())
}

// parseDuration accepts Go durations ("90s", "1m30s") and a plain 0. It is
// the one parser of durations, linger's included.
func parseDuration(s string) (time.Duration, string) {
	switch d, err := time.ParseDuration(s); {
	case plainNumber.MatchString(s) && strings.Trim(s, "+-.0") != "":
		return 0, fmt.Sprintf("%q has no unit; write %ss or %sms", s, s, s)
	case plainNumber.MatchString(s): // 0, 0.0
		return 0, ""
	case err != nil:
		return 0, fmt.Sprintf("%q is not a duration; want one such as 500ms, 2s or 1m30s", s)
	case d < 0:
		return 0, fmt.Sprintf("%q: must not be negative", s)
	default:
		return d, ""
	}
}

// sizeUnits are the suffixes a size may have: binary multiples only, so
// that a size means one thing.
var sizeUnits = []struct {
	suffix string
	n      int64
}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}}

// parseSize parses a number of bytes, plain ("65536") or with a KiB, MiB
// or GiB suffix ("64KiB"). A negative size is left to check.
func parseSize(s string) (int64, string) {
	num, mult := s, int64(1)
	for _, u := range sizeUnits {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			num, mult = strings.TrimSpace(n), u.n
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	unit := strings.TrimSpace(strings.TrimLeft(num, "-0123456789"))
	switch {
	case errors.Is(err, strconv.ErrRange) || n > math.MaxInt64/mult || n < math.MinInt64/mult:
		return 0, fmt.Sprintf("%q: too large", s)
	case err == nil:
		return n * mult, ""
	case unit == strings.TrimLeft(num, "-"):
		return 0, fmt.Sprintf("%q is not a size; want one such as 65536, 64KiB or 1MiB", s)
	case mult == 1 && strings.Trim(unit, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") == "":
		return 0, fmt.Sprintf("%q: unknown unit %q; want KiB, MiB or GiB, or none for bytes", s, unit)
	}
	return 0, fmt.Sprintf("%q is not a size; want a whole number such as 65536, 64KiB or 1MiB", s)
}

// formatSize writes n with the largest unit that divides it, else in bytes.
func formatSize(n int64) string {
	for _, u := range slices.Backward(sizeUnits) {
		if n != 0 && n%u.n == 0 {
			return strconv.FormatInt(n/u.n, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}
