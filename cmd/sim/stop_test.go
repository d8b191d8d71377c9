package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/systemimager/sim/client"
	"github.com/systemimager/sim/client/node"
	"github.com/systemimager/sim/snapshot/snapshottest"
	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
)

// stallingServer serves store st, except that the endpoints in stall
// ("/v1/fetch", ...) send a few bytes of their answer and then hang until
// the client goes away: a server that stops mid-transfer. entered gets
// one value each time a request stalls.
func stallingServer(t *testing.T, st string, stall ...string) (url string, entered <-chan string, s *store.Store) {
	t.Helper()
	s, err := store.Open(st)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	api := &simsync.Server{Store: s, WriteTokens: []string{"tok"}}
	ch := make(chan string, 16)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, p := range stall {
			if r.URL.Path == p {
				if r.Method == "GET" {
					w.WriteHeader(http.StatusOK)
					w.Write([]byte("SIMWIRE1"))
					w.(http.Flusher).Flush()
				}
				ch <- p
				// Until the client goes: the context ends, or (a
				// request with a body) reading it fails.
				gone := make(chan struct{})
				go func() { io.Copy(io.Discard, r.Body); close(gone) }()
				select {
				case <-r.Context().Done():
				case <-gone:
				}
				return
			}
		}
		api.ServeHTTP(w, r)
	})
	hs := httptest.NewServer(h)
	t.Cleanup(hs.Close)
	return hs.URL, ch, s
}

// stopped is how a signalled command ended.
type stopped struct {
	code    int
	after   time.Duration // from the signal to the exit
	stderr  string
	exitedX bool // it had exited before the signal (the work was done)
}

// signalWhen starts c, waits for ready (a condition on the world, never
// a timer), sends SIGTERM and waits for the exit.
func signalWhen(t *testing.T, c *exec.Cmd, ready func() bool) stopped {
	t.Helper()
	var errb bytes.Buffer
	c.Stderr = &errb
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { c.Wait(); close(done) }()
	for !ready() {
		select {
		case <-done:
			return stopped{code: c.ProcessState.ExitCode(), stderr: errb.String(), exitedX: true}
		case <-time.After(10 * time.Millisecond):
		}
	}
	t0 := time.Now()
	c.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		c.Process.Kill()
		<-done
		t.Fatalf("sim %s: still running 30 s after SIGTERM; stderr:\n%s", strings.Join(c.Args[1:], " "), errb.String())
	}
	return stopped{code: c.ProcessState.ExitCode(), after: time.Since(t0), stderr: errb.String()}
}

// checkStopped: the command stopped by itself (its context, not the
// watchdog), soon, with a non-zero code.
func checkStopped(t *testing.T, what string, s stopped) {
	t.Helper()
	if s.exitedX {
		t.Fatalf("%s: finished (exit %d) before it could be signalled: make the work bigger\n%s", what, s.code, s.stderr)
	}
	if s.code == 0 {
		t.Errorf("%s: exit 0 after SIGTERM", what)
	}
	if s.code < 0 {
		t.Errorf("%s: killed by the signal: it does not handle SIGTERM", what)
	}
	if strings.Contains(s.stderr, "not stopped in time") {
		t.Errorf("%s: did not stop by itself; the watchdog ended it:\n%s", what, s.stderr)
	}
	// The command itself has stopGrace; the rest is slack for a loaded
	// machine scheduling the exit.
	if s.after > stopGrace+3*time.Second {
		t.Errorf("%s: exited %v after SIGTERM", what, s.after)
	}
	t.Logf("%s: exit %d %v after SIGTERM", what, s.code, s.after.Round(time.Millisecond))
}

