package proxy

import "time"

// keepAlive is what a response's Keep-Alive header says about its
// connection (RFC 2068 §19.7.1.1; Apache, Node.js and others send it):
// "timeout=5, max=100", how long the server keeps the connection idle and
// how many more requests it takes on it. The pool retires the connection
// before either runs out (pool.Conn.SetServerKeepAlive). The header is
// hop-by-hop: the app never sees it.
type keepAlive struct {
	timeout time.Duration // 0: not said
	max     int           // with hasMax
	hasMax  bool
}

// said reports whether the header told anything.
func (k keepAlive) said() bool { return k.timeout > 0 || k.hasMax }

// maxOrNone is max, or -1 if not said (SetServerKeepAlive's convention).
func (k keepAlive) maxOrNone() int {
	if k.hasMax {
		return k.max
	}
	return -1
}

// parse reads one Keep-Alive field value, tolerantly: parameters
// separated by commas (or semicolons), names in any case, optional
// whitespace around "=", values optionally quoted, timeout in seconds
// with a fraction allowed ("0.5"). Unknown parameters and values that do
// not parse are skipped. Where the header says a thing twice (or comes
// twice), the smaller value counts. timeout=0 means the server keeps no
// idle connection: no request goes on it again, as max=0 says. It runs
// on every response that has the header: no allocation.
func (k *keepAlive) parse(v []byte) {
	for len(v) > 0 {
		i := 0
		for i < len(v) && v[i] != ',' && v[i] != ';' {
			i++
		}
		param := v[:i]
		if i < len(v) {
			i++
		}
		v = v[i:]
		eq := 0
		for eq < len(param) && param[eq] != '=' {
			eq++
		}
		if eq == len(param) {
			continue
		}
		name, val := trimOWS(param[:eq]), trimOWS(param[eq+1:])
		if len(val) >= 2 && val[0] == '"' && val[len(val)-1] == '"' {
			val = val[1 : len(val)-1]
		}
		switch {
		case equalFold(name, "timeout"):
			d, ok := parseSeconds(val)
			switch {
			case !ok:
			case d == 0:
				k.setMax(0)
			case k.timeout == 0 || d < k.timeout:
				k.timeout = d
			}
		case equalFold(name, "max"):
			if n, ok := parseCount(val); ok {
				k.setMax(n)
			}
		}
	}
}

func (k *keepAlive) setMax(n int) {
	if !k.hasMax || n < k.max {
		k.max, k.hasMax = n, true
	}
}

// parseSeconds parses a non-negative number of seconds: digits, with an
// optional fraction ("5", "0.3", "2."); at most nine digits before the
// point, and fraction digits past nanoseconds ignored.
func parseSeconds(b []byte) (time.Duration, bool) {
	var whole, frac int64
	i, digits := 0, 0
	for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		if i == 9 {
			return 0, false
		}
		whole = whole*10 + int64(b[i]-'0')
		digits++
	}
	if i < len(b) && b[i] == '.' {
		scale := int64(time.Second)
		for i++; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
			scale /= 10
			frac += int64(b[i]-'0') * scale
			digits++
		}
	}
	if i != len(b) || digits == 0 {
		return 0, false
	}
	return time.Duration(whole)*time.Second + time.Duration(frac), true
}

// parseCount parses a non-negative count of at most nine digits.
func parseCount(b []byte) (int, bool) {
	if len(b) == 0 || len(b) > 9 {
		return 0, false
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}
