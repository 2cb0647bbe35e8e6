package l4

import (
	"encoding/binary"
	"net"
	"net/netip"
)

// proxySignature opens every PROXY protocol v2 header.
var proxySignature = []byte("\r\n\r\n\x00\r\nQUIT\n")

// proxyHeader is a PROXY protocol v2 header telling the backend that
// the connection it is given came from client and was made to local
// (the address the client connected to). Addresses that are not TCP
// over IP give a LOCAL header, which tells the backend to use the
// connection's own addresses.
func proxyHeader(client, local net.Addr) []byte {
	h := make([]byte, 0, 16+36)
	h = append(h, proxySignature...)
	src, ok1 := addrPort(client)
	dst, ok2 := addrPort(local)
	switch {
	case !ok1 || !ok2:
		return append(h, 0x20, 0x00, 0, 0) // v2 LOCAL, AF_UNSPEC
	case src.Addr().Is4() && dst.Addr().Is4():
		h = append(h, 0x21, 0x11, 0, 12) // v2 PROXY, TCP over IPv4
		h = append(h, src.Addr().AsSlice()...)
		h = append(h, dst.Addr().AsSlice()...)
	default:
		// One side IPv6: both go as IPv6, IPv4 mapped.
		h = append(h, 0x21, 0x21, 0, 36) // v2 PROXY, TCP over IPv6
		s, d := src.Addr().As16(), dst.Addr().As16()
		h = append(h, s[:]...)
		h = append(h, d[:]...)
	}
	h = binary.BigEndian.AppendUint16(h, src.Port())
	return binary.BigEndian.AppendUint16(h, dst.Port())
}

func addrPort(a net.Addr) (netip.AddrPort, bool) {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, false
	}
	ap := ta.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), ap.Addr().IsValid()
}
