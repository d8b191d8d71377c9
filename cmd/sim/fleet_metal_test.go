package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	gosync "sync"
	"time"

	"github.com/systemimager/sim/client/fleet"
	"github.com/systemimager/sim/client/rollout"
)

// console is a VM's serial console as it comes.
type console struct {
	mu  gosync.Mutex
	buf bytes.Buffer
}

func (c *console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.Write(p)
}

func (c *console) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

// run boots v from its disk in the background; the returned func stops
// the VM.
func (m *metalLab) run(v *vm, con *console) func() {
	args := []string{"-accel", "tcg", "-m", "1024", "-smp", "1", "-display", "none", "-monitor", "none",
		"-serial", "stdio", "-no-reboot",
		"-drive", "file=" + v.disk + ",format=raw,if=virtio",
		"-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,mac=" + v.mac}
	ctx, cancel := context.WithCancel(context.Background())
	c := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	c.Stdout, c.Stderr = con, con
	if err := c.Start(); err != nil {
		m.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { c.Wait(); close(done) }()
	return func() { cancel(); <-done }
}

func (m *metalLab) fleetNode(name string) fleet.NodeState {
	r, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/v1/fleet/nodes", m.port))
	if err != nil {
		m.t.Fatal(err)
	}
	defer r.Body.Close()
	var all []fleet.NodeState
	if err := json.NewDecoder(r.Body).Decode(&all); err != nil {
		m.t.Fatal(err)
	}
	for _, s := range all {
		if s.Name == name {
			return s
		}
	}
	return fleet.NodeState{}
}

// fleet boots the installed node again from its disk: its agent, under
// systemd, reports to the server; a rollout of a new commit reaches it
// live (its console says so), then abort --revert rolls it back. Every
// agent request needs the node's own token: the agent speaks with the
// one in its store, /var/lib/sim/token, which the server minted for it
// when it installed with the enroll token (TestMetalVM's bios subtest
// checks node-NAME was made); without it, it would never report.
func (m *metalLab) fleet(v *vm, node string) {
	t := m.t
	start := time.Now()
	// The new commit: the image with one more file (hard links: cheap).
	src := filepath.Join(m.dir, "debian-2")
	if out, err := exec.Command("cp", "-al", bootableRoot, src).CombinedOutput(); err != nil {
		t.Fatalf("cp -al: %v %s", err, out)
	}
	writeFiles(t, src, map[string]string{"etc/sim-fleet-marker": "rolled out live\n"})
	// Signed, as an admin of nodes that trust only signed images does.
	ok(t, m.store, "commit", src, "--image", "debian", "-m", "debian + a marker", "--sign", m.signKey)
	os.RemoveAll(src)
	newC := head(t, m.store, "debian")
	oldC := head(t, m.store, "debian~1")

	con := &console{}
	stop := m.run(v, con)
	defer stop()
	wait := func(what string, limit time.Duration, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(limit)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within %v; node %+v\nconsole tail:\n%s", what, limit, m.fleetNode(node), tail(con.String(), 3000))
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	wait("the agent reports", 4*time.Minute, func() bool {
		s := m.fleetNode(node)
		return s.State == fleet.Idle && s.Current == oldC && s.LastSeen.After(start)
	})
	t.Logf("FIGURE %s: booted, its agent reported %.0f s after power-on", node, time.Since(start).Seconds())
	t0 := time.Now()
	id := lastLine(ok(t, m.store, "rollout", "start", "debian", "--nodes", node, "--canary", "0"))
	var st rollout.Status
	wait("the rollout", 4*time.Minute, func() bool {
		decodeJSON(t, ok(t, m.store, "rollout", "status", id, "--json"), &st)
		return st.State != rollout.Running
	})
	if st.State != rollout.Done || st.Nodes[node].State != rollout.NodeDone || st.Nodes[node].Commit != newC {
		t.Fatalf("rollout: %+v %+v\nconsole tail:\n%s", st, st.Nodes[node], tail(con.String(), 3000))
	}
	wantLine := fmt.Sprintf("updated to %s (debian)", newC[:12])
	wait("the update on the console", time.Minute, func() bool { return strings.Contains(con.String(), wantLine) })
	t.Logf("FIGURE %s: rollout of %s done in %.1f s, %d bytes fetched", node, newC[:12], time.Since(t0).Seconds(), st.Nodes[node].Bytes)

	// And back.
	t0 = time.Now()
	ok(t, m.store, "rollout", "abort", id, "--revert")
	wait("the rollback", 4*time.Minute, func() bool {
		s := m.fleetNode(node)
		return s.State == fleet.RolledBack && s.Current == oldC
	})
	wantLine = fmt.Sprintf("rolled back to %s (debian)", oldC[:12])
	wait("the rollback on the console", time.Minute, func() bool { return strings.Contains(con.String(), wantLine) })
	decodeJSON(t, ok(t, m.store, "rollout", "status", id, "--json"), &st)
	if st.State != rollout.Aborted || st.Nodes[node].State != rollout.RolledBack {
		t.Errorf("after abort --revert: %+v %+v", st, st.Nodes[node])
	}
	t.Logf("FIGURE %s: rolled back in %.1f s; on its console:\n%s", node, time.Since(t0).Seconds(), grepLines(con.String(), "sim"))
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, strings.TrimSpace(l))
		}
	}
	return strings.Join(out[max(0, len(out)-12):], "\n")
}
