package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	gosync "sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openPty opens a pseudo-terminal pair of cols x rows: the test reads
// the master, the child writes the slave.
func openPty(t *testing.T, cols, rows int) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("ptsname: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetWinsize(int(s.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Col: uint16(cols), Row: uint16(rows)}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

// output collects what a child writes, for waiting on.
type output struct {
	mu   gosync.Mutex
	b    bytes.Buffer
	more chan struct{}
}

func collect(r io.Reader) *output {
	o := &output{more: make(chan struct{}, 1)}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := r.Read(buf)
			o.mu.Lock()
			o.b.Write(buf[:n])
			o.mu.Unlock()
			select {
			case o.more <- struct{}{}:
			default:
			}
			if err != nil {
				return
			}
		}
	}()
	return o
}

// waitFor waits until the output from offset on holds every one of
// subs, and returns the offset after the match.
func (o *output) waitFor(t *testing.T, from int, subs ...string) int {
	t.Helper()
	deadline := time.After(60 * time.Second)
	for {
		o.mu.Lock()
		s := o.b.String()
		o.mu.Unlock()
		if from > len(s) {
			from = len(s)
		}
		all := true
		for _, sub := range subs {
			if !strings.Contains(s[from:], sub) {
				all = false
			}
		}
		if all {
			return len(s)
		}
		select {
		case <-o.more:
		case <-time.After(200 * time.Millisecond):
		case <-deadline:
			t.Fatalf("waited 60 s for %q; output from %d:\n%q", subs, from, s[from:])
		}
	}
}

// TestNodesWatch: sim nodes --watch, forwarded to a running server,
// shows the nodes' reports as they arrive (a line per change into a
// pipe; redrawn in place, with the summary and a progress bar, on a
// terminal), and ends cleanly within 2 s of SIGINT.
func TestNodesWatch(t *testing.T) {
	for _, tty := range []bool{false, true} {
		t.Run(map[bool]string{false: "pipe", true: "terminal"}[tty], func(t *testing.T) {
			st := newStore(t)
			tok := filepath.Join(t.TempDir(), "token")
			os.WriteFile(tok, []byte("watch-admin\n"), 0o600)
			url := startServer(t, st, "--token-file", tok, "--no-bittorrent")
			report := func(body string) {
				t.Helper()
				req, _ := http.NewRequest("POST", url+"/v1/agent/report", strings.NewReader(body))
				req.Header.Set("Authorization", "Bearer watch-admin")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode/100 != 2 {
					t.Fatalf("report: %s: %s", resp.Status, b)
				}
			}
			report(`{"node":"n1","state":"idle"}`)
			report(`{"node":"n2","state":"idle"}`)

			c := simProcess("--store", st, "nodes", "--watch")
			var out *output
			if tty {
				m, s := openPty(t, 160, 30)
				c.Stdout, c.Stderr = s, s
				out = collect(m)
			} else {
				r, w, _ := os.Pipe()
				c.Stdout, c.Stderr = w, w
				out = collect(r)
				defer r.Close()
				defer w.Close()
			}
			if err := c.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- c.Wait() }()
			defer c.Process.Kill()

			var at int
			if tty {
				at = out.waitFor(t, 0, "\033[H", "2 nodes:", "2 idle", "NODE", "PROGRESS")
			} else {
				at = out.waitFor(t, 0, "n1 idle", "n2 idle")
			}
			report(`{"node":"n2","state":"updating","phase":"staging","bytes":1000,"total":4000,"rate":500,"transport":"http"}`)
			if tty {
				at = out.waitFor(t, at, "\033[H", "1 updating", "1 idle", "staging", " 25% 1.0 kB/4.0 kB", "500 B/s")
			} else {
				at = out.waitFor(t, at, "n2 updating staging 25% 1.0 kB/4.0 kB via http")
			}
			report(`{"node":"n2","state":"failed","last_error":"health check /etc/sim/health.d/10-web failed"}`)
			if tty {
				out.waitFor(t, at, "\033[H", "1 failed", "health check /etc/sim/health.d/10-web failed")
			} else {
				out.waitFor(t, at, "n2 failed", "health check")
				out.mu.Lock()
				n1 := strings.Count(out.b.String(), "n1 idle")
				out.mu.Unlock()
				if n1 != 1 {
					t.Errorf("n1 did not change but was printed %d times", n1)
				}
			}
			sent := time.Now()
			c.Process.Signal(syscall.SIGINT)
			select {
			case err := <-exited:
				if code := c.ProcessState.ExitCode(); code != 0 && code != 130 {
					t.Errorf("sim nodes --watch ended with %v after SIGINT", err)
				}
				if d := time.Since(sent); d > 2*time.Second {
					t.Errorf("sim nodes --watch took %v to stop after SIGINT (the bound is 2 s)", d)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("sim nodes --watch did not stop within 10 s of SIGINT")
			}
		})
	}
}

// TestScreenCut: lines are cut to the terminal's width by what shows,
// not by the bytes of colour sequences or of multibyte characters.
func TestScreenCut(t *testing.T) {
	for _, c := range []struct {
		in   string
		cols int
		want string
	}{
		{"abcdef", 0, "abcdef"},
		{"abcdef", 3, "abc\033[0m"},
		{"abc", 3, "abc"},
		{"\033[31mabcdef\033[0m", 4, "\033[31mabcd\033[0m"},
		{"██░░xyz", 5, "██░░x\033[0m"},
	} {
		if got := cut(c.in, c.cols); got != c.want {
			t.Errorf("cut(%q, %d) = %q, want %q", c.in, c.cols, got, c.want)
		}
	}
	var b bytes.Buffer
	s := newScreen(&b, terminal{Cols: 20, Rows: 4})
	s.draw([]string{"1", "2", "3", "4", "5", "6"})
	if got := b.String(); !strings.Contains(got, "1\033[K\n2\033[K\n… 4 more lines") || strings.Contains(got, "3\033[K") {
		t.Errorf("a view taller than the terminal: %q", got)
	}
}

// TestRolloutStatusWatch: on a terminal, sim rollout status --watch
// redraws the whole status in place as the rollout changes, and ends by
// itself, exit 0, when the rollout does (here: aborted).
func TestRolloutStatusWatch(t *testing.T) {
	st := newStore(t)
	tok := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tok, []byte("watch-admin\n"), 0o600)
	img := t.TempDir()
	writeFiles(t, img, map[string]string{"etc/motd": "one\n"})
	ok(t, st, "commit", img, "--image", "web", "-m", "one")
	ok(t, st, "node", "add", "n1", "--image", "web")
	url := startServer(t, st, "--token-file", tok, "--no-bittorrent")
	req, _ := http.NewRequest("POST", url+"/v1/agent/report", strings.NewReader(`{"node":"n1","state":"idle"}`))
	req.Header.Set("Authorization", "Bearer watch-admin")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode/100 != 2 {
		t.Fatalf("report: %v %v", resp, err)
	}
	id := lastLine(ok(t, st, "rollout", "start", "web", "--nodes", "n1"))

	m, s := openPty(t, 120, 30)
	c := simProcess("--store", st, "rollout", "status", id, "--watch")
	c.Stdout, c.Stderr = s, s
	out := collect(m)
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- c.Wait() }()
	defer c.Process.Kill()
	at := out.waitFor(t, 0, "\033[H", "rollout "+id+": running", "NODE", "n1")
	ok(t, st, "rollout", "abort", id)
	out.waitFor(t, at, "\033[H", "rollout "+id+": aborted")
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("sim rollout status --watch: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("sim rollout status --watch did not end with its rollout")
	}
}
