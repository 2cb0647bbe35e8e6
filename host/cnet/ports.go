package cnet

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// Published ports are forwarded by a proxy in hostd: it needs no packet
// filter in the kernel, works the same on every host, and a port already
// in use is an error at publish time. The job sees connections from the
// bridge's address, not the client's.

// udpIdle ends a UDP flow with no packets for this long.
const udpIdle = 2 * time.Minute

// Publish forwards proto ("tcp" or "udp") connections on hostPort, on
// every host address, to target. Close stops it.
func Publish(proto string, hostPort int, target netip.AddrPort) (io.Closer, error) {
	addr := ":" + strconv.Itoa(hostPort)
	switch proto {
	case "tcp", "":
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("publish tcp port %d: %w", hostPort, err)
		}
		go serveTCP(ln, target)
		return ln, nil
	case "udp":
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, fmt.Errorf("publish udp port %d: %w", hostPort, err)
		}
		go serveUDP(pc, target)
		return pc, nil
	}
	return nil, fmt.Errorf("protocol %q: use tcp or udp", proto)
}

func serveTCP(ln net.Listener, target netip.AddrPort) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return // closed
		}
		go func() {
			defer c.Close()
			up, err := net.DialTimeout("tcp", target.String(), 5*time.Second)
			if err != nil {
				return
			}
			defer up.Close()
			done := make(chan struct{}, 2)
			pipe := func(dst, src net.Conn) {
				io.Copy(dst, src)
				if tc, ok := dst.(*net.TCPConn); ok {
					tc.CloseWrite() // pass the half-close on
				}
				done <- struct{}{}
			}
			go pipe(up, c)
			go pipe(c, up)
			<-done
			<-done
		}()
	}
}

// serveUDP keeps one upstream socket per client address, so replies find
// their way back.
func serveUDP(pc net.PacketConn, target netip.AddrPort) {
	var mu sync.Mutex
	flows := map[string]*net.UDPConn{}
	buf := make([]byte, 65535)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			mu.Lock()
			for _, f := range flows {
				f.Close()
			}
			mu.Unlock()
			return
		}
		mu.Lock()
		up, ok := flows[from.String()]
		if !ok {
			up, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(target))
			if err != nil {
				mu.Unlock()
				continue
			}
			flows[from.String()] = up
			go func() {
				b := make([]byte, 65535)
				for {
					up.SetReadDeadline(time.Now().Add(udpIdle))
					m, err := up.Read(b)
					if err != nil {
						break // idle for udpIdle, or closed
					}
					pc.WriteTo(b[:m], from)
				}
				mu.Lock()
				delete(flows, from.String())
				mu.Unlock()
				up.Close()
			}()
		}
		mu.Unlock()
		up.Write(buf[:n])
	}
}
