package main

import (
	"errors"
	"net"
	"strings"
)

// notifier tells the service manager about unstuck's state with systemd's
// sd_notify protocol: each message is one datagram, "KEY=value" lines, on
// the unix socket named by $NOTIFY_SOCKET (a name starting with "@" is in
// the abstract namespace). The unit's Type=notify makes systemd wait for
// READY=1, so that a unit ordered After=unstuck.service starts once
// unstuck's listeners are bound. Without NOTIFY_SOCKET it does nothing.
type notifier struct {
	addr *net.UnixAddr // nil: not run by a service manager
}

// newNotifier reads NOTIFY_SOCKET from environ ("KEY=value" strings).
func newNotifier(environ []string) notifier {
	for _, kv := range environ {
		if path, ok := strings.CutPrefix(kv, "NOTIFY_SOCKET="); ok && path != "" {
			if path[0] == '@' { // abstract: Go's net spells it with a leading NUL
				path = "\x00" + path[1:]
			}
			return notifier{addr: &net.UnixAddr{Name: path, Net: "unixgram"}}
		}
	}
	return notifier{}
}

// errNoManager is notify's error without NOTIFY_SOCKET.
var errNoManager = errors.New("sd_notify: NOTIFY_SOCKET is not set")

// notify sends state, such as "READY=1" or "STOPPING=1". A failure means
// the service manager did not hear it; the caller logs it, nothing more.
func (n notifier) notify(state string) error {
	if n.addr == nil {
		return errNoManager
	}
	c, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return err
	}
	defer c.Close() // a datagram socket: the message is sent or not by now
	_, err = c.Write([]byte(state))
	return err
}
