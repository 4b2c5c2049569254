package config

import (
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

// kind is how a key's value is written: what it looks like, for
// messages, and its parser, whose message quotes the text.
type kind struct {
	want  string
	parse func(string) (any, string)
}

func parser[T any](p func(string) (T, string)) func(string) (any, string) {
	return func(s string) (any, string) { return p(s) }
}

var (
	kString = &kind{"a string", func(s string) (any, string) { return s, "" }}
	kList   = &kind{`a list such as ["127.0.0.1:9000"]`, func(s string) (any, string) { return splitList(s), "" }}
	kSize   = &kind{"a size such as 64KiB", parser(parseSize)} // an int with the tag kind:"size"
	kinds   = map[reflect.Type]*kind{
		reflect.TypeFor[string](): kString, reflect.TypeFor[[]string](): kList,
		reflect.TypeFor[int](): {"an integer", parser(parseInt)}, reflect.TypeFor[int64](): {"an integer", parser(parseInt)},
		reflect.TypeFor[bool]():           {"true or false", parser(parseBool)},
		reflect.TypeFor[time.Duration]():  {"a duration such as 2s", parser(parseDuration)},
		reflect.TypeFor[sockopt.Linger](): {"graceful, reset or a duration such as 2s", parser(parseLinger)},
		reflect.TypeFor[os.FileMode]():    {`an octal file mode such as "0660"`, parser(parseMode)},
		reflect.TypeFor[netip.Addr]():     {"an IP address such as 10.0.0.5", parser(parseIP)},
		reflect.TypeFor[PortRange]():      {"a port range such as 20000-29999", parser(parsePortRange)},
	}
)

// field is one key with a value, relative to the top level, a listener or
// an upstream.
type field struct {
	key    string // "." separates levels
	index  []int  // of the struct field, for reflect's FieldByIndex
	typ    reflect.Type
	kind   *kind
	tag    reflect.StructTag
	def    string
	hasDef bool
}

// entries is a map of names to settings at the top level: listeners or
// upstreams.
type entries struct {
	key, what, example string // "listeners", "listener", "app"
	index              int    // of the map in Config
	fields             []field
}

var (
	topFields      = fieldsOf(reflect.TypeFor[Config](), "", nil)
	entryKinds     = entriesOf(reflect.TypeFor[Config]())
	listenerFields = entryKinds[0].fields
	upstreamFields = entryKinds[1].fields
)

// fieldsOf returns the keys of struct t and of the structs it holds,
// except maps, each key prefixed with prefix.
func fieldsOf(t reflect.Type, prefix string, index []int) []field {
	var fs []field
	for i := range t.NumField() {
		sf := t.Field(i)
		key := sf.Tag.Get("key")
		if key == "" || sf.Type.Kind() == reflect.Map {
			continue
		}
		f := field{key: prefix + key, index: append(slices.Clip(index), i), typ: sf.Type, tag: sf.Tag, kind: kinds[sf.Type]}
		if f.kind == nil {
			fs = append(fs, fieldsOf(sf.Type, f.key+".", f.index)...)
			continue
		}
		if sf.Tag.Get("kind") == "size" {
			f.kind = kSize
		}
		f.def, f.hasDef = sf.Tag.Lookup("default")
		fs = append(fs, f)
	}
	return fs
}

func entriesOf(t reflect.Type) []entries {
	var es []entries
	for i := range t.NumField() {
		if sf := t.Field(i); sf.Type.Kind() == reflect.Map {
			key := sf.Tag.Get("key")
			es = append(es, entries{key, strings.TrimSuffix(key, "s"), sf.Tag.Get("example"), i, fieldsOf(sf.Type.Elem(), "", nil)})
		}
	}
	return es
}

// fill sets every key of fields in the struct dst points to its default.
func fill(dst any, fields []field) {
	v := reflect.ValueOf(dst).Elem()
	for _, f := range fields {
		if f.hasDef {
			x, _ := f.parse(f.def)
			v.FieldByIndex(f.index).Set(x)
		}
	}
}

// parse parses s, as written in the file or a variable, into a value of
// the field's type. The message, empty when s is good, quotes s.
func (f field) parse(s string) (reflect.Value, string) {
	if f.tag.Get("oneof") != "" {
		s = strings.ToLower(s)
	}
	x, msg := f.kind.parse(s)
	return reflect.ValueOf(x).Convert(f.typ), msg
}

// check says what is wrong with the value v of f, which parse let
// through or code built; "" if nothing.
func (f field) check(v reflect.Value) string {
	switch x := v.Interface().(type) {
	case time.Duration, int, int64:
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
	case PortRange:
		if x != (PortRange{}) {
			return x.check()
		}
	case string:
		if all := strings.Split(f.tag.Get("oneof"), ","); all[0] != "" && !slices.Contains(all, x) {
			if n := len(all); n > 1 {
				return "want " + strings.Join(all[:n-1], ", ") + " or " + all[n-1]
			}
			return "want " + all[0]
		}
	}
	return ""
}

// checkNumber checks a duration, size or count against f's tags.
func (f field) checkNumber(n int64) string {
	bound := func(tag string) (int64, bool) {
		s, ok := f.tag.Lookup(tag)
		if f.typ == reflect.TypeFor[sockopt.Linger]() || tag == "res" {
			d, _ := parseDuration(s)
			return int64(d), ok
		}
		x, _ := f.parse(s)
		return x.Int(), ok
	}
	kernel := f.tag.Get("kernel")
	if n < 0 {
		return "must not be negative"
	}
	if res, ok := bound("res"); ok && n%res != 0 {
		unit := map[time.Duration]string{time.Second: "seconds", time.Millisecond: "milliseconds"}[time.Duration(res)]
		return fmt.Sprintf("want whole %s (the kernel counts %s in %s)", unit, kernel, unit)
	}
	if min, ok := bound("min"); ok && n < min {
		if f.typ == reflect.TypeFor[time.Duration]() && min == 1 {
			return "must be more than 0"
		}
		return "want at least " + f.show(min)
	}
	if max, ok := bound("max"); ok && n > max && kernel != "" {
		return fmt.Sprintf("want at most %s (the kernel's limit for %s)", f.show(max), kernel)
	} else if ok && n > max {
		return "want at most " + formatSize(max) // only sizes have a max and no kernel
	}
	return ""
}

// show writes a bound n of f for a message, a size in bytes and units.
func (f field) show(n int64) string {
	if u := formatSize(n); f.kind == kSize && u != strconv.FormatInt(n, 10) {
		return fmt.Sprintf("%d (%s)", n, u)
	}
	return f.format(reflect.ValueOf(n).Convert(f.typ))
}

// format writes the value v of f as a configuration would.
func (f field) format(v reflect.Value) string {
	switch x := v.Interface().(type) {
	case os.FileMode:
		return fmt.Sprintf("0%o", uint32(x))
	case int, int64:
		if f.kind == kSize {
			return formatSize(v.Int())
		}
	}
	return fmt.Sprint(v.Interface())
}

func parseInt(s string) (int, string) {
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Sprintf("%q is not an integer", s)
	}
	return n, ""
}

