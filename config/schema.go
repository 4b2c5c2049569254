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
		f := field{key: prefix + key, index: append(slices.Clip(index), i), typ: sf.Type, tag: sf.Tag, want: wants[sf.Type]}
		if f.want == "" {
			fs = append(fs, fieldsOf(sf.Type, f.key+".", f.index)...)
			continue
		}
		if f.size = sf.Tag.Get("kind") == "size"; f.size {
			f.want = "a size such as 64KiB"
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

// fill sets every key of fields in the struct v to its default.
func fill(v reflect.Value, fields []field) {
	for _, f := range fields {
		if f.hasDef {
			x, _ := f.parse(f.def)
			v.FieldByIndex(f.index).Set(x)
		}
	}
}

var plainNumber = regexp.MustCompile(`^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)$`)

// parse parses s, as written in the file or a variable, into a value of
// the field's type. The message, empty when s is good, quotes s. What is
// wrong with a value of the right type (a bound, a range) is left to check.
func (f field) parse(s string) (reflect.Value, string) {
	var x any
	msg := ""
	switch reflect.Zero(f.typ).Interface().(type) {
	case string:
		x = s
		if f.tag.Get("oneof") != "" {
			x = strings.ToLower(s)
		}
	case []string:
		x = strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' })
	case int, int64:
		n, err := strconv.ParseInt(s, 10, 64)
		if x = n; f.size {
			x, msg = parseSize(s)
		} else if err != nil {
			msg = fmt.Sprintf("%q is not an integer", s)
		}
	case bool:
		b, err := strconv.ParseBool(s)
		if x = b; err != nil {
			msg = fmt.Sprintf("%q: want true or false", s)
		}
	case time.Duration:
		x, msg = parseDuration(s)
	case sockopt.Linger: // graceful, reset or a duration
		d, m := parseDuration(s)
		if _, err := time.ParseDuration(s); err != nil && !plainNumber.MatchString(s) {
			m = fmt.Sprintf("%q: want graceful, reset or a duration such as 2s", s)
		}
		x, msg = sockopt.Linger{Mode: sockopt.Bounded, Timeout: d}, m
		if mode, ok := map[string]sockopt.LingerMode{"graceful": sockopt.Graceful, "reset": sockopt.Reset}[strings.ToLower(s)]; ok {
			x, msg = sockopt.Linger{Mode: mode}, ""
		}
	case os.FileMode: // in octal, as for chmod: "0660" or "660"; check refuses more than 0777
		n, _ := strconv.ParseUint(s, 8, 32)
		if x = os.FileMode(n); s == "" || strings.Trim(s, "01234567") != "" {
			msg = fmt.Sprintf("%q is not an octal file mode; want one such as 0660", s)
		}
	case netip.Addr: // "" is the zero Addr
		a, err := netip.ParseAddr(s)
		x = a
		if _, errPort := netip.ParseAddrPort(s); s != "" && err != nil && errPort == nil {
			msg = fmt.Sprintf("%q: want an IP address without a port (set ports with dial.source_ports)", s)
		} else if s != "" && err != nil {
			msg = fmt.Sprintf("%q is not an IP address; want one such as 10.0.0.5 or 2001:db8::5", s)
		}
	case PortRange: // "lo-hi"; "" is the zero PortRange
		los, his, ok := strings.Cut(s, "-")
		lo, errLo := strconv.ParseUint(strings.TrimSpace(los), 10, 16)
		hi, errHi := strconv.ParseUint(strings.TrimSpace(his), 10, 16)
		isNum := func(s string) bool { s = strings.TrimSpace(s); return s != "" && strings.Trim(s, "0123456789") == "" }
		switch x = (PortRange{uint16(lo), uint16(hi)}); {
		case s == "":
		case !ok || !isNum(los) || !isNum(his):
			msg = fmt.Sprintf("%q: want a port range such as 20000-29999", s)
		case errLo != nil || errHi != nil:
			msg = fmt.Sprintf("%q: port out of range (want 1-65535)", s)
		}
	}
	return reflect.ValueOf(x).Convert(f.typ), msg
}

// check says what is wrong with the value v of f, parsed or built; "" if
// nothing.
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
		switch {
		case x == PortRange{}:
		case x.Lo == 0 || x.Hi == 0:
			return "port out of range (want 1-65535)"
		case x.Lo > x.Hi:
			return "the first port is more than the last"
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
		if !ok {
			return 0, false
		}
		x, _ := f.parse(s) // of a duration, size or count: linger has neither min nor max
		return x.Int(), true
	}
	kernel := f.tag.Get("kernel")
	if n < 0 {
		return "must not be negative"
	}
	if res, err := time.ParseDuration(f.tag.Get("res")); err == nil && n%int64(res) != 0 {
		unit := map[time.Duration]string{time.Second: "seconds", time.Millisecond: "milliseconds"}[res]
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
	if u := formatSize(n); f.size && u != strconv.FormatInt(n, 10) {
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
		if f.size {
			return formatSize(v.Int())
		}
	}
	return fmt.Sprint(v.Interface())
}

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
