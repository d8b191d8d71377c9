package progress

import (
	"bytes"
	"strings"
	gosync "sync"
	"testing"
	"time"
)

// lockedBuffer is a terminal stand-in: mpb writes from its own goroutine.
type lockedBuffer struct {
	mu gosync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// waitFor waits (at most a minute: a loaded machine) until out holds s.
func waitFor(t *testing.T, out *lockedBuffer, s string) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !strings.Contains(out.String(), s); {
		if time.Now().After(deadline) {
			got := out.String()
			t.Fatalf("no %q in the output, which ends %q", s, got[max(0, len(got)-300):])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestShow: the bar follows the counter as the work moves (bytes, of
// the total once it is known, items), is redrawn in place (cursor up,
// erase), and stop removes it; a second stop does nothing.
func TestShow(t *testing.T) {
	for _, tc := range []struct {
		name, unit string
		total      int64
		want       []string
	}{
		{"no total", "files", 0, []string{"commit:", "2.0 MB", "7 files"}},
		{"with total", "", 4_000_000, []string{"fetch:", "50 %", "2.0 MB / 4.0 MB"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := &lockedBuffer{}
			var c Counter
			c.Total.Store(tc.total)
			stop := Show(Terminal{Out: out, Cols: 100}, tc.want[0][:len(tc.want[0])-1], tc.unit, c.Figures)
			c.Bytes.Store(1_000_000)
			waitFor(t, out, "1.0 MB")
			c.Bytes.Store(2_000_000)
			c.Items.Store(7)
			for _, w := range tc.want {
				waitFor(t, out, w)
			}
			stop()
			stop()
			got := out.String()
			if !strings.Contains(got, "\x1b[1A\x1b[J") {
				t.Errorf("not redrawn in place: %q", got)
			}
			// What follows the last frame erases it.
			last := strings.LastIndex(got, "2.0 MB")
			if !strings.Contains(got[last:], "\x1b[J") {
				t.Errorf("the bar stays after stop: %q", got[last:])
			}
		})
	}
}
