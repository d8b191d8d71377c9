package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	gosync "sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/systemimager/sim/client/node"
	"github.com/systemimager/sim/client/rollout"
)

// labProc is a process in a lab host whose log is kept in a file.
type labProc struct {
	name string
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{}
}

func (l *lab) start(t *testing.T, host, name string, env []string, args ...string) *labProc {
	t.Helper()
	logf, err := os.CreateTemp(t.TempDir(), name+"-*.log")
	if err != nil {
		t.Fatal(err)
	}
	c := l.sim(host, args...)
	c.Env = append(c.Env, env...)
	c.Stdout, c.Stderr = logf, logf
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	p := &labProc{name: name, cmd: c, log: logf, done: make(chan struct{})}
	go func() { c.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("%s log:\n%s", name, lastLines(string(b), 40))
		}
	})
	return p
}

// stop sends SIGTERM and waits for the exit (the lab's down kills what
// is left).
func (p *labProc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// waitFor polls cond (a condition on the world, never a timer) until it
// holds or the deadline passes, then fails with what it last said.
func waitFor(t *testing.T, what string, limit time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %s", what, limit, msg)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

type nodesOut struct {
	Nodes []struct {
		Name     string     `json:"name"`
		Current  string     `json:"current"`
		State    string     `json:"state"`
		LastSeen *time.Time `json:"last_seen"`
		Drift    int        `json:"drift"`
	} `json:"nodes"`
}

// TestLabFleet: a server and 8 running nodes in network namespaces, each
// a root checked out from v2 with an identity of its own and its store
// inside, each with its agent. A rollout of v3 (a canary and two waves)
// during which one agent is killed mid-apply and the server restarted
// completes: every node is v3 outside the preserved paths, which are
// byte for byte what they were. A commit whose health check fails halts
// its rollout after the canary, which is back on v3 exactly, and no
// other node was touched. Five changes injected on one node are exactly
// what sim drift reports, and nothing on the others.
func TestLabFleet(t *testing.T) {
	if testing.Short() {
		t.Skip("fleet lab: long (make test runs it)")
	}
	c := corpus(t)
	const nn = 8
	l := newNamedLab(t, "simf", nn)
	base := t.TempDir()
	srv := filepath.Join(base, "srv")
	ok(t, srv, "init")
	for _, v := range []string{"v2", "v3"} {
		ok(t, srv, "commit", filepath.Join(c, v), "--image", "deb", "-m", v)
		ok(t, srv, "tag", v, "deb")
	}
	// v4: v3 with a health check that fails (the image's own, greenboot
	// style).
	v4src := filepath.Join(base, "v4src")
	if out, err := exec.Command("cp", "-a", filepath.Join(c, "v3"), v4src).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	writeFiles(t, v4src, map[string]string{"etc/sim/health.d/50-disk": "#!/bin/sh\necho \"disk check: /srv/data is not mounted\" >&2\nexit 3\n"})
	os.Chmod(filepath.Join(v4src, "etc/sim/health.d/50-disk"), 0o755)
	ok(t, srv, "commit", v4src, "--image", "deb", "-m", "v4: a check that fails")
	ok(t, srv, "tag", "v4", "deb")
	os.RemoveAll(v4src)
	v2, v3, v4 := head(t, srv, "v2"), head(t, srv, "v3"), head(t, srv, "v4")
	ok(t, srv, "group", "add", "compute", "--image", "deb")
	names := make([]string, nn)
	for i := range names {
		names[i] = fmt.Sprintf("n%d", i+1)
		ok(t, srv, "node", "add", names[i], "--group", "compute", "--mac", fmt.Sprintf("52:54:00:00:0f:%02x", i+1))
	}

	// The server, restartable.
	var server *labProc
	serve := func() string {
		server = l.start(t, "srv", "sim serve", nil, "--store", srv, "serve", "--listen", "198.18.0.1:7480")
		probe := "exec 3<>/dev/tcp/198.18.0.1/7480"
		waitFor(t, "sim serve up", 30*time.Second, func() (bool, string) {
			// Its port, and the socket admin commands are forwarded to.
			_, err := os.Stat(filepath.Join(srv, "sim.sock"))
			return err == nil && exec.Command("bash", l.sh, "exec", "--name", l.name, "n1", "--", "bash", "-c", probe).Run() == nil, "no answer"
		})
		return "http://198.18.0.1:7480"
	}
	url := serve()

	// The nodes, set up at once.
	nodes := map[string]*testNode{}
	var mu gosync.Mutex
	var wg gosync.WaitGroup
	start := time.Now()
	for _, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tn := newTestNode(t, base, n, url, "v2", v2, func(args ...string) { l.run(n, args...) })
			mu.Lock()
			nodes[n] = tn
			mu.Unlock()
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("%d nodes checked out from v2 in %.1fs", nn, time.Since(start).Seconds())
	// Each node's own token in its store, as its installer leaves it:
	// the agents speak for their node with it, and for no other.
	for _, n := range names {
		nodeToken(t, srv, n, nodes[n].store)
	}
	agents := map[string]*labProc{}
	agent := func(n string, env ...string) {
		agents[n] = l.start(t, n, "agent "+n, env, "--store", nodes[n].store, "agent", "--root", nodes[n].root, "--poll", "5s")
	}
	for _, n := range names {
		if n == "n5" {
			// n5's agent dies (SIGKILL) right after the first change of
			// its apply: the journal is written, the checkout begun.
			agent(n, "SIM_TEST_KILL_AFTER=2")
		} else {
			agent(n)
		}
	}
	nodesJSON := func() nodesOut {
		var out nodesOut
		decodeJSON(t, ok(t, srv, "nodes", "--json"), &out)
		return out
	}
	waitFor(t, "every agent reports", time.Minute, func() (bool, string) {
		out := nodesJSON()
		seen := 0
		for _, n := range out.Nodes {
			if n.LastSeen != nil && n.Current == v2 && n.State == node.Idle {
				seen++
			}
		}
		return seen == nn, fmt.Sprintf("%d of %d on v2 and idle: %+v", seen, nn, out.Nodes)
	})

	// Roll v3 out: canary n1, then n2-n5, then n6-n8.
	// Staged first: every node fetches, then the waves apply.
	id := lastLine(ok(t, srv, "rollout", "start", "v3", "--group", "compute", "--canary", "1", "--wave", "4", "--stage-first"))
	status := func(id string) rollout.Status {
		var s rollout.Status
		decodeJSON(t, ok(t, srv, "rollout", "status", id, "--json"), &s)
		return s
	}
	// n5's agent killed itself mid-apply: the rollout waits for it.
	select {
	case <-agents["n5"].done:
	case <-time.After(2 * time.Minute):
		t.Fatal("n5's agent was not killed mid-apply")
	}
	if j, _ := node.LoadJournal(nodes["n5"].store); j == nil || j.Phase != "apply" {
		t.Fatalf("n5 killed mid-apply: journal %+v; want one in its apply phase", j)
	}
	if s := status(id); s.State != rollout.Running || s.Nodes["n6"].State != rollout.Pending {
		t.Fatalf("with n5 down mid-apply the rollout is %s and n6 %s; want running and pending", s.State, s.Nodes["n6"].State)
	}
	// The server restarts mid-rollout, then n5's agent comes back.
	server.stop()
	serve()
	agent("n5")
	waitFor(t, "rollout "+id+" done", 3*time.Minute, func() (bool, string) {
		s := status(id)
		return s.State == rollout.Done, fmt.Sprintf("%+v", s)
	})
	s := status(id)
	want := rollout.Status{ID: id, State: rollout.Done, Commit: v3, Nodes: map[string]*rollout.NodeBrief{}}
	for _, n := range names {
		want.Nodes[n] = &rollout.NodeBrief{State: rollout.NodeDone, Commit: v3, Bytes: s.Nodes[n].Bytes}
		if s.Nodes[n].Bytes == 0 || s.Nodes[n].Bytes > 64<<10 {
			t.Errorf("%s fetched %d bytes for v2→v3", n, s.Nodes[n].Bytes)
		}
	}
	if !reflect.DeepEqual(s, want) {
		b, _ := json.Marshal(s)
		t.Errorf("status after the rollout: %s", b)
	}
	for _, n := range names {
		nodes[n].check(t, filepath.Join(c, "v3"))
	}
	logOut := ok(t, srv, "rollout", "log", id)
	for _, w := range []string{"resumed", "n5", "wave done", "done"} {
		if !strings.Contains(logOut, w) {
			t.Errorf("rollout log lacks %q:\n%s", w, logOut)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// v4's health check fails on the canary: it rolls itself back, the
	// rollout halts, nobody else gets an order.
	before := map[string]string{}
	for _, n := range names {
		before[n] = nodes[n].state(t).LastOrder
	}
	id4 := lastLine(ok(t, srv, "rollout", "start", "v4", "--group", "compute", "--canary", "1", "--wave", "4"))
	waitFor(t, "rollout "+id4+" halted", 2*time.Minute, func() (bool, string) {
		s := status(id4)
		return s.State == rollout.Halted, fmt.Sprintf("%+v", s)
	})
	s4 := status(id4)
	if n1 := s4.Nodes["n1"]; n1.State != rollout.RolledBack || n1.Commit != v3 || !strings.Contains(n1.Error, "50-disk") {
		t.Errorf("canary after its failed check: %+v; want rolled-back to v3 naming the check", n1)
	}
	nodes["n1"].check(t, filepath.Join(c, "v3"))
	if st := nodes["n1"].state(t); st.Status != node.RolledBack || !strings.Contains(st.LastResult.Health, "/srv/data is not mounted") {
		t.Errorf("n1's record: %s, health output %q", st.Status, st.LastResult.Health)
	}
	for _, n := range names[1:] {
		if s4.Nodes[n].State != rollout.Pending {
			t.Errorf("%s in the halted rollout: %s; want pending", n, s4.Nodes[n].State)
		}
		if got := nodes[n].state(t).LastOrder; got != before[n] {
			t.Errorf("%s was given an order (%s) by a rollout halted after the canary", n, got)
		}
	}
	t.Logf("halted: %s", lastLines(ok(t, srv, "rollout", "status", id4), 12))

	// Drift: five changes on n3, nothing elsewhere.
	r3 := nodes["n3"].root
	writeFiles(t, r3, map[string]string{"etc/drift-added": "added by hand\n"})
	f, err := os.OpenFile(filepath.Join(r3, "etc/motd"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("edited by hand\n")
	f.Close()
	if err := os.Remove(filepath.Join(r3, "etc/issue.net")); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(r3, "etc/issue"), 0o600)
	if err := unix.Setxattr(filepath.Join(r3, "etc/debian_version"), "user.sim.drift", []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	var drift map[string]node.Drift
	decodeJSON(t, ok(t, srv, "drift", "--json"), &drift)
	for _, n := range names {
		d, there := drift[n]
		if !there {
			t.Errorf("sim drift: no answer for %s", n)
			continue
		}
		want := node.Drift{Commit: d.Commit, Added: []string{}, Modified: []string{}, Removed: []string{}, Metadata: []string{}}
		if n == "n3" {
			want.Added, want.Modified, want.Removed = []string{"/etc/drift-added"}, []string{"/etc/motd"}, []string{"/etc/issue.net"}
			want.Metadata = []string{"/etc/debian_version", "/etc/issue"}
		}
		if d.Commit.String() != v3 || !reflect.DeepEqual(d, want) {
			t.Errorf("drift of %s: %+v; want %+v on v3", n, d, want)
		}
	}
	out := nodesJSON()
	for _, n := range out.Nodes {
		if n.Current != v3 || n.LastSeen == nil || (n.Name == "n3") != (n.Drift == 5) {
			t.Errorf("sim nodes: %s current %.12s, last seen %v, drift %d", n.Name, n.Current, n.LastSeen, n.Drift)
		}
	}
	_ = v4
	t.Logf("sim nodes:\n%s", ok(t, srv, "nodes"))
}
