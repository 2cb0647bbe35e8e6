package config

import (
	"cmp"
	"fmt"
	"strings"
)

// Error is returned by Parse and Load when a config is invalid. It lists
// every problem found, sorted by line.
type Error struct {
	Problems []Problem
}

// Error formats one problem per line.
func (e *Error) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// Problem is one thing wrong with a config.
type Problem struct {
	File   string // the name given to Parse
	Line   int    // 1-based; 0 when the problem is with the whole file
	Column int    // 1-based; 0 when unknown (only TOML syntax errors have one)
	Key    string // full dotted key, e.g. "boot.panic"; empty for syntax errors
	Msg    string
}

// String formats p as "file:line: key: msg".
func (p Problem) String() string {
	var b strings.Builder
	b.WriteString(p.File)
	if p.Line > 0 {
		fmt.Fprintf(&b, ":%d", p.Line)
		if p.Column > 0 {
			fmt.Fprintf(&b, ":%d", p.Column)
		}
	}
	b.WriteString(": ")
	if p.Key != "" {
		b.WriteString(p.Key + ": ")
	}
	b.WriteString(p.Msg)
	return b.String()
}

func compareProblems(a, b Problem) int {
	return cmp.Or(
		cmp.Compare(a.Line, b.Line),
		cmp.Compare(a.Column, b.Column),
		strings.Compare(a.Key, b.Key),
	)
}
