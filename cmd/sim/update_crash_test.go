package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/systemimager/sim/client/install"
	"github.com/systemimager/sim/client/node"
	"github.com/systemimager/sim/snapshot/snapshottest"
)

// A test node: a root checked out from the corpus with its store inside
// (the installed layout) and an identity of its own.
type testNode struct {
	name, root, store string
	// preserved: path (relative) → the bytes it must keep.
	preserved map[string][]byte
}

// preservedPaths are what snapshottest.Diff leaves out when a node is
// compared with its image: the paths an update keeps as they are.
var preservedPaths = []string{"proc", "sys", "dev", "run", "tmp", "var/tmp", "var/spool", "var/log", "var/lib/sim",
	"etc/hostname", "etc/machine-id", "etc/ssh/ssh_host_*", "etc/systemd/network", "etc/hosts"}

// newTestNode checks ref out from url into base/name (the store at
// ROOT/var/lib/sim) with runner (in-process or in a lab host), gives it
// an identity (hostname, network file, machine id, ssh host key, a log
// file) and an installed.json naming it and its server.
func newTestNode(t *testing.T, base, name, url, ref, commit string, run func(args ...string)) *testNode {
	t.Helper()
	n := &testNode{name: name, root: filepath.Join(base, name), preserved: map[string][]byte{}}
	n.store = filepath.Join(n.root, install.StoreDir)
	run("--store", n.store, "checkout", "--from", url, ref, n.root, "--no-sync")
	id := make([]byte, 16)
	rand.Read(id)
	key := make([]byte, 64)
	rand.Read(key)
	files := map[string]string{
		"etc/hostname":                       name + "\n",
		"etc/machine-id":                     hex.EncodeToString(id) + "\n",
		"etc/systemd/network/10-sim.network": "# written by sim install\n[Match]\nName=eth0\n\n[Network]\nDHCP=yes\n",
		"etc/ssh/ssh_host_ed25519_key":       "-----BEGIN OPENSSH PRIVATE KEY-----\n" + hex.EncodeToString(key) + "\n-----END OPENSSH PRIVATE KEY-----\n",
		"var/log/node.log":                   name + " booted\n" + name + " worked\n",
	}
	writeFiles(t, n.root, files)
	os.Chmod(filepath.Join(n.root, "etc/ssh/ssh_host_ed25519_key"), 0o600)
	for p, c := range files {
		n.preserved[p] = []byte(c)
	}
	in := map[string]any{"node": name, "image": "deb", "commit": commit, "server": url, "hostname": name,
		"time": time.Now().UTC(), "disk": "/dev/null", "layout_commit": strings.Repeat("0", 64)}
	b, _ := json.Marshal(in)
	if err := os.WriteFile(install.InstalledPath(n.store), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return n
}

// check: the root is exactly the corpus tree want outside the preserved
// paths, which hold what they held; /etc/hosts has the node's line; no
// journal is left; fsck of the node store is clean (when no agent holds
// it).
func (n *testNode) check(t *testing.T, want string) {
	t.Helper()
	for _, p := range n.differences(t, want) {
		t.Errorf("%s", p)
	}
	if r := sim(t, n.store, "fsck"); strings.Contains(r.stderr, "in use by another sim process") {
		// Its agent runs: the store is checked where it stops.
	} else if r.code != 0 || strings.Contains(r.stdout, "error:") {
		t.Errorf("%s: fsck of the node store: %d %s%s", n.name, r.code, r.stdout, r.stderr)
	}
}

// differences are the ways the node is not exactly the tree want (as
// check has it, without the fsck), one sentence each; none when it is.
// The kill campaign counts them rather than failing at once.
func (n *testNode) differences(t *testing.T, want string) []string {
	t.Helper()
	var out []string
	ignore := preservedPaths
	if _, err := os.Stat(filepath.Join(want, "etc/ssh")); err != nil {
		ignore = append(ignore, "etc/ssh") // it keeps the node's host key
	}
	d, err := snapshottest.Diff(want, n.root, snapshottest.IgnorePaths(ignore...))
	if err != nil {
		t.Fatal(err)
	}
	if len(d) > 0 {
		out = append(out, fmt.Sprintf("%s differs from %s outside the preserved paths: %v", n.name, filepath.Base(want), d[:min(len(d), 8)]))
	}
	for p, c := range n.preserved {
		if got, err := os.ReadFile(filepath.Join(n.root, p)); err != nil || !bytes.Equal(got, c) {
			out = append(out, fmt.Sprintf("%s: preserved %s changed: %q %v", n.name, p, got, err))
		}
	}
	if h, _ := os.ReadFile(filepath.Join(n.root, "etc/hosts")); !strings.Contains(string(h), "127.0.1.1\t"+n.name+"\n") {
		out = append(out, fmt.Sprintf("%s: /etc/hosts lacks its line: %q", n.name, h))
	}
	if j, err := node.LoadJournal(n.store); err != nil || j != nil {
		out = append(out, fmt.Sprintf("%s: journal left: %+v %v", n.name, j, err))
	}
	return out
}

func (n *testNode) state(t *testing.T) *node.State {
	t.Helper()
	s, err := node.LoadState(n.store)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestUpdateCrash kills sim update and sim rollback with SIGKILL right
// after the Nth change of their apply, at 24 points from the first
// journal write through the checkout, the identity, the bootloader and
// health phases to the last state write; after each, the next sim
// update, sim rollback or sim agent completes it, and the root is exactly
// the target outside the preserved paths, which are untouched, and the
// node store's fsck is clean. The points are counts of changes, not
// times: the same on a loaded machine.
func TestUpdateCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("update crash test: -short")
	}
	c := corpus(t)
	base := t.TempDir()
	srv := filepath.Join(base, "srv")
	ok(t, srv, "init")
	for _, v := range []string{"v1", "v2"} {
		ok(t, srv, "commit", filepath.Join(c, v), "--image", "deb", "-m", v)
		ok(t, srv, "tag", v, "deb")
	}
	v1 := head(t, srv, "v1")
	url := startServer(t, srv)
	n := newTestNode(t, base, "n1", url, "v1", v1, func(args ...string) {
		if code := run(t.Context(), args, &env{stdout: os.Stdout, stderr: os.Stderr}); code != 0 {
			t.Fatalf("sim %s: exit %d", strings.Join(args, " "), code)
		}
	})
	// Its own token, in its store: sim update asks the server what n1 is
	// assigned, and sim agent reports, as n1.
	nodeToken(t, srv, "n1", n.store)

	cmd := func(env []string, args ...string) *exec.Cmd {
		c := simProcess(append([]string{"--store", n.store}, args...)...)
		c.Env = append(c.Env, env...)
		return c
	}
	update := []string{"update", "--root", n.root, "--health", "test -d /etc", "v2"}
	rollback := []string{"rollback", "--root", n.root}
	runOK := func(env []string, args ...string) {
		t.Helper()
		if out, err := cmd(env, args...).CombinedOutput(); err != nil {
			t.Fatalf("sim %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	// A cycle to settle the root (the first update also fixes what the
	// identity files disturbed), then one counting the changes.
	runOK(nil, update...)
	runOK(nil, rollback...)
	countFile := filepath.Join(base, "count")
	count := func(args []string) int {
		runOK([]string{"SIM_TEST_COUNT_OPS=" + countFile}, args...)
		b, _ := os.ReadFile(countFile)
		k, _ := strconv.Atoi(string(b))
		return k
	}
	nUp := count(update)
	n.check(t, filepath.Join(c, "v2"))
	nDown := count(rollback)
	n.check(t, filepath.Join(c, "v1"))
	t.Logf("an update v1→v2 makes %d changes, its rollback %d", nUp, nDown)
	if nUp < 100 || nDown < 100 {
		t.Fatalf("too few changes to kill at (%d, %d)", nUp, nDown)
	}
	points := func(k int) []int {
		// Spread over the checkout, and each of the last phases' steps.
		// The last six are the journal's phases (identity, boot,
		// health, done), the state write and the journal's removal.
		return []int{1, 2, k / 8, k / 3, 2 * k / 3, k - 7, k - 6, k - 5, k - 4, k - 3, k - 2, k - 1}
	}
	type round struct {
		args []string
		at   int
		want string
	}
	var rounds []round
	up, down := points(nUp), points(nDown)
	for i := range max(len(up), len(down)) {
		if i < len(up) {
			rounds = append(rounds, round{update, up[i], "v2"})
		}
		if i < len(down) {
			rounds = append(rounds, round{rollback, down[i], "v1"})
		}
	}
	killed := 0
	for i, r := range rounds {
		c := cmd([]string{"SIM_TEST_KILL_AFTER=" + strconv.Itoa(r.at)}, r.args...)
		out, err := c.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signaled() {
			killed++
			if j, _ := node.LoadJournal(n.store); j == nil && r.at < nUp-1 {
				t.Errorf("round %d: killed after change %d with no journal", i, r.at)
			}
		} else if err != nil {
			t.Fatalf("round %d (%s, kill after %d): %v\n%s", i, r.args[0], r.at, err, out)
		}
		// Completed by each of the three ways in turn.
		switch i % 3 {
		case 0:
			if r.want == "v2" {
				runOK(nil, update...)
			} else {
				runOK(nil, "update", "--root", n.root, "v1")
			}
		case 1:
			if i%6 == 1 {
				// Every other time without its token: the journal is
				// completed first, which needs no server, and only
				// then does the agent stop for want of a token.
				tf := filepath.Join(n.store, install.TokenName)
				if err := os.Rename(tf, tf+".away"); err != nil {
					t.Fatal(err)
				}
				n.agentRecovers(t, cmd, r.want)
				if err := os.Rename(tf+".away", tf); err != nil {
					t.Fatal(err)
				}
			} else {
				n.agentRecovers(t, cmd, r.want)
			}
		case 2:
			if r.args[0] == "rollback" {
				runOK(nil, rollback...)
			} else {
				runOK(nil, update...)
			}
		}
		n.check(t, filepath.Join(corpus(t), r.want))
		if s := n.state(t); s.Status == node.Partial || s.Current.Commit.String() != head(t, srv, r.want) {
			t.Errorf("round %d: node.json after recovery: %s at %s; want %s", i, s.Status, s.Current.Commit.Short(), r.want)
		}
		if t.Failed() {
			t.Fatalf("round %d (%s killed after change %d of %d): see above\n%s", i, r.args[0], r.at, map[bool]int{true: nUp, false: nDown}[r.want == "v2"], out)
		}
	}
	t.Logf("%d rounds, %d killed mid-apply", len(rounds), killed)
	if killed < 20 {
		t.Fatalf("only %d kills landed in an apply; want at least 20", killed)
	}
}

// agentRecovers starts sim agent, which completes the journal at start,
// and waits until the node's record says it is at want.
func (n *testNode) agentRecovers(t *testing.T, cmd func([]string, ...string) *exec.Cmd, want string) {
	t.Helper()
	a := cmd(nil, "agent", "--root", n.root, "--poll", "1s")
	logf, err := os.CreateTemp(t.TempDir(), "agent-*.log")
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	a.Stdout, a.Stderr = logf, logf
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		a.Process.Signal(syscall.SIGTERM)
		a.Wait()
	}()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		// The journal is removed only after node.json says how the
		// apply ended.
		if j, _ := node.LoadJournal(n.store); j == nil {
			return
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("sim agent did not complete the journal:\n%s", b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
