package accesslog

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func entry(id string) Entry {
	return Entry{
		Time:      time.Date(2026, 3, 4, 5, 6, 7, 8_000_000, time.UTC),
		Method:    "GET",
		Host:      "app.example.com",
		Path:      "/page?x=1",
		Proto:     "HTTP/1.1",
		Status:    200,
		Bytes:     14,
		Duration:  1234567 * time.Nanosecond,
		Backend:   "10.0.0.2:8080",
		RequestID: id,
		Route:     "web",
		Client:    "192.0.2.1:40000",
	}
}

func TestLine(t *testing.T) {
	e := entry("rid-1")
	got := string((&Writer{}).appendLine(nil, &e))
	want := "time=2026-03-04T05:06:07.009Z level=INFO msg=request client=192.0.2.1:40000 method=GET host=app.example.com " +
		"path=/page?x=1 proto=HTTP/1.1 status=200 bytes=14 duration=1.234ms backend=10.0.0.2:8080 route=web request_id=rid-1\n"
	if got != want {
		t.Errorf("line\n%s\nwant\n%s", got, want)
	}
	e = Entry{Time: e.Time, Method: "GET", Host: "nowhere.example.org", Path: "/", Proto: "HTTP/1.1", Status: 404, Duration: 80 * time.Microsecond, Client: e.Client}
	got = string((&Writer{}).appendLine(nil, &e))
	if !strings.Contains(got, " duration=0.080ms backend=\"\" route=\"\" request_id=\"\"\n") {
		t.Errorf("a request that reached no backend: %s", got)
	}
}

// TestLineTime: the time is when the response ended, as log/slog writes
// it, in the entry's zone, each second formatted afresh.
func TestLineTime(t *testing.T) {
	w := &Writer{}
	start := time.Date(2026, 3, 4, 5, 6, 7, 999_000_000, time.FixedZone("", 3600))
	for _, end := range []time.Time{start, start.Add(time.Millisecond), start.Add(2 * time.Second), start.UTC(), start} {
		e := entry("x")
		e.Time, e.Duration = start, end.Sub(start)
		e.Time = e.Time.In(end.Location())
		got, _, _ := strings.Cut(string(w.appendLine(nil, &e)), " ")
		if want := "time=" + end.Format(timeLayout); got != want {
			t.Errorf("%s, want %s", got, want)
		}
	}
}

// parseLine reads a line's keys and values, quoted or not, as a log
// reader would.
func parseLine(t *testing.T, line string) (keys []string, values map[string]string) {
	t.Helper()
	values = map[string]string{}
	for rest := line; rest != ""; {
		k, v, ok := strings.Cut(rest, "=")
		if !ok || strings.ContainsAny(k, " \"") {
			t.Fatalf("no key=value at %q", rest)
		}
		if strings.HasPrefix(v, `"`) {
			q, err := strconv.QuotedPrefix(v)
			if err != nil {
				t.Fatalf("%s: bad quoting in %q", k, v)
			}
			rest = v[len(q):]
			v, _ = strconv.Unquote(q)
		} else {
			v, rest, _ = strings.Cut(v, " ")
			rest = " " + rest
			if rest == " " {
				rest = ""
			}
		}
		if rest != "" && !strings.HasPrefix(rest, " ") {
			t.Fatalf("%s: value runs into %q", k, rest)
		}
		rest = strings.TrimPrefix(rest, " ")
		keys = append(keys, k)
		values[k] = v
	}
	return keys, values
}

// TestLineCannotBeForged: whatever a client puts in the request line
// and Host header, its request makes one line, with the same keys, each
// value reading back as it was.
func TestLineCannotBeForged(t *testing.T) {
	wantKeys := "time level msg client method host path proto status bytes duration backend route request_id"
	for _, tc := range []struct{ host, path, id string }{
		{"app.example.com", "/a\nb", "x"},
		{"app.example.com", "/a\r\ntime=2026 level=INFO msg=request status=200", "x"},
		{"app.example.com", `/"quoted" status=500`, "x"},
		{"app.example.com", `/back\slash\"`, "x"},
		{"evil=1", "/ route=admin", "id with space"},
		{"", "", ""},
		{"héllo.example.com", "/\u2028line-separator", "\x00\x7f"},
		{"app.example.com", "/invalid-utf8-\xff\xfe", "x"},
	} {
		e := entry(tc.id)
		e.Host, e.Path = tc.host, tc.path
		line := string((&Writer{}).appendLine(nil, &e))
		if strings.Count(line, "\n") != 1 || !strings.HasSuffix(line, "\n") {
			t.Errorf("host %q path %q: not one line: %q", tc.host, tc.path, line)
			continue
		}
		keys, v := parseLine(t, strings.TrimSuffix(line, "\n"))
		if strings.Join(keys, " ") != wantKeys {
			t.Errorf("host %q path %q: keys %v in %q", tc.host, tc.path, keys, line)
		}
		if v["host"] != tc.host || v["path"] != tc.path || v["request_id"] != tc.id {
			t.Errorf("host %q path %q id %q read back as %q %q %q", tc.host, tc.path, tc.id, v["host"], v["path"], v["request_id"])
		}
	}
}

// syncBuffer is an output whose Writes a test can wait for.
type syncBuffer struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	writes chan struct{}
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	b.buf.Write(p)
	b.mu.Unlock()
	select {
	case b.writes <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (b *syncBuffer) lines() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	lines := strings.SplitAfter(b.buf.String(), "\n")
	return lines[:len(lines)-1]
}

