package vmtest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeQMP serves one QMP connection on a unix socket: it greets, answers
// commands from replies (by name; "quit" closes the connection without a
// reply) and sends a SHUTDOWN event before each reply to "event".
func fakeQMP(t *testing.T, replies map[string]string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		conn.Write([]byte(`{"QMP": {"version": {}, "capabilities": ["oob"]}}` + "\r\n"))
		sc := bufio.NewScanner(conn)
		for sc.Scan() {
			var req struct {
				Execute string          `json:"execute"`
				ID      json.RawMessage `json:"id"`
			}
			if json.Unmarshal(sc.Bytes(), &req) != nil {
				return
			}
			switch req.Execute {
			case "quit":
				return
			case "event":
				conn.Write([]byte(`{"timestamp": {"seconds": 1700000000, "microseconds": 5}, "event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}}` + "\r\n"))
			}
			reply, ok := replies[req.Execute]
			if !ok {
				reply = `"error": {"class": "CommandNotFound", "desc": "The command ` + req.Execute + ` has not been found"}`
			}
			conn.Write([]byte(`{` + reply + `, "id": ` + string(req.ID) + "}\r\n"))
		}
	}()
	return path
}

func TestQMPClient(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	path := fakeQMP(t, map[string]string{
		"qmp_capabilities": `"return": {}`,
		"query-status":     `"return": {"status": "running", "running": true}`,
		"event":            `"return": {}`,
	})
	c, err := dialQMP(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()

	ret, err := c.execute(ctx, "query-status", nil)
	if err != nil || !strings.Contains(string(ret), `"running"`) {
		t.Fatalf("query-status = %s, %v", ret, err)
	}
	_, err = c.execute(ctx, "nope", map[string]any{"x": 1})
	var qerr *QMPError
	if !errors.As(err, &qerr) || qerr.Class != "CommandNotFound" {
		t.Errorf("unknown command: %v, want a CommandNotFound QMPError", err)
	}
	if _, err := c.execute(ctx, "event", nil); err != nil {
		t.Fatal(err)
	}
	evs, _ := c.eventsSince(0)
	if len(evs) != 1 || evs[0].Name != "SHUTDOWN" || evs[0].Reason() != "guest-shutdown" || evs[0].Time.Unix() != 1700000000 {
		t.Errorf("events = %+v, want one SHUTDOWN guest-shutdown", evs)
	}
	// QEMU may exit before it answers quit.
	if _, err := c.execute(ctx, "quit", nil); err != nil {
		t.Errorf("quit: %v", err)
	}
	<-c.done
	if _, err := c.execute(ctx, "query-status", nil); !errors.Is(err, errQMPClosed) {
		t.Errorf("after close: %v, want errQMPClosed", err)
	}
}
