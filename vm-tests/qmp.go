package vmtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// Event is an asynchronous QMP event, e.g. SHUTDOWN, POWERDOWN or RESET.
type Event struct {
	Name string
	// Data is the event's "data" member; may be empty.
	Data json.RawMessage
	// Time is QEMU's timestamp of the event.
	Time time.Time
}

// Reason returns the "reason" of a SHUTDOWN or RESET event, e.g.
// "guest-shutdown" (the guest powered off), "guest-reset" (the guest
// rebooted), "host-qmp-quit" or "host-qmp-system-reset"; "" if the event has
// none.
func (e Event) Reason() string {
	var d struct {
		Reason string `json:"reason"`
	}
	if json.Unmarshal(e.Data, &d) != nil {
		return ""
	}
	return d.Reason
}

// QMPError is an error reply from QEMU to a QMP command.
type QMPError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qmp: %s: %s", e.Class, e.Desc)
}

// errQMPClosed reports a command whose reply could not arrive because QEMU
// closed the connection, which it does when it exits.
var errQMPClosed = errors.New("qmp connection closed (QEMU exited)")

type qmpMessage struct {
	// Replies.
	ID     *uint64         `json:"id"`
	Return json.RawMessage `json:"return"`
	Error  *QMPError       `json:"error"`
	// Events.
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
	// Greeting.
	QMP json.RawMessage `json:"QMP"`
}

// qmpClient is a QMP connection that serves concurrent commands and records
// every event. One reader goroutine owns the decoding side.
type qmpClient struct {
	conn net.Conn
	done chan struct{} // closed when the reader stops

	mu      sync.Mutex
	enc     *json.Encoder
	nextID  uint64
	pending map[uint64]chan qmpMessage
	events  []Event
	changed chan struct{} // closed and replaced on every new event
}

// dialQMP connects to a QMP socket, reads the greeting and leaves
// capabilities negotiation mode.
func dialQMP(ctx context.Context, path string) (*qmpClient, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(conn)
	if deadline, ok := ctx.Deadline(); ok {
		conn.SetReadDeadline(deadline)
	}
	var greeting qmpMessage
	if err := dec.Decode(&greeting); err != nil {
		conn.Close()
		return nil, fmt.Errorf("qmp greeting: %w", err)
	}
	if greeting.QMP == nil {
		conn.Close()
		return nil, fmt.Errorf("qmp greeting: unexpected message")
	}
	conn.SetReadDeadline(time.Time{})
	c := &qmpClient{
		conn:    conn,
		done:    make(chan struct{}),
		enc:     json.NewEncoder(conn),
		pending: make(map[uint64]chan qmpMessage),
		changed: make(chan struct{}),
	}
	go c.read(dec)
	if _, err := c.execute(ctx, "qmp_capabilities", nil); err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

func (c *qmpClient) read(dec *json.Decoder) {
	defer func() {
		c.mu.Lock()
		for id, ch := range c.pending {
			close(ch)
			delete(c.pending, id)
		}
		c.pending = nil
		close(c.changed)
		c.mu.Unlock()
		close(c.done)
	}()
	for {
		var m qmpMessage
		if err := dec.Decode(&m); err != nil {
			return
		}
		c.mu.Lock()
		switch {
		case m.Event != "":
			c.events = append(c.events, Event{
				Name: m.Event,
				Data: m.Data,
				Time: time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000),
			})
			close(c.changed)
			c.changed = make(chan struct{})
		case m.ID != nil:
			if ch, ok := c.pending[*m.ID]; ok {
				ch <- m
				delete(c.pending, *m.ID)
			}
		}
		c.mu.Unlock()
	}
}

// execute runs one command and returns its "return" member. A "quit" whose
// reply is lost because QEMU already exited succeeded.
func (c *qmpClient) execute(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	ch := make(chan qmpMessage, 1)
	c.mu.Lock()
	if c.pending == nil {
		c.mu.Unlock()
		return nil, fmt.Errorf("qmp %s: %w", cmd, errQMPClosed)
	}
	c.nextID++
	id := c.nextID
	c.pending[id] = ch
	req := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
		ID        uint64 `json:"id"`
	}{cmd, args, id}
	err := c.enc.Encode(req)
	if err != nil {
		delete(c.pending, id)
	}
	c.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}

	select {
	case m, ok := <-ch:
		if !ok {
			if cmd == "quit" {
				return nil, nil
			}
			return nil, fmt.Errorf("qmp %s: %w", cmd, errQMPClosed)
		}
		if m.Error != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, m.Error)
		}
		return m.Return, nil
	case <-ctx.Done():
		c.mu.Lock()
		if c.pending != nil {
			delete(c.pending, id)
		}
		c.mu.Unlock()
		return nil, fmt.Errorf("qmp %s: %w", cmd, ctx.Err())
	}
}

// eventsSince returns the events from index i on and a channel that is
// closed when more arrive or the connection ends.
func (c *qmpClient) eventsSince(i int) ([]Event, chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if i > len(c.events) {
		i = len(c.events)
	}
	return append([]Event(nil), c.events[i:]...), c.changed
}

func (c *qmpClient) close() {
	c.conn.Close()
	<-c.done
}
