package main

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/systemimager/sim/snapshot/snapshottest"
)

// startServer runs `sim serve` on store in a child process and returns
// its URL.
func startServer(t *testing.T, store string, extra ...string) string {
	t.Helper()
	url, _ := startServerProcess(t, store, extra...)
	return url
}

// startServerProcess is startServer, also returning the process.
func startServerProcess(t *testing.T, store string, extra ...string) (string, *exec.Cmd) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	c := simProcess(append([]string{"--store", store, "serve", "--listen", addr}, extra...)...)
	stderr, _ := c.StderrPipe()
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Process.Signal(syscall.SIGTERM)
		c.Wait()
	})
	sc := bufio.NewScanner(stderr)
	var said []string
	for sc.Scan() {
		said = append(said, sc.Text())
		if strings.Contains(sc.Text(), "serving") {
			go func() {
				for sc.Scan() {
				}
			}()
			return "http://" + addr, c
		}
	}
	t.Fatalf("sim serve did not start: %s", strings.Join(said, "\n"))
	return "", nil
}

// TestServeAndAdmin: while `sim serve` holds the store, admin commands on
// the same store still work (through the server), and nodes install,
// update and roll back over HTTP.
func TestServeAndAdmin(t *testing.T) {
	st := newStore(t)
	src := filepath.Join(t.TempDir(), "src")
	writeFiles(t, src, map[string]string{"etc/motd": "v1\n", "usr/bin/tool": strings.Repeat("x", 100000)})
	tokens := filepath.Join(t.TempDir(), "tokens")
	os.WriteFile(tokens, []byte("# push tokens\ns3cret\n"), 0o600)
	url := startServer(t, st, "--token-file", tokens)

	// Admin commands while the server runs.
	v1 := lastLine(ok(t, st, "commit", src, "--image", "hpc", "-m", "v1"))
	ok(t, st, "tag", "hpc-1.0", "hpc")
	writeFiles(t, src, map[string]string{"etc/motd": "v2\n"})
	v2 := lastLine(ok(t, st, "commit", src, "--image", "hpc", "-m", "v2"))
	if s := ok(t, st, "log", "hpc"); !strings.Contains(s, v1) || !strings.Contains(s, v2) {
		t.Fatalf("log through the server: %s", s)
	}
	if r := sim(t, st, "log", "nosuch"); r.code != 1 || !strings.Contains(r.stderr, "unknown ref") {
		t.Errorf("error through the server: %+v", r)
	}

	// A node: install v2, roll back to hpc-1.0, both over HTTP.
	nodeStore := filepath.Join(t.TempDir(), "node-store")
	root := filepath.Join(t.TempDir(), "root")
	ok(t, nodeStore, "checkout", "--from", url, "hpc", root)
	snapshottest.Equal(t, src, root)
	var co struct {
		Written  int
		Transfer struct {
			WireBytes int `json:"wire_bytes"`
		}
	}
	decodeJSON(t, ok(t, nodeStore, "checkout", "--from", url, "hpc-1.0", root, "--json"), &co)
	if co.Written != 1 || co.Transfer.WireBytes > 2000 {
		t.Errorf("rollback over HTTP: %+v; want 1 file written, under 2 kB", co)
	}
	if got, _ := os.ReadFile(filepath.Join(root, "etc/motd")); string(got) != "v1\n" {
		t.Errorf("motd after rollback: %q", got)
	}
	// Offline rollback from the node's own store: it kept hpc-1.0.
	ok(t, nodeStore, "checkout", "hpc", root)
	ok(t, nodeStore, "fsck", "--read-data")

	// Mirror: clone, then push a new commit back with the token.
	mirror := filepath.Join(t.TempDir(), "mirror")
	ok(t, st, "clone", url, mirror)
	if s := ok(t, mirror, "log", "hpc"); !strings.Contains(s, v1) {
		t.Errorf("clone lacks history: %s", s)
	}
	writeFiles(t, src, map[string]string{"etc/motd": "v3\n"})
	v3 := lastLine(ok(t, mirror, "commit", src, "--image", "hpc"))
	if r := sim(t, mirror, "push", url, "hpc"); r.code != 1 || !strings.Contains(r.stderr, "401") {
		t.Errorf("push without token: %+v", r)
	}
	ok(t, mirror, "push", "--token-file", tokens, url, "hpc")
	if s := ok(t, st, "show", "hpc"); !strings.Contains(s, v3) {
		t.Errorf("server head after push: %s", s)
	}
	ok(t, mirror, "pull")

	// The node follows hpc to v3: its reflog keeps v2 (shallow, so only
	// the reflog reaches it) until expired.
	ok(t, nodeStore, "checkout", "--from", url, "hpc", root)
	if s := ok(t, nodeStore, "gc"); !strings.Contains(s, "removed 0 blobs") {
		t.Errorf("node gc freed what its reflog reaches: %s", s)
	}
	if s := ok(t, nodeStore, "gc", "--reflog-expire", "1ns"); strings.Contains(s, "removed 0 blobs") {
		t.Errorf("node gc --reflog-expire freed nothing: %s", s)
	}
	ok(t, nodeStore, "fsck", "--read-data")
	ok(t, nodeStore, "checkout", "hpc-1.0", root)

	// Capture a "golden client" straight into the server.
	writeFiles(t, src, map[string]string{"etc/hostname": "golden\n"})
	out := ok(t, st, "commit", src, "--image", "golden", "--remote", url, "--token-file", tokens)
	if s := ok(t, st, "cat", "golden", "/etc/hostname"); s != "golden\n" {
		t.Errorf("captured image: %q (%s)", s, out)
	}
	if s := ok(t, st, "fetch-plan", url, "golden", root); !strings.Contains(s, "chunks") {
		t.Errorf("fetch-plan: %s", s)
	}
	ok(t, st, "fsck", "--read-data")
}
