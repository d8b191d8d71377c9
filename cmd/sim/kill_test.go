package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	nodestate "github.com/systemimager/sim/client/node"
	"github.com/systemimager/sim/client/rollout"
	"github.com/systemimager/sim/snapshot/snapshottest"
)

// killServer is a sim serve child process that the campaign kills and
// restarts on the same address.
type killServer struct {
	t           *testing.T
	store, addr string
	extra       []string
	c           *exec.Cmd
}

func (s *killServer) start() {
	s.t.Helper()
	c := simProcess(append([]string{"--store", s.store, "serve", "--listen", s.addr, "--no-bittorrent"}, s.extra...)...)
	stderr, _ := c.StderrPipe()
	if err := c.Start(); err != nil {
		s.t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		if strings.Contains(sc.Text(), "serving") {
			go func() {
				for sc.Scan() {
				}
			}()
			s.c = c
			return
		}
	}
	c.Wait()
	s.t.Fatal("sim serve did not start")
}

func (s *killServer) kill() {
	if s.c != nil {
		s.c.Process.Signal(syscall.SIGKILL)
		s.c.Wait()
		s.c = nil
	}
}

// TestKillCampaign kills sim with SIGKILL at random points (seeded:
// $SIM_KILL_SEED, reported) of a commit, a push (the pushing client, and
// the server receiving it), a pull, a gc, a server serving a node, a
// node's checkout --from, a sim update of an installed node, and a sim
// agent carrying out a rollout's order, 50 points in all. After each,
// every store involved passes fsck --read-data, every ref names the
// commit it named before or the one the killed operation was making, and
// a node's tree is the old or the new commit, or (killed inside the
// checkout or the update, its record pending) becomes the new one with
// the next checkout, update or agent. An installed node's identity files
// stay byte for byte what they were.
func TestKillCampaign(t *testing.T) {
	if testing.Short() {
		t.Skip("kill campaign: -short")
	}
	seed := time.Now().UnixNano() % 1000000
	if s := os.Getenv("SIM_KILL_SEED"); s != "" {
		seed, _ = strconv.ParseInt(s, 10, 64)
	}
	t.Logf("kill campaign seed %d (rerun with SIM_KILL_SEED=%d)", seed, seed)
	rng := rand.New(rand.NewSource(seed))
	dir := t.TempDir()
	admin, srvStore, mirror, node := filepath.Join(dir, "admin"), filepath.Join(dir, "server"), filepath.Join(dir, "mirror"), filepath.Join(dir, "node")
	root := filepath.Join(dir, "root")
	src := filepath.Join(dir, "src")
	for _, s := range []string{admin, srvStore, node} {
		ok(t, s, "init")
	}
	files := map[string]int{}
	for i := 0; i < 32; i++ {
		files[fmt.Sprintf("d%d/f%02d", i%4, i)] = 1 << 20
	}
	snapshottest.RandomFiles(t, src, 1, files)
	round := int64(1)
	mutate := func() {
		round++
		ch := map[string]int{}
		for i := 0; i < 12; i++ {
			k := rng.Intn(32)
			ch[fmt.Sprintf("d%d/f%02d", k%4, k)] = 1<<20 - rng.Intn(4096)
		}
		snapshottest.RandomFiles(t, src, round, ch)
	}
	ok(t, admin, "commit", src, "--image", "img")
	tokens := filepath.Join(dir, "tokens")
	os.WriteFile(tokens, []byte("kill-admin\n"), 0o600)
	// The installed nodes' image: the corpus's /etc at v1 and at v2, a
	// real Debian /etc (symlinks, dangling alternatives, modes, 80
	// differences between the two) that is small, so that the fsck
	// --read-data after every point stays cheap. nu is updated with sim
	// update (the server does not know it); na runs sim agent and is
	// given rollouts.
	corpusDir := os.Getenv("SIM_CORPUS")
	if corpusDir == "" {
		corpusDir = "/var/cache/sim/corpus"
	}
	nodeImg := map[string]string{}
	haveCorpus := true
	for _, v := range []string{"v1", "v2"} {
		if _, err := os.Stat(filepath.Join(corpusDir, v+".stamp")); err != nil {
			haveCorpus = false
		}
	}
	if haveCorpus {
		for _, v := range []string{"v1", "v2"} {
			nodeImg[v] = filepath.Join(dir, "nodeimg", v)
			os.MkdirAll(nodeImg[v], 0o755)
			if out, err := exec.Command("cp", "-a", filepath.Join(corpusDir, v, "etc"), nodeImg[v]).CombinedOutput(); err != nil {
				t.Fatalf("cp %s/etc: %v %s", v, err, out)
			}
			// Where the node keeps its store and logs.
			for _, d := range []string{"var/lib", "var/log"} {
				os.MkdirAll(filepath.Join(nodeImg[v], d), 0o755)
			}
			ok(t, srvStore, "commit", nodeImg[v], "--image", "deb", "-m", v)
			ok(t, srvStore, "tag", v, "deb")
		}
		ok(t, srvStore, "group", "add", "kill", "--image", "deb")
		ok(t, srvStore, "node", "add", "na", "--group", "kill", "--mac", "52:54:00:00:0e:01")
	} else {
		t.Logf("no corpus at %s: the update and agent points are left out (make corpus)", corpusDir)
	}
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	url := "http://" + addr
	srv := &killServer{t: t, store: srvStore, addr: addr, extra: []string{"--token-file", tokens}}
	srv.start()
	t.Cleanup(srv.kill)
	ok(t, admin, "push", "--token-file", tokens, url, "img")
	ok(t, filepath.Join(dir, "unused"), "clone", url, mirror)
	ok(t, node, "checkout", "--from", url, "img", root, "--no-sync")
	// opsEst is how many changes an apply to a version made when it ran
	// whole (SIM_TEST_COUNT_OPS): update and agent kill points are drawn
	// as counts of changes within it (SIM_TEST_KILL_AFTER), so that they
	// land inside the apply whatever the machine's speed.
	opsEst := map[string]int{}
	// counted runs sim as a child process, killed by itself right after
	// change k of its apply (k 0: never), or sent the signal that comes
	// on sig (if not nil) first; it says whether a SIGKILL ended it, and
	// learns (under key) how many changes a run that was not killed made.
	counted := func(key string, k int, logTo string, sig <-chan syscall.Signal, args ...string) (bool, error) {
		cf := logTo + ".count"
		os.Remove(cf)
		c := simProcess(args...)
		c.Env = append(c.Env, "SIM_TEST_COUNT_OPS="+cf)
		if k > 0 {
			c.Env = append(c.Env, "SIM_TEST_KILL_AFTER="+strconv.Itoa(k))
		}
		logf, err := os.Create(logTo)
		if err != nil {
			return false, err
		}
		defer logf.Close()
		c.Stdout, c.Stderr = logf, logf
		if err := c.Start(); err != nil {
			return false, err
		}
		done := make(chan error, 1)
		go func() { done <- c.Wait() }()
		var werr error
		select {
		case werr = <-done:
		case sg := <-sig:
			c.Process.Signal(sg)
			werr = <-done
		}
		var ee *exec.ExitError
		if errors.As(werr, &ee) && ee.Sys().(syscall.WaitStatus).Signaled() {
			return true, nil
		}
		if werr != nil && sig == nil {
			b, _ := os.ReadFile(logTo)
			return false, fmt.Errorf("sim %s: %v\n%s", strings.Join(args, " "), werr, lastLines(string(b), 20))
		}
		if b, err := os.ReadFile(cf); err == nil && key != "" {
			if n, _ := strconv.Atoi(string(b)); n > 0 {
				opsEst[key] = n
			}
		}
		return false, nil
	}
	pickOps := func(key string) int {
		e := opsEst[key]
		if e == 0 || rng.Intn(5) == 0 {
			return 0 // let it run whole (a point too), and count
		}
		return 1 + rng.Intn(e*11/10)
	}
	var nu, na *testNode
	at := map[*testNode]string{} // the version each node is at
	heads := map[string]string{}
	if haveCorpus {
		inProc := func(args ...string) {
			var o, e bytes.Buffer
			if code := run(t.Context(), args, &env{stdout: &o, stderr: &e}); code != 0 {
				t.Fatalf("sim %s: exit %d: %s", strings.Join(args, " "), code, e.String())
			}
		}
		heads["v1"], heads["v2"] = head(t, srvStore, "v1"), head(t, srvStore, "v2")
		nu = newTestNode(t, dir, "nu", url, "v1", heads["v1"], inProc)
		na = newTestNode(t, dir, "na", url, "v1", heads["v1"], inProc)
		// A cycle to settle each root (the first update also fixes
		// what the identity files disturbed); nu's counts the changes.
		settle := func(n *testNode, key, v string) {
			if _, err := counted(key, 0, filepath.Join(dir, "settle.log"), nil, "--store", n.store, "update", "--from", url, "--root", n.root, "--token-file", tokens, v); err != nil {
				t.Fatal(err)
			}
		}
		for _, v := range []string{"v2", "v1", "v2"} {
			settle(nu, "update "+v, v)
		}
		settle(na, "", "v2")
		at[nu], at[na] = "v2", "v2"
		nu.check(t, nodeImg["v2"])
		na.check(t, nodeImg["v2"])
		if t.Failed() {
			t.FailNow()
		}
		t.Logf("an update of the installed node's /etc makes %d changes to v1, %d to v2", opsEst["update v1"], opsEst["update v2"])
	}

	headOf := func(st string) string {
		r := sim(t, st, "show", "img", "--json")
		if r.code != 0 {
			return ""
		}
		var c struct{ ID string }
		decodeJSON(t, r.stdout, &c)
		return c.ID
	}
	// op is the operation of the point under way.
	op := ""
	type tally struct {
		tried, killed, failed int
		took                  time.Duration
	}
	counts := map[string]*tally{}
	failures := 0
	fail := func(format string, a ...any) {
		failures++
		if c := counts[op]; c != nil {
			c.failed++
		}
		t.Errorf(format, a...)
	}
	fsck := func(point int, what string, stores ...string) {
		for _, st := range stores {
			if r := sim(t, st, "fsck", "--read-data"); r.code != 0 {
				fail("point %d (%s): fsck --read-data of %s: %s%s", point, what, filepath.Base(st), r.stdout, r.stderr)
			}
		}
	}
	oneOf := func(point int, what, st, got string, want ...string) {
		for _, w := range want {
			if got == w {
				return
			}
		}
		fail("point %d (%s): %s head %.12s, want one of %v", point, what, filepath.Base(st), got, want)
	}
	// est is how long each operation took when it finished: kill points
	// are drawn within it, so that most land inside the operation,
	// whatever the machine's speed.
	est := map[string]time.Duration{}
	pick := func(op string) time.Duration {
		e, ok := est[op]
		if !ok || rng.Intn(5) == 0 {
			// Let it finish (a point too: the operation then ran
			// whole), and learn how long it takes.
			return time.Hour
		}
		return time.Duration(rng.Int63n(int64(e)*11/10 + 1))
	}
	// child starts args as a child process; stop waits for it, killing
	// it (or, with srvKill, the server) after delay; it returns whether
	// the kill came before the process finished.
	child := func(op string, delay time.Duration, srvKill bool, args ...string) bool {
		c := simProcess(args...)
		start := time.Now()
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- c.Wait() }()
		select {
		case <-done:
			est[op] = time.Since(start)
			if srvKill {
				srv.kill()
			}
			return false
		case <-time.After(delay):
			if srvKill {
				srv.kill()
				<-done
			} else {
				c.Process.Signal(syscall.SIGKILL)
				<-done
			}
			return true
		}
	}
	run := func(op string, args ...string) (bool, time.Duration) {
		d := pick(op)
		return child(op, d, false, args...), d
	}
	nodeTrees := map[string]int{}
	ops := []string{"commit", "push (client)", "push (server)", "pull", "gc", "serve (node fetching)", "checkout --from"}
	if haveCorpus {
		ops = append(ops, "update", "agent")
	}
	// installedAfter checks an installed node after a point: its store
	// and the server's pass fsck --read-data, it is exactly version to
	// outside the preserved paths, which are untouched, no journal is
	// left, and its record says so.
	installedAfter := func(p int, n *testNode, to string) {
		fsck(p, op, n.store, srvStore)
		for _, d := range n.differences(t, nodeImg[to]) {
			fail("point %d (%s): %s", p, op, d)
		}
		if s := n.state(t); s.Status == nodestate.Partial || s.Current.Commit.String() != heads[to] {
			fail("point %d (%s): %s's node.json: %s at %s; want %s", p, op, n.name, s.Status, s.Current.Commit.Short(), to)
		}
		at[n] = to
	}
	// treeOf says whether n's root is the old version, the new one, or
	// neither (a kill inside the apply; its journal pending).
	treeOf := func(n *testNode, old, new string) string {
		for _, c := range []struct{ name, v string }{{"old", old}, {"new", new}} {
			if len(n.differences(t, nodeImg[c.v])) == 0 {
				return c.name
			}
		}
		return "mid-way"
	}
	other := map[string]string{"v1": "v2", "v2": "v1"}
	// agentRollout runs na's agent (killed by itself after change
	// changes of its apply, or, timed, by the test delay after the
	// rollout began) and the rollout start; a killed agent is restarted,
	// and the rollout must end done on na.
	agentRollout := func(p int, from, to, key string, timed bool, start []string, changes int, delay time.Duration) (killed bool) {
		type agentRun struct {
			killed bool
			err    error
		}
		// An agent process: how it ended comes on res; sig is for the
		// signals the test sends it (its own, so that a signal meant
		// for one cannot reach the next).
		type agentProc struct {
			res chan agentRun
			sig chan syscall.Signal
			log string
		}
		agent := func(key string, k int, log string) *agentProc {
			a := &agentProc{make(chan agentRun, 1), make(chan syscall.Signal, 1), filepath.Join(dir, log)}
			args := []string{"--store", na.store, "agent", "--server", url, "--root", na.root, "--token-file", tokens, "--poll", "1s", "--drift-every", "0"}
			go func() {
				k, err := counted(key, k, a.log, a.sig, args...)
				a.res <- agentRun{k, err}
			}()
			return a
		}
		agentLog := func(a *agentProc) string {
			b, _ := os.ReadFile(a.log)
			return lastLines(string(b), 20)
		}
		a := agent(key, max(changes, 0), "agent.log")
		id := lastLine(ok(t, srvStore, start...))
		began := time.Now()
		var st rollout.Status
		phase := "" // na's state in the rollout when a timed kill came
		// wait polls the rollout until it ends (nil) or the agent
		// exits, killing the agent once killAt has passed (a
		// condition, not a timer: the deadline only bounds a hang).
		wait := func(a *agentProc, killAt time.Duration) *agentRun {
			deadline := time.Now().Add(3 * time.Minute)
			for {
				select {
				case r := <-a.res:
					return &r
				default:
				}
				decodeJSON(t, ok(t, srvStore, "rollout", "status", id, "--json"), &st)
				if st.State != rollout.Running && st.State != rollout.Paused || time.Now().After(deadline) {
					return nil
				}
				if time.Since(began) >= killAt {
					if nb := st.Nodes["na"]; nb != nil {
						phase = nb.State
					}
					a.sig <- syscall.SIGKILL
					r := <-a.res
					return &r
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
		stopped := func(r *agentRun, a *agentProc) {
			if r == nil {
				a.sig <- syscall.SIGTERM
				x := <-a.res
				r = &x
			}
			if r.err != nil {
				fail("point %d (%s): %v", p, op, r.err)
			}
		}
		killAt := time.Duration(1<<63 - 1) // the count kills it
		if timed {
			killAt = delay
		}
		if r := wait(a, killAt); r != nil {
			killed = r.killed
			if !killed {
				fail("point %d (%s): sim agent exited during the rollout: %v\n%s", p, op, r.err, agentLog(a))
			}
			fsck(p, op, na.store)
			tree := treeOf(na, from, to)
			j, _ := nodestate.LoadJournal(na.store)
			if j == nil && (tree == "mid-way" || !timed && tree != "new") {
				fail("point %d (%s): killed after change %d, the root %s and no journal to finish it", p, op, changes, tree)
			}
			if timed {
				tree += " (timed, na " + phase + ")"
			}
			nodeTrees["agent: "+tree+", finished by the restarted agent"]++
			// Restarted, it finishes the apply and the rollout.
			// (Its count of changes is only the rest: not learnt.)
			a = agent("", 0, "agent-restarted.log")
			r := wait(a, 1<<63-1)
			if r != nil {
				fail("point %d (%s): the restarted sim agent exited before the rollout ended: %v\n%s", p, op, r.err, agentLog(a))
			}
			stopped(r, a)
		} else {
			// Any whole run teaches how long a rollout on this
			// node takes.
			est["agent (timed)"] = time.Since(began)
			stopped(nil, a)
		}
		if nb := st.Nodes["na"]; st.State != rollout.Done || nb == nil || nb.State != rollout.NodeDone || nb.Commit != heads[to] {
			fail("point %d (%s): rollout %s to %s: %+v, na %+v; want done on %.12s\n%s", p, op, id, to, st, nb, heads[to], agentLog(a))
		}
		return killed
	}
	if haveCorpus {
		// na's first rollout runs whole: it teaches how long one takes
		// (the timed points) and how many changes its apply makes.
		agentRollout(0, "v2", "v1", "agent v1", false, []string{"rollout", "start", "v1", "--nodes", "na"}, 0, 0)
		installedAfter(0, na, "v1")
		if t.Failed() {
			t.FailNow()
		}
	}
	const points = 50
	// Every operation gets its share of the points (the remainder goes
	// to operations drawn at random), in a seeded random order.
	var sched []string
	for len(sched)+len(ops) <= points {
		sched = append(sched, ops...)
	}
	for _, i := range rng.Perm(len(ops))[:points-len(sched)] {
		sched = append(sched, ops[i])
	}
	rng.Shuffle(len(sched), func(i, j int) { sched[i], sched[j] = sched[j], sched[i] })
	for p := 1; p <= points; p++ {
		op = sched[p-1]
		if counts[op] == nil {
			counts[op] = &tally{}
		}
		counts[op].tried++
		pointStart := time.Now()
		var killed bool
		var delay time.Duration
		// update and agent: the change the process kills itself
		// after (0: it runs whole; -1: a timed agent point).
		changes := -1
		switch op {
		case "commit":
			mutate()
			before := headOf(admin)
			killed, delay = run(op, "--store", admin, "commit", src, "--image", "img")
			fsck(p, op, admin)
			after := headOf(admin)
			oneOf(p, op, admin, after, before, after)
			if after != before {
				co := filepath.Join(dir, fmt.Sprintf("co%d", p))
				ok(t, admin, "checkout", "img", co, "--no-sync")
				if out := sim(t, admin, "diff", "img", src+"/"); out.stdout != "" {
					fail("point %d: the new head is not the source: %s", p, out.stdout)
				}
				os.RemoveAll(co)
			}
		case "push (client)":
			mutate()
			ok(t, admin, "commit", src, "--image", "img")
			before, want := headOf(srvStore), headOf(admin)
			killed, delay = run(op, "--store", admin, "push", "--token-file", tokens, url, "img")
			fsck(p, op, admin, srvStore)
			oneOf(p, op, srvStore, headOf(srvStore), before, want)
		case "push (server)":
			mutate()
			ok(t, admin, "commit", src, "--image", "img")
			before, want := headOf(srvStore), headOf(admin)
			delay = pick(op)
			killed = child(op, delay, true, "--store", admin, "push", "--token-file", tokens, url, "img")
			fsck(p, op, srvStore, admin)
			oneOf(p, op, srvStore, headOf(srvStore), before, want)
			srv.start()
		case "pull":
			before, want := headOf(mirror), headOf(srvStore)
			killed, delay = run(op, "--store", mirror, "pull", url, "img")
			fsck(p, op, mirror)
			oneOf(p, op, mirror, headOf(mirror), before, want)
		case "gc":
			before := headOf(admin)
			killed, delay = run(op, "--store", admin, "gc", "--reflog-expire", "1ns")
			fsck(p, op, admin)
			oneOf(p, op, admin, headOf(admin), before)
		case "serve (node fetching)", "checkout --from":
			// A new image on the server first, so the node has work.
			mutate()
			ok(t, admin, "commit", src, "--image", "img")
			ok(t, admin, "push", "--token-file", tokens, url, "img")
			old, new := headOf(node), headOf(srvStore)
			if op == "checkout --from" {
				killed, delay = run(op, "--store", node, "checkout", "--from", url, "img", root, "--no-sync")
			} else {
				delay = pick(op)
				killed = child(op, delay, true, "--store", node, "checkout", "--from", url, "img", root, "--no-sync")
				fsck(p, op, srvStore)
				srv.start()
			}
			fsck(p, op, node)
			tree := ""
			for _, c := range []struct{ name, id string }{{"old", old}, {"new", new}} {
				if c.id != "" && sim(t, node, "diff", c.id, root+"/").stdout == "" && sim(t, node, "diff", c.id, root+"/").code == 0 {
					tree = c.name
					break
				}
			}
			if tree == "" {
				// Killed inside the checkout: the next one completes it.
				r := sim(t, node, "checkout", "--from", url, "img", root, "--no-sync")
				if r.code != 0 || sim(t, node, "diff", new, root+"/").stdout != "" {
					fail("point %d (%s): a node tree that is neither %.12s nor %.12s, and the next checkout did not mend it: %s", p, op, old, new, r.stderr)
				}
				tree = "mid-way, completed by the next checkout"
			}
			nodeTrees[tree]++
		case "update":
			from, to := at[nu], other[at[nu]]
			changes = pickOps("update " + to)
			args := []string{"--store", nu.store, "update", "--from", url, "--root", nu.root, "--token-file", tokens, to}
			var err error
			if killed, err = counted("update "+to, changes, filepath.Join(dir, "update.log"), nil, args...); err != nil {
				fail("point %d (%s %s→%s): %v", p, op, from, to, err)
			}
			if killed {
				fsck(p, op, nu.store)
				tree := treeOf(nu, from, to)
				if j, _ := nodestate.LoadJournal(nu.store); j == nil && tree != "new" {
					fail("point %d (%s): killed after change %d, the root %s and no journal to finish it", p, op, changes, tree)
				}
				// The next sim update finishes what the journal says.
				if _, err := counted("", 0, filepath.Join(dir, "update.log"), nil, args...); err != nil {
					fail("point %d (%s): the next update: %v", p, op, err)
				}
				nodeTrees["update: "+tree+", finished by the next update"]++
			}
			installedAfter(p, nu, to)
		case "agent":
			// Killed after a random count of its apply's changes, or
			// (one in three) at a random moment of the rollout on this
			// node: receiving the order, staging (the rollout stages
			// first), applying, reporting.
			from, to := at[na], other[at[na]]
			key := "agent " + to
			if opsEst[key] == 0 {
				// Until an agent's apply to it has run whole, the
				// same update's count.
				opsEst[key] = opsEst["update "+to]
			}
			timed := rng.Intn(3) == 0
			start := []string{"rollout", "start", to, "--nodes", "na"}
			if timed {
				delay = pick("agent (timed)")
				start = append(start, "--stage-first")
			} else {
				changes = pickOps(key)
			}
			killed = agentRollout(p, from, to, key, timed, start, changes, delay)
			installedAfter(p, na, to)
		}
		if killed {
			counts[op].killed++
		}
		counts[op].took += time.Since(pointStart)
		if delay == time.Hour {
			delay = 0
		}
		if changes == 0 {
			t.Logf("point %2d: %-22s killed=%-5v (let run whole)", p, op, killed)
		} else if changes > 0 {
			t.Logf("point %2d: %-22s killed=%-5v after change %d", p, op, killed, changes)
		} else {
			t.Logf("point %2d: %-22s killed=%-5v after %v", p, op, killed, delay.Round(time.Millisecond))
		}
	}
	var lines []string
	tried, killedN := 0, 0
	for op, c := range counts {
		lines = append(lines, fmt.Sprintf("%s %d/%d/%d (%.1fs)", op, c.killed, c.tried, c.failed, c.took.Seconds()))
		tried += c.tried
		killedN += c.killed
	}
	sort.Strings(lines)
	t.Logf("FIGURE kill -9 campaign (seed %d): %d points tried, %d killed mid-way (the rest finished first), %d failures; landed inside/tried/failed (time taken) by operation: %s; node trees after a kill: %v",
		seed, tried, killedN, failures, strings.Join(lines, ", "), nodeTrees)
	if killedN < points/3 {
		t.Errorf("only %d of %d points were killed mid-way: the campaign proves little", killedN, points)
	}
}