// TestStopOnSignal: every long command stops on SIGTERM by itself,
// keeping what it finished: a node fetching from a server that stops
// sending, a pull, a golden-client capture, sim serve with a client, a
// local commit and checkout of a big tree. The store stays consistent.
func TestStopOnSignal(t *testing.T) {
	if testing.Short() {
		t.Skip("signal test: -short")
	}
	srv := newStore(t)
	src := filepath.Join(t.TempDir(), "src")
	snapshottest.RandomFiles(t, src, 1, map[string]int{"etc/motd": 100, "usr/lib/big": 8 << 20})
	ok(t, srv, "commit", src, "--image", "img")
	fsckClean := func(st string) {
		t.Helper()
		if r := sim(t, st, "fsck", "--read-data"); r.code != 0 {
			t.Errorf("fsck after the stop: %s%s", r.stdout, r.stderr)
		}
	}

	t.Run("checkout --from, server stalls", func(t *testing.T) {
		url, entered, _ := stallingServer(t, srv, "/v1/fetch")
		node := filepath.Join(t.TempDir(), "node")
		c := simProcess("--store", node, "checkout", "--from", url, "img", filepath.Join(t.TempDir(), "root"))
		checkStopped(t, "checkout --from", signalWhen(t, c, func() bool { return len(entered) > 0 }))
		fsckClean(node)
	})
	t.Run("pull, server stalls", func(t *testing.T) {
		url, entered, _ := stallingServer(t, srv, "/v1/fetch")
		mirror := newStore(t)
		c := simProcess("--store", mirror, "pull", url)
		checkStopped(t, "pull", signalWhen(t, c, func() bool { return len(entered) > 0 }))
		fsckClean(mirror)
	})
	t.Run("commit --remote, server stalls", func(t *testing.T) {
		url, entered, _ := stallingServer(t, srv, "/v1/push")
		tok := filepath.Join(t.TempDir(), "tok")
		os.WriteFile(tok, []byte("tok\n"), 0o600)
		other := filepath.Join(t.TempDir(), "other")
		snapshottest.RandomFiles(t, other, 2, map[string]int{"big": 20 << 20})
		c := simProcess("--store", newStore(t), "commit", other, "--image", "cap", "--remote", url, "--token-file", tok)
		checkStopped(t, "commit --remote", signalWhen(t, c, func() bool { return len(entered) > 0 }))
	})
	t.Run("update, server stalls while staging", func(t *testing.T) {
		url, entered, _ := stallingServer(t, srv, "/v1/fetch")
		root := t.TempDir()
		writeFiles(t, root, map[string]string{"etc/motd": "the node's\n"})
		store := filepath.Join(root, "var/lib/sim")
		c := simProcess("--store", store, "update", "--from", url, "--root", root, "--node", "n1", "img")
		checkStopped(t, "update", signalWhen(t, c, func() bool { return len(entered) > 0 }))
		fsckClean(store)
		// Nothing was applied: staging comes first.
		if b, _ := os.ReadFile(filepath.Join(root, "etc/motd")); string(b) != "the node's\n" {
			t.Errorf("the root changed while staging: motd %q", b)
		}
		if j, _ := node.LoadJournal(store); j != nil {
			t.Errorf("a journal after an interrupted staging: %+v", j)
		}
	})
	t.Run("agent waiting for an order", func(t *testing.T) {
		url, entered, _ := stallingServer(t, srv, "/v1/agent/orders")
		root := t.TempDir()
		// An agent needs a token to speak for its node (this server's
		// admin token: it may speak for any).
		tok := filepath.Join(t.TempDir(), "tok")
		os.WriteFile(tok, []byte("tok\n"), 0o600)
		c := simProcess("--store", filepath.Join(root, "var/lib/sim"), "agent", "--server", url, "--root", root, "--node", "n1", "--token-file", tok)
		checkStopped(t, "agent", signalWhen(t, c, func() bool { return len(entered) > 0 }))
	})
	t.Run("serve with a client reading slowly", func(t *testing.T) {
		st := newStore(t)
		ok(t, st, "commit", src, "--image", "img")
		url := ""
		c := simProcess("--store", st, "serve", "--listen", "127.0.0.1:0", "--no-bittorrent")
		var errb bytes.Buffer
		c.Stderr = &errb
		pr, pw, _ := os.Pipe()
		c.Stderr = pw
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		pw.Close()
		lines := make(chan string, 64)
		go func() {
			buf := make([]byte, 4096)
			var acc []byte
			for {
				n, err := pr.Read(buf)
				acc = append(acc, buf[:n]...)
				for {
					i := bytes.IndexByte(acc, '\n')
					if i < 0 {
						break
					}
					lines <- string(acc[:i])
					acc = acc[i+1:]
				}
				if err != nil {
					close(lines)
					return
				}
			}
		}()
		for l := range lines {
			errb.WriteString(l + "\n")
			if _, addr, found := strings.Cut(l, " on http://"); found {
				url = "http://" + addr
				break
			}
		}
		if url == "" {
			t.Fatalf("sim serve did not start:\n%s", errb.String())
		}
		// A client that opens the fetch stream and does not read it.
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", url+"/v1/refs", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		var head struct {
			ID string `json:"id"`
		}
		decodeJSON(t, ok(t, st, "show", "img", "--json"), &head)
		req, _ = http.NewRequestWithContext(ctx, "GET", url+"/v1/fetch?want="+head.ID, nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			defer resp.Body.Close() // never read
		}
		done := make(chan struct{})
		go func() {
			c.Wait()
			close(done)
		}()
		t0 := time.Now()
		c.Process.Signal(syscall.SIGTERM)
		go func() {
			for l := range lines {
				errb.WriteString(l + "\n")
			}
		}()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			c.Process.Kill()
			t.Fatal("sim serve still running 30 s after SIGTERM")
		}
		checkStopped(t, "serve", stopped{code: exitCodeOrSignal(c), after: time.Since(t0), stderr: errb.String()})
	})
	t.Run("commit and checkout of a big tree", func(t *testing.T) {
		st := newStore(t)
		big := filepath.Join(t.TempDir(), "big")
		files := map[string]int{}
		for i := 0; i < 400; i++ {
			files[fmt.Sprintf("d%d/f%d", i%20, i)] = 1 << 20
		}
		snapshottest.RandomFiles(t, big, 3, files)
		// Ready once the commit has stored something: packs are being
		// written, most of the tree is still to read.
		c := simProcess("--store", st, "commit", big, "--image", "big")
		checkStopped(t, "commit", signalWhen(t, c, func() bool {
			ents, _ := os.ReadDir(filepath.Join(st, "tmp"))
			return len(ents) > 0
		}))
		fsckClean(st)
		ok(t, st, "commit", big, "--image", "big")
		dst := filepath.Join(t.TempDir(), "co")
		c = simProcess("--store", st, "checkout", "big", dst, "--no-sync")
		checkStopped(t, "checkout", signalWhen(t, c, func() bool {
			ents, _ := os.ReadDir(dst)
			return len(ents) > 0
		}))
		fsckClean(st)
		// What it wrote is a checkout to continue, not a foreign tree.
		ok(t, st, "checkout", "big", dst, "--no-sync")
		snapshottest.Equal(t, big, dst, snapshottest.IgnoreRootTimes())
	})
}

