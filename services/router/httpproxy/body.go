package httpproxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"strconv"
	"time"
)

// flushWriter is where a relay writes: a bufio.Writer on a connection,
// or an HTTP/2 response.
type flushWriter interface {
	io.Writer
	Flush() error
}

// relay copies one message body from src to dst, straight out of src's
// buffer. It flushes dst whenever reading src might block, so that
// streamed responses reach the client as they come, and small bodies
// leave in one write with their head.
type relay struct {
	src *bufio.Reader
	dst flushWriter
	// srcConn and dstConn get the idle deadline before each wait; nil
	// when the caller handles deadlines.
	srcConn, dstConn net.Conn
	timeout          time.Duration
	// trailer receives the trailer fields of a chunked body when dst
	// is not chunked itself; nil drops them.
	trailer func(name, value []byte)

	n                 int64 // body bytes written to dst
	readErr, writeErr error
	// waited is set once the relay moved its connections' deadlines.
	waited bool
}

var errBadChunk = errors.New("malformed chunked body")

// wait flushes dst and waits for more of src.
func (r *relay) wait() bool {
	if err := r.dst.Flush(); err != nil {
		r.writeErr = err
		return false
	}
	if r.timeout > 0 {
		r.waited = true
		d := time.Now().Add(r.timeout)
		if r.srcConn != nil {
			r.srcConn.SetReadDeadline(d)
		}
		if r.dstConn != nil {
			r.dstConn.SetWriteDeadline(d)
		}
	}
	if _, err := r.src.Peek(1); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		r.readErr = err
		return false
	}
	return true
}

// copyN relays n bytes.
func (r *relay) copyN(n int64) bool {
	for n > 0 {
		if r.src.Buffered() == 0 && !r.wait() {
			return false
		}
		b, _ := r.src.Peek(int(min(n, int64(r.src.Buffered()))))
		w, err := r.dst.Write(b)
		r.src.Discard(w)
		n -= int64(w)
		r.n += int64(w)
		if err != nil {
			r.writeErr = err
			return false
		}
	}
	return true
}

// copyToEOF relays until src ends: a response without length.
func (r *relay) copyToEOF() bool {
	for {
		if r.src.Buffered() == 0 {
			if err := r.dst.Flush(); err != nil {
				r.writeErr = err
				return false
			}
			if r.timeout > 0 && r.srcConn != nil {
				r.waited = true
				r.srcConn.SetReadDeadline(time.Now().Add(r.timeout))
			}
			if _, err := r.src.Peek(1); err != nil {
				if err == io.EOF {
					return true
				}
				r.readErr = err
				return false
			}
		}
		b, _ := r.src.Peek(r.src.Buffered())
		w, err := r.dst.Write(b)
		r.src.Discard(w)
		r.n += int64(w)
		if err != nil {
			r.writeErr = err
			return false
		}
	}
}

// chunkedWriter frames data as chunks for dst when both ends speak
// HTTP/1.1.
type chunkedWriter struct {
	w   flushWriter
	hex [20]byte
}

func (c *chunkedWriter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	h := strconv.AppendInt(c.hex[:0], int64(len(p)), 16)
	h = append(h, '\r', '\n')
	if _, err := c.w.Write(h); err != nil {
		return 0, err
	}
	n, err := c.w.Write(p)
	if err != nil {
		return n, err
	}
	_, err = c.w.Write(crlf)
	return n, err
}

func (c *chunkedWriter) Flush() error { return c.w.Flush() }

var crlf = []byte("\r\n")

// copyChunked relays a chunked body. With rechunk dst gets chunked
// framing and the trailer fields; without, only the data.
func (r *relay) copyChunked(rechunk bool) bool {
	dst := r.dst
	if rechunk {
		r.dst = &chunkedWriter{w: dst}
		defer func() { r.dst = dst }()
	}
	for {
		line, ok := r.line()
		if !ok {
			return false
		}
		if i := bytes.IndexByte(line, ';'); i >= 0 {
			line = line[:i]
		}
		size, ok := parseHex(trimOWS(line))
		if !ok {
			r.readErr = errBadChunk
			return false
		}
		if size == 0 {
			break
		}
		if !r.copyN(size) {
			return false
		}
		if end, ok := r.line(); !ok || len(end) != 0 {
			if ok {
				r.readErr = errBadChunk
			}
			return false
		}
	}
	r.dst = dst
	if rechunk {
		if _, err := dst.Write([]byte("0\r\n")); err != nil {
			r.writeErr = err
			return false
		}
	}
	for {
		line, ok := r.line()
		if !ok {
			return false
		}
		if len(line) == 0 {
			break
		}
		if rechunk {
			_, err := dst.Write(line)
			if err == nil {
				_, err = dst.Write(crlf)
			}
			if err != nil {
				r.writeErr = err
				return false
			}
		} else if r.trailer != nil {
			if i := bytes.IndexByte(line, ':'); i > 0 {
				r.trailer(line[:i], trimOWS(line[i+1:]))
			}
		}
	}
	if rechunk {
		if _, err := dst.Write(crlf); err != nil {
			r.writeErr = err
			return false
		}
	}
	return true
}

// line reads one line of chunked framing, without its line end. It
// flushes dst first when the line has not fully arrived.
func (r *relay) line() ([]byte, bool) {
	if buf, _ := r.src.Peek(r.src.Buffered()); bytes.IndexByte(buf, '\n') < 0 && !r.wait() {
		return nil, false
	}
	line, err := r.src.ReadSlice('\n')
	if err != nil {
		if err == io.EOF || err == bufio.ErrBufferFull {
			err = errBadChunk
		}
		r.readErr = err
		return nil, false
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, true
}

func parseHex(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 15 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		n = n<<4 | int64(c)
	}
	return n, true
}
