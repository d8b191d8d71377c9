package main

import (
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	gosync "sync"
	"syscall"
	"testing"
	"time"

	"github.com/systemimager/sim/snapshot/snapshottest"
)

// TestLabMulticastFEC: a server and 4 nodes in network namespaces, each
// node dropping 5% of what reaches it (nftables, lab.sh loss). With
// sim serve --mcast-fec auto every node completes v2 by multicast, no
// HTTP fallback, most of its loss rebuilt from repair shards; the trees
// are exact. Then --mcast-fec off on the same loss: the nodes complete
// too, through repair passes, and the session sends more repair
// datagrams than the FEC one needed.
func TestLabMulticastFEC(t *testing.T) {
	if testing.Short() {
		t.Skip("multicast FEC lab: long (make test runs it)")
	}
	c := corpus(t)
	l := newNamedLab(t, "simfec", 4, "--server-rate", "300mbit", "--node-rate", "1gbit")
	base := t.TempDir()
	srvStore := filepath.Join(base, "server")
	ok(t, srvStore, "init")
	ok(t, srvStore, "commit", filepath.Join(c, "v2"), "--image", "deb", "-m", "v2")
	ok(t, srvStore, "tag", "v2", "deb")
	nodes := []string{"n1", "n2", "n3", "n4"}
	for _, n := range nodes {
		if out, err := exec.Command("bash", l.sh, "loss", "--name", l.name, n, "5").CombinedOutput(); err != nil {
			t.Fatalf("loss on %s: %v %s", n, err, out)
		}
	}
	var repairsAuto int64
	for i, mode := range []string{"auto", "off"} {
		url, stop := serveStoppable(t, l, srvStore, 7500+i, "--mcast-min-receivers", "4", "--mcast-wait", "20s", "--mcast-rate", "300mbit", "--mcast-fec", mode)
		runs := make([]*mcastRun, len(nodes))
		var wg gosync.WaitGroup
		for j, n := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				runs[j] = l.mcastCheckout(base, n, url, "v2", "fec"+mode)
			}()
		}
		wg.Wait()
		ss := sessions(t, l, url)
		if len(ss) == 0 {
			t.Fatalf("%s: no session listed", mode)
		}
		s := ss[len(ss)-1]
		stop() // the next mode's server takes the store
		t.Logf("FEC %s: session %s: %d passes, %.1f s, sent %s for %s; FEC %s: %d shards over %d blocks, %d blocks repaired (%.1f predicted), %d repair datagrams",
			mode, s.ID, s.Pass, s.Seconds, fmtBytes(s.SentBytes), fmtBytes(s.Bytes), s.FEC, s.FECShards, s.FECGroups, s.RepairGroups, s.FECPredicted, s.RepairBlocks)
		if s.FEC != mode {
			t.Errorf("session FEC %q, want %q", s.FEC, mode)
		}
		for _, r := range runs {
			if r.err != nil {
				t.Errorf("%s %s: %v\n%s", mode, r.node, r.err, r.stderr)
				continue
			}
			t.Logf("%s %s: %.1f s, loss %.1f%%, %d passes, %d shards, %d blocks rebuilt, complete %v", mode, r.node, r.seconds, r.mc.LossPct, r.mc.Pass, r.mc.Shards, r.mc.Recovered, r.mc.Complete)
			if d, err := snapshottest.Diff(filepath.Join(c, "v2"), filepath.Join(base, r.node+"-fec"+mode+"-root")); err != nil || len(d) > 0 {
				t.Errorf("%s %s: tree differs from v2: %v %v", mode, r.node, err, d[:min(len(d), 5)])
			}
			if r.mc.LossPct < 2 {
				t.Errorf("%s %s: loss %.1f%%: the lab's 5%% did not apply", mode, r.node, r.mc.LossPct)
			}
			if mode == "auto" {
				if !r.mc.Complete {
					t.Errorf("FEC auto at 5%%: %s fell back to HTTP: %+v", r.node, r.mc)
				}
				if r.mc.Recovered == 0 || r.mc.Shards == 0 {
					t.Errorf("FEC auto: %s rebuilt nothing: %+v", r.node, r.mc)
				}
			} else if r.mc.Shards != 0 || r.mc.Recovered != 0 {
				t.Errorf("FEC off: %s got %d shards", r.node, r.mc.Shards)
			}
		}
		if mode == "auto" {
			repairsAuto = s.RepairBlocks
			if s.FECShards == 0 {
				t.Error("FEC auto sent no repair shards")
			}
		} else if s.RepairBlocks <= repairsAuto {
			t.Errorf("FEC off repaired %d blocks by passes, auto %d: FEC saved nothing", s.RepairBlocks, repairsAuto)
		}
	}
}

// serveStoppable is lab.serve whose server can be stopped before the
// test ends (sim serve holds its store: the next one needs it).
func serveStoppable(t *testing.T, l *lab, store string, port int, extra ...string) (string, func()) {
	t.Helper()
	addr := fmt.Sprintf("198.18.0.1:%d", port)
	var log bytes.Buffer
	c := l.sim("srv", append([]string{"--store", store, "serve", "--listen", addr}, extra...)...)
	c.Stderr = &log
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	var once gosync.Once
	stop := func() {
		once.Do(func() {
			c.Process.Signal(syscall.SIGTERM)
			c.Wait()
			if t.Failed() || testing.Verbose() {
				t.Logf("sim serve log (%s):\n%s", addr, log.String())
			}
		})
	}
	t.Cleanup(stop)
	probe := fmt.Sprintf("exec 3<>/dev/tcp/198.18.0.1/%d", port)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if exec.Command("bash", l.sh, "exec", "--name", l.name, "n1", "--", "bash", "-c", probe).Run() == nil {
			return "http://" + addr, stop
		}
	}
	stop()
	t.Fatal("sim serve did not come up in the lab")
	return "", nil
}
