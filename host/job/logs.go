package job

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// A job's log is one file of lines "<RFC 3339 time> <stream> <text>", in
// the order hostd read them; stream is stdout or stderr. At maxLogBytes
// the file moves to log.1 (replacing the previous one) and a new one
// starts, so a job keeps at most twice that.
const (
	logFile     = "log"
	oldLogFile  = "log.1"
	maxLogBytes = 8 << 20
	// maxLine splits longer lines, so a job that never writes a newline
	// cannot make hostd buffer without bound.
	maxLine = 64 << 10
)

// Streams.
const (
	Stdout = "stdout"
	Stderr = "stderr"
)

// LogLine is one line of a job's output.
type LogLine struct {
	Time   time.Time `json:"time"`
	Stream string    `json:"stream"`
	Text   string    `json:"text"`
}

// jobLog appends a job's lines and wakes the readers that follow it.
type jobLog struct {
	dir string

	mu      sync.Mutex
	f       *os.File
	size    int64
	changed chan struct{} // closed at the next append
}

func openLog(dir string) (*jobLog, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, logFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &jobLog{dir: dir, f: f, size: st.Size(), changed: make(chan struct{})}, nil
}

// copy reads r line by line into the log as stream until r ends.
func (l *jobLog) copy(stream string, r io.Reader) {
	br := bufio.NewReaderSize(r, maxLine)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			l.append(stream, strings.TrimSuffix(string(line), "\n"))
		}
		if err != nil && err != bufio.ErrBufferFull {
			return
		}
	}
}

func (l *jobLog) append(stream, text string) {
	line := fmt.Sprintf("%s %s %s\n", time.Now().UTC().Format(time.RFC3339Nano), stream, text)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return
	}
	if l.size+int64(len(line)) > maxLogBytes {
		l.rotate()
	}
	n, _ := l.f.WriteString(line)
	l.size += int64(n)
	close(l.changed)
	l.changed = make(chan struct{})
}

func (l *jobLog) rotate() {
	path := filepath.Join(l.dir, logFile)
	if err := os.Rename(path, filepath.Join(l.dir, oldLogFile)); err != nil {
		return
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return
	}
	l.f.Close()
	l.f, l.size = f, 0
}

// wait returns a channel closed at the next append.
func (l *jobLog) wait() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.changed
}

func (l *jobLog) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
}

// LogOptions select what Logs returns.
type LogOptions struct {
	// Stream is Stdout, Stderr or "" for both.
	Stream string
	// Tail returns only the last Tail lines; 0 means all.
	Tail int
	// Follow keeps the stream open for new lines until ctx ends or the
	// job is removed.
	Follow bool
}

// readLines parses the log files of dir from the start, old file first.
func readLines(dir string, stream string) ([]LogLine, int64, error) {
	var out []LogLine
	var offset int64
	for _, name := range []string{oldLogFile, logFile} {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return nil, 0, err
		}
		if name == logFile {
			offset = int64(len(data))
		}
		for _, line := range strings.SplitAfter(string(data), "\n") {
			if l, ok := parseLine(line); ok && (stream == "" || l.Stream == stream) {
				out = append(out, l)
			}
		}
	}
	return out, offset, nil
}

func parseLine(line string) (LogLine, bool) {
	line, complete := strings.CutSuffix(line, "\n")
	if !complete {
		return LogLine{}, false
	}
	ts, rest, ok1 := strings.Cut(line, " ")
	stream, text, ok2 := strings.Cut(rest, " ")
	t, err := time.Parse(time.RFC3339Nano, ts)
	if !ok1 || !ok2 || err != nil {
		return LogLine{}, false
	}
	return LogLine{Time: t, Stream: stream, Text: text}, true
}

// follow sends the lines appended to dir's log after offset to emit
// until ctx ends or gone is closed. A rotation restarts it at the new
// file's beginning.
func follow(ctx context.Context, l *jobLog, gone <-chan struct{}, offset int64, stream string, emit func(LogLine) error) error {
	path := filepath.Join(l.dir, logFile)
	var partial string
	for {
		changed := l.wait()
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		st, err := f.Stat()
		if err == nil && st.Size() < offset {
			offset, partial = 0, "" // rotated
		}
		f.Seek(offset, io.SeekStart)
		data, err := io.ReadAll(f)
		f.Close()
		if err != nil {
			return err
		}
		offset += int64(len(data))
		chunk := partial + string(data)
		lines := strings.SplitAfter(chunk, "\n")
		partial = lines[len(lines)-1]
		for _, line := range lines[:len(lines)-1] {
			if ll, ok := parseLine(line); ok && (stream == "" || ll.Stream == stream) {
				if err := emit(ll); err != nil {
					return err
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-gone:
			return nil
		case <-changed:
		}
	}
}