func exitCodeOrSignal(c *exec.Cmd) int {
	if c.ProcessState == nil {
		return -1
	}
	return c.ProcessState.ExitCode()
}

// TestCheckoutKeepsNodeStore: a node's store inside the directory it
// checks out (DIR/var/lib/sim, the installed layout) is never removed or
// written, whatever the image holds there, and the rest of DIR is exactly
// the image. (It used to delete its own store and hang.)
func TestCheckoutKeepsNodeStore(t *testing.T) {
	srv := newStore(t)
	src := filepath.Join(t.TempDir(), "src")
	writeFiles(t, src, map[string]string{"etc/hostname": "golden\n", "usr/bin/tool": strings.Repeat("t", 70000)})
	url, _, s := stallingServer(t, srv) // holds srv: commit through s
	commitTo := func() {
		t.Helper()
		if _, _, err := client.Commit(context.Background(), s, src, client.CommitOptions{Image: "img"}); err != nil {
			t.Fatal(err)
		}
	}
	commitTo() // no /var at all
	root := filepath.Join(t.TempDir(), "root")
	node := filepath.Join(root, "var", "lib", "sim")
	ok(t, node, "init")
	writeFiles(t, root, map[string]string{"var/log/old": "x", "etc/local": "y"})
	ok(t, node, "checkout", "--from", url, "img", root, "--force")
	if r := sim(t, node, "fsck", "--read-data"); r.code != 0 {
		t.Fatalf("the node store after the checkout: %s%s", r.stdout, r.stderr)
	}
	for _, gone := range []string{"var/log", "etc/local"} {
		if _, err := os.Lstat(filepath.Join(root, gone)); err == nil {
			t.Errorf("%s is still there", gone)
		}
	}
	// Updating again works from the same store (its record of the root).
	os.WriteFile(filepath.Join(src, "etc/hostname"), []byte("v2\n"), 0o644)
	commitTo()
	ok(t, node, "checkout", "--from", url, "img", root)
	if b, _ := os.ReadFile(filepath.Join(root, "etc/hostname")); string(b) != "v2\n" {
		t.Errorf("hostname %q after the update", b)
	}
	os.RemoveAll(node)
	os.Remove(filepath.Dir(node))
	os.Remove(filepath.Dir(filepath.Dir(node)))
	snapshottest.Equal(t, src, root, snapshottest.IgnoreRootTimes())

	// An image with a file where the store's parent directory is: refused,
	// naming the path; the store survives.
	writeFiles(t, src, map[string]string{"var/lib": "not a directory"})
	commitTo()
	node2 := filepath.Join(root, "var", "lib", "sim")
	ok(t, node2, "init")
	r := sim(t, node2, "checkout", "--from", url, "img", root, "--force")
	if r.code != 1 || !strings.Contains(r.stderr, `"var/lib"`) {
		t.Errorf("a file over the store's directory: exit %d, %s", r.code, r.stderr)
	}
	if r := sim(t, node2, "fsck"); r.code != 0 {
		t.Errorf("the store after the refused checkout: %s%s", r.stdout, r.stderr)
	}
	// A target inside the store is refused.
	if r := sim(t, node2, "checkout", "img", filepath.Join(node2, "packs", "x")); r.code != 1 || !strings.Contains(r.stderr, "inside the store") {
		t.Errorf("checkout into the store's packs: exit %d, %s", r.code, r.stderr)
	}
	if r := sim(t, node2, "checkout", "img", node2); r.code != 1 || !strings.Contains(r.stderr, "is the store") {
		t.Errorf("checkout into the store: exit %d, %s", r.code, r.stderr)
	}
}
