package main

import (
	"bufio"
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
// the server receiving it), a pull, a gc, a server serving a node, and a
// node's checkout --from, 50 points in all. After each, every store
// involved passes fsck --read-data, every ref names the commit it named
// before or the one the killed operation was making, and a node's tree
// is the old or the new commit, or (killed inside the checkout, its
// record pending) becomes the new one with the next checkout.
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

	headOf := func(st string) string {
		r := sim(t, st, "show", "img", "--json")
		if r.code != 0 {
			return ""
		}
		var c struct{ ID string }
		decodeJSON(t, r.stdout, &c)
		return c.ID
	}
	failures := 0
	fail := func(format string, a ...any) {
		failures++
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
	type tally struct{ tried, killed int }
	counts := map[string]*tally{}
	nodeTrees := map[string]int{}
	ops := []string{"commit", "push (client)", "push (server)", "pull", "gc", "serve (node fetching)", "checkout --from"}
	const points = 50
	for p := 1; p <= points; p++ {
		op := ops[rng.Intn(len(ops))]
		if counts[op] == nil {
			counts[op] = &tally{}
		}
		counts[op].tried++
		var killed bool
		var delay time.Duration
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
		}
		if killed {
			counts[op].killed++
		}
		if delay == time.Hour {
			delay = 0
		}
		t.Logf("point %2d: %-22s killed=%-5v after %v", p, op, killed, delay.Round(time.Millisecond))
	}
	var lines []string
	tried, killedN := 0, 0
	for op, c := range counts {
		lines = append(lines, fmt.Sprintf("%s %d/%d", op, c.killed, c.tried))
		tried += c.tried
		killedN += c.killed
	}
	sort.Strings(lines)
	t.Logf("FIGURE kill -9 campaign (seed %d): %d points tried, %d killed mid-way (the rest finished first), %d failures; killed/tried by operation: %s; node trees after a kill: %v",
		seed, tried, killedN, failures, strings.Join(lines, ", "), nodeTrees)
	if killedN < points/3 {
		t.Errorf("only %d of %d points were killed mid-way: the campaign proves little", killedN, points)
	}
}
