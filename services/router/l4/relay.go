package l4

import (
	"context"
	"io"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// tcpConn is one proxied connection: the client's socket and, once
// dialled, the backend's. close may come from the relay, the idle watch
// or Shutdown, in any order.
type tcpConn struct {
	client *net.TCPConn

	mu      sync.Mutex
	closed  bool
	backend *net.TCPConn
	cancel  context.CancelFunc // ends a dial in progress
}

func (c *tcpConn) setCancel(cancel context.CancelFunc) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cancel = cancel
	if c.closed {
		cancel()
	}
}

// setBackend records the dialled backend socket, or closes it when the
// connection was closed meanwhile.
func (c *tcpConn) setBackend(b *net.TCPConn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		b.Close()
		return false
	}
	c.backend = b
	return true
}

func (c *tcpConn) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.closed = true
	if c.cancel != nil {
		c.cancel()
	}
	c.client.Close()
	if c.backend != nil {
		c.backend.Close()
	}
}

// relay copies both ways until both directions ended. An EOF one way is
// passed on as a half-close (CloseWrite) the same way, so protocols
// that shut down one direction and then answer work; an error either
// way ends both.
func relay(c *tcpConn, front net.Conn, back *net.TCPConn) {
	var ended atomic.Int32
	done := make(chan struct{})
	go func() {
		pipe(c, back, front, &ended)
		close(done)
	}()
	pipe(c, front, back, &ended)
	<-done
}

type closeWriter interface{ CloseWrite() error }

// pipe copies src to dst. Between two *net.TCPConn io.Copy splices: the
// bytes go from socket to socket inside the kernel.
func pipe(c *tcpConn, dst, src net.Conn, ended *atomic.Int32) {
	_, err := io.Copy(dst, src)
	// The direction that ends last need not half-close a TCP socket: the
	// close that follows sends the same FIN. TLS still says close_notify.
	_, tcp := dst.(*net.TCPConn)
	last := ended.Add(1) == 2
	if err == nil && !(last && tcp) {
		err = dst.(closeWriter).CloseWrite()
	}
	if err != nil {
		c.close()
	}
}

// closeWhenIdle closes c once neither socket received data for idle.
// The kernel records when each socket last received data (TCP_INFO), so
// the spliced relay needs no bookkeeping per read.
func (c *tcpConn) closeWhenIdle(idle time.Duration, done <-chan struct{}) {
	t := time.NewTimer(idle)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		c.mu.Lock()
		back := c.backend
		c.mu.Unlock()
		since := min(sinceReceived(c.client), sinceReceived(back))
		if since >= idle {
			c.close()
			return
		}
		t.Reset(idle - since)
	}
}

// sinceReceived is how long ago c last received data; a socket whose
// state cannot be read counts as idle.
func sinceReceived(c *net.TCPConn) time.Duration {
	rc, err := c.SyscallConn()
	if err != nil {
		return time.Duration(math.MaxInt64)
	}
	var info *unix.TCPInfo
	cerr := rc.Control(func(fd uintptr) {
		info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	})
	if cerr != nil || err != nil {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(info.Last_data_recv) * time.Millisecond
}
