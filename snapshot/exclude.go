package snapshot

import (
	"bufio"
	"fmt"
	"os"
	"path"
	"strings"
)

// Matcher decides which paths are excluded, with rsync-like rules
// (README "Exclude patterns"):
//   - a pattern with a slash other than a trailing one is anchored at the
//     image root ("/proc/*", "var/cache/apt/*.bin"); a leading slash is
//     optional;
//   - a pattern without one matches the entry's name at any depth ("*.pyc");
//   - a trailing slash matches directories only ("tmp/");
//   - wildcards are path.Match's: * ? [...], none of them crossing a slash.
//
// Excluding a directory excludes everything below it.
type Matcher struct {
	pats []pattern
}

type pattern struct {
	glob     string
	anchored bool
	dirOnly  bool
	// slashes in glob: an anchored pattern matches only paths with as
	// many (no wildcard crosses a slash), which Match checks first.
	slashes int
}

// NewMatcher compiles patterns; empty ones and those starting with # are
// skipped.
func NewMatcher(patterns []string) (*Matcher, error) {
	m := &Matcher{}
	for _, p := range patterns {
		p = strings.TrimSpace(p)
		if p == "" || strings.HasPrefix(p, "#") {
			continue
		}
		var pt pattern
		if strings.HasSuffix(p, "/") && len(p) > 1 {
			pt.dirOnly = true
			p = strings.TrimRight(p, "/")
		}
		if strings.Contains(p, "/") {
			pt.anchored = true
			p = strings.TrimLeft(p, "/")
		}
		if _, err := path.Match(p, ""); err != nil || p == "" {
			return nil, fmt.Errorf("bad exclude pattern %q", p)
		}
		pt.glob = p
		pt.slashes = strings.Count(p, "/")
		m.pats = append(m.pats, pt)
	}
	return m, nil
}

// ReadPatternFile reads one pattern per line.
func ReadPatternFile(name string) ([]string, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("exclude file: %w", err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("exclude file %s: %w", name, err)
	}
	return out, nil
}

// Match reports whether rel (slash-separated, relative to the root) is
// excluded.
func (m *Matcher) Match(rel string, isDir bool) bool {
	if m == nil {
		return false
	}
	base := rel[strings.LastIndexByte(rel, '/')+1:]
	slashes := -1
	for _, p := range m.pats {
		if p.dirOnly && !isDir {
			continue
		}
		s := base
		if p.anchored {
			if slashes < 0 {
				slashes = strings.Count(rel, "/")
			}
			if p.slashes != slashes {
				continue
			}
			s = rel
		}
		if ok, _ := path.Match(p.glob, s); ok {
			return true
		}
	}
	return false
}

// Empty reports whether m excludes nothing.
func (m *Matcher) Empty() bool { return m == nil || len(m.pats) == 0 }