func parseBool(s string) (bool, string) {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return false, fmt.Sprintf("%q: want true or false", s)
	}
	return b, ""
}

var plainNumber = regexp.MustCompile(`^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)$`)

// parseDuration accepts Go durations ("90s", "1m30s") and a plain 0. It is
// the one parser of durations, linger's included.
func parseDuration(s string) (time.Duration, string) {
	if plainNumber.MatchString(s) {
		if f, err := strconv.ParseFloat(s, 64); err == nil && f == 0 {
			return 0, ""
		}
		return 0, fmt.Sprintf("%q has no unit; write %ss or %sms", s, s, s)
	}
	d, err := time.ParseDuration(s)
	switch {
	case err != nil:
		return 0, fmt.Sprintf("%q is not a duration; want one such as 500ms, 2s or 1m30s", s)
	case d < 0:
		return 0, fmt.Sprintf("%q: must not be negative", s)
	}
	return d, ""
}

// parseLinger parses graceful, reset or a duration; check holds the
// duration to the field's tags (positive, whole seconds).
func parseLinger(s string) (sockopt.Linger, string) {
	switch strings.ToLower(s) {
	case "graceful":
		return sockopt.Linger{Mode: sockopt.Graceful}, ""
	case "reset":
		return sockopt.Linger{Mode: sockopt.Reset}, ""
	}
	d, msg := parseDuration(s)
	if _, err := time.ParseDuration(s); err != nil && !plainNumber.MatchString(s) {
		msg = fmt.Sprintf("%q: want graceful, reset or a duration such as 2s", s)
	}
	return sockopt.Linger{Mode: sockopt.Bounded, Timeout: d}, msg
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
			break
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
	for i := len(sizeUnits) - 1; i >= 0; i-- {
		if u := sizeUnits[i]; n != 0 && n%u.n == 0 {
			return strconv.FormatInt(n/u.n, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

// parseMode parses a file mode written in octal, as for chmod: "0660" or
// "660".
func parseMode(s string) (os.FileMode, string) {
	if s == "" || strings.Trim(s, "01234567") != "" {
		return 0, fmt.Sprintf("%q is not an octal file mode; want one such as 0660", s)
	}
	n, err := strconv.ParseUint(s, 8, 32)
	if err != nil || n > uint64(os.ModePerm) {
		return 0, fmt.Sprintf("%q: want 0 to 0777", s)
	}
	return os.FileMode(n), ""
}

// parseIP parses an IP address; "" is the zero Addr.
func parseIP(s string) (netip.Addr, string) {
	a, err := netip.ParseAddr(s)
	if s == "" || err == nil {
		return a, ""
	}
	if _, err := netip.ParseAddrPort(s); err == nil {
		return a, fmt.Sprintf("%q: want an IP address without a port (set ports with dial.source_ports)", s)
	}
	return a, fmt.Sprintf("%q is not an IP address; want one such as 10.0.0.5 or 2001:db8::5", s)
}

// parsePortRange parses "lo-hi"; "" is the zero PortRange.
func parsePortRange(s string) (PortRange, string) {
	if s == "" {
		return PortRange{}, ""
	}
	los, his, ok := strings.Cut(s, "-")
	lo, errLo := strconv.ParseUint(strings.TrimSpace(los), 10, 16)
	hi, errHi := strconv.ParseUint(strings.TrimSpace(his), 10, 16)
	isNum := func(s string) bool { s = strings.TrimSpace(s); return s != "" && strings.Trim(s, "0123456789") == "" }
	switch {
	case !ok || !isNum(los) || !isNum(his):
		return PortRange{}, fmt.Sprintf("%q: want a port range such as 20000-29999", s)
	case errLo != nil || errHi != nil:
		return PortRange{}, fmt.Sprintf("%q: port out of range (want 1-65535)", s)
	}
	return PortRange{Lo: uint16(lo), Hi: uint16(hi)}, "" // check does the rest
}

// check checks a range that is not the zero PortRange. The message is
// empty when r is good.
func (r PortRange) check() string {
	switch {
	case r.Lo == 0 || r.Hi == 0:
		return "port out of range (want 1-65535)"
	case r.Lo > r.Hi:
		return "the first port is more than the last"
	}
	return ""
}

// splitList splits a list written on one line, separated by commas or
// spaces.
func splitList(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' })
}
