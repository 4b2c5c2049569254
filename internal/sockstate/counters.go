package sockstate

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Counters returns the IP and TCP counters of the current network
// namespace (/proc/net/snmp and /proc/net/netstat) by "Group.Name", such
// as "TcpExt.TW" (sockets that entered TIME_WAIT) or "Tcp.OutRsts". In a
// namespace of a test's own they count that test's sockets and no
// others, including sockets the table no longer lists.
func Counters() (map[string]uint64, error) { return CountersFrom(DefaultDir) }

// CountersFrom is Counters reading procNetDir (see ReadFrom).
func CountersFrom(procNetDir string) (map[string]uint64, error) {
	out := make(map[string]uint64)
	for _, name := range [...]string{"snmp", "netstat"} {
		if err := readCounters(filepath.Join(procNetDir, name), out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// readCounters adds the counters of one file: pairs of lines, names then
// values, each line starting with its group ("TcpExt:").
func readCounters(path string, out map[string]uint64) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("sockstate: %w", err)
	}
	defer f.Close() // read-only: nothing to lose
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		names := strings.Fields(sc.Text())
		if !sc.Scan() {
			return fmt.Errorf("%w: %s: a line of names without values", ErrMalformed, path)
		}
		values := strings.Fields(sc.Text())
		if len(names) == 0 || len(names) != len(values) || names[0] != values[0] {
			return fmt.Errorf("%w: %s: names %q, values %q", ErrMalformed, path, names, values)
		}
		group := strings.TrimSuffix(names[0], ":")
		for i := 1; i < len(names); i++ {
			v, err := strconv.ParseInt(values[i], 10, 64) // some are signed (Tcp MaxConn -1)
			if err != nil {
				return fmt.Errorf("%w: %s: %s.%s = %q", ErrMalformed, path, group, names[i], values[i])
			}
			out[group+"."+names[i]] = uint64(v)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("sockstate: reading %s: %w", path, err)
	}
	return nil
}
