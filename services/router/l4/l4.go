// Package l4 is the router's TCP and UDP data path: it takes connections
// and datagrams from listeners the caller opened, and relays them to a
// service's instances chosen from backend.Sets, counting each
// connection and UDP session on its backend so drains can wait for it.
//
// TCP connections are relayed with splice (io.Copy between TCP
// sockets), with half-close, optional TLS termination and an optional
// PROXY protocol v2 header to the backend. UDP keeps one connected
// socket per client address (session affinity), and answers clients
// from the address they sent to.
//
// It does not decide which ports exist, open their listeners (though
// ListenTCP makes TCP ones with keepalive set once, not per
// connection), watch the controller or speak HTTP: the router service
// does that around it.
package l4

import "errors"

// ErrClosed is what Serve returns once the proxy was closed.
var ErrClosed = errors.New("l4: proxy closed")