func waitWrite(t *testing.T, b *syncBuffer) {
	t.Helper()
	select {
	case <-b.writes:
	case <-time.After(10 * time.Second):
		t.Fatal("no write")
	}
}

func TestCloseFlushes(t *testing.T) {
	out := &syncBuffer{}
	w := New(Config{Out: out, FlushInterval: time.Hour})
	for i := range 3 {
		w.Log(entry(fmt.Sprint("r", i)))
	}
	w.Close()
	lines := out.lines()
	if len(lines) != 3 || !strings.HasSuffix(lines[2], " request_id=r2\n") {
		t.Errorf("after Close: %q", lines)
	}
	w.Log(entry("late"))
	w.Close()
	if n := len(out.lines()); n != 3 {
		t.Errorf("%d lines after a Log past Close, want it discarded", n)
	}
}

func TestFlushBySizeAndInterval(t *testing.T) {
	e := entry("r0")
	size := len((&Writer{}).appendLine(nil, &e))
	out := &syncBuffer{writes: make(chan struct{}, 1)}
	w := New(Config{Out: out, FlushSize: 3 * size, FlushInterval: time.Hour})
	defer w.Close()
	for range 3 {
		w.Log(e)
	}
	waitWrite(t, out)
	if n := len(out.lines()); n != 3 {
		t.Errorf("%d lines written once FlushSize waited, want 3", n)
	}

	out = &syncBuffer{writes: make(chan struct{}, 1)}
	w = New(Config{Out: out, FlushInterval: 10 * time.Millisecond})
	defer w.Close()
	w.Log(e)
	waitWrite(t, out)
	if n := len(out.lines()); n != 1 {
		t.Errorf("%d lines written after FlushInterval, want 1", n)
	}
}

// blockingWriter blocks its first Write until release is closed.
type blockingWriter struct {
	syncBuffer
	entered, release chan struct{}
	first            sync.Once
}

func (b *blockingWriter) Write(p []byte) (int, error) {
	b.first.Do(func() {
		close(b.entered)
		<-b.release
	})
	return b.syncBuffer.Write(p)
}

// TestDropsWhileOutputBlocks: while the output blocks, Log goes on
// without waiting, keeps what fits in MaxBuffered and drops the rest,
// whose count is written once the output takes lines again.
func TestDropsWhileOutputBlocks(t *testing.T) {
	e := entry("r0")
	size := len((&Writer{}).appendLine(nil, &e))
	out := &blockingWriter{entered: make(chan struct{}), release: make(chan struct{})}
	w := New(Config{Out: out, FlushSize: 2 * size, MaxBuffered: 5 * size, FlushInterval: time.Hour})
	for i := range 2 {
		w.Log(entry(fmt.Sprint("r", i)))
	}
	<-out.entered // r0 and r1 are being written
	for i := 2; i < 10; i++ {
		w.Log(entry(fmt.Sprint("r", i)))
	}
	close(out.release)
	w.Close()

	lines := out.lines()
	if len(lines) != 8 {
		t.Fatalf("%d lines, want r0 to r6 and the count of the 3 dropped:\n%s", len(lines), strings.Join(lines, ""))
	}
	for i, l := range lines[:7] {
		if !strings.HasSuffix(l, fmt.Sprintf(" request_id=r%d\n", i)) {
			t.Errorf("line %d: %s", i, l)
		}
	}
	if !strings.Contains(lines[7], " level=WARN ") || !strings.HasSuffix(lines[7], " dropped=3\n") {
		t.Errorf("last line %s, want the count of dropped lines", lines[7])
	}
}

// failingWriter refuses its first Write.
type failingWriter struct {
	syncBuffer
	failed chan struct{}
	first  sync.Once
}

func (f *failingWriter) Write(p []byte) (int, error) {
	fail := false
	f.first.Do(func() { fail = true })
	if fail {
		defer close(f.failed)
		return 0, errors.New("broken pipe")
	}
	return f.syncBuffer.Write(p)
}

func TestRefusedLinesCountAsDropped(t *testing.T) {
	e := entry("r0")
	size := len((&Writer{}).appendLine(nil, &e))
	out := &failingWriter{failed: make(chan struct{})}
	w := New(Config{Out: out, FlushSize: 2 * size, FlushInterval: time.Hour})
	w.Log(entry("r0"))
	w.Log(entry("r1"))
	<-out.failed
	w.Log(entry("r2"))
	w.Close()
	lines := out.lines()
	if len(lines) != 2 || !strings.HasSuffix(lines[0], " request_id=r2\n") || !strings.HasSuffix(lines[1], " dropped=2\n") {
		t.Errorf("lines %q, want r2 and the count of the 2 refused", lines)
	}
}

func TestConcurrentLog(t *testing.T) {
	out := &syncBuffer{}
	w := New(Config{Out: out, FlushSize: 4 << 10, MaxBuffered: 8 << 20})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				w.Log(entry(fmt.Sprintf("g%d-%d", g, i)))
			}
		})
	}
	wg.Wait()
	w.Close()
	lines := out.lines()
	seen := map[string]bool{}
	for _, l := range lines {
		_, v := parseLine(t, strings.TrimSuffix(l, "\n"))
		seen[v["request_id"]] = true
	}
	if len(lines) != 4000 || len(seen) != 4000 {
		t.Errorf("%d lines, %d request IDs, want 4000 of each", len(lines), len(seen))
	}
}

func BenchmarkLog(b *testing.B) {
	w := New(Config{Out: io.Discard})
	defer w.Close()
	e := entry("0123456789abcdef0123456789abcdef")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			w.Log(e)
		}
	})
}
