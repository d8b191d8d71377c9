package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	gosync "sync"
	"syscall"
	"testing"
	"time"

	"github.com/systemimager/sim/snapshot/snapshottest"
	"github.com/systemimager/sim/sync/bt"
)

type btOut struct {
	checkoutOut
	Swarm *bt.Progress `json:"bittorrent"`
}

// btCheckout runs a BitTorrent checkout on host and decodes its --json.
func (l *lab) btCheckout(host, store, url, ref, root string, env []string, extra ...string) (btOut, error) {
	var out btOut
	var o, e bytes.Buffer
	c := l.sim(host, append([]string{"--store", store, "checkout", "--from", url, "--transport", "bittorrent", ref, root, "--json"}, extra...)...)
	c.Env = append(c.Env, env...)
	c.Stdout, c.Stderr = &o, &e
	if err := c.Run(); err != nil {
		return out, fmt.Errorf("%s: checkout %s: %v\n%s", host, ref, err, lastLines(e.String(), 8))
	}
	if err := json.Unmarshal(o.Bytes(), &out); err != nil {
		return out, fmt.Errorf("%s: %v: %s", host, err, o.String())
	}
	return out, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// TestLabBitTorrent: a server and 8 nodes on 100 Mbit links install v2
// over BitTorrent (one node joins late, one is killed mid-transfer and
// resumes), update to v3 with a torrent of the changed objects only, and
// roll back to v2; every tree equals the source exactly and the server
// sends far less than 8 images. Then a node serving corrupt data is
// detected by its peers and its data refused.
func TestLabBitTorrent(t *testing.T) {
	if testing.Short() {
		t.Skip("BitTorrent lab: long (make test runs it)")
	}
	c := corpus(t)
	l := newLab(t, 8, "--server-rate", "100mbit", "--node-rate", "100mbit")
	base := t.TempDir()
	srvStore := filepath.Join(base, "server")
	ok(t, srvStore, "init")
	for _, v := range []string{"v2", "v3"} {
		ok(t, srvStore, "commit", filepath.Join(c, v), "--image", "deb", "-m", v)
		ok(t, srvStore, "tag", v, "deb")
	}
	url := l.serve(srvStore, 7480, "--bt-peer-rate", "40Mbit")
	image := dirSize(t, srvStore)

	run := func(hosts []string, ref string, delay map[string]time.Duration, kill string, env []string) map[string]btOut {
		var wg gosync.WaitGroup
		var mu gosync.Mutex
		res := map[string]btOut{}
		for _, h := range hosts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				time.Sleep(delay[h])
				st, root := filepath.Join(base, h+"-store"), filepath.Join(base, h+"-root")
				if h == kill {
					cmd := l.sim(h, "--store", st, "checkout", "--from", url, "--transport", "bittorrent", ref, root)
					cmd.Start()
					time.Sleep(2 * time.Second)
					cmd.Process.Signal(syscall.SIGKILL)
					cmd.Wait()
					return
				}
				out, err := l.btCheckout(h, st, url, ref, root, env, "--seed-time", "6s")
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				res[h] = out
				mu.Unlock()
				if d, err := snapshottest.Diff(filepath.Join(c, ref), root); err != nil || len(d) > 0 {
					t.Errorf("%s after %s: %v %v", h, ref, err, d[:min(len(d), 5)])
				}
			}()
		}
		wg.Wait()
		return res
	}
	nodes := []string{"n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8"}

	// Install v2: n8 joins 4 s late, n7 is killed after 2 s.
	_, tx0 := l.bytes("srv")
	start := time.Now()
	res := run(nodes, "v2", map[string]time.Duration{"n8": 4 * time.Second}, "n7", nil)
	_, tx1 := l.bytes("srv")
	t.Logf("v2 to 7 nodes (+1 killed) over BitTorrent in %.1f s; server sent %.1f MB (store %.1f MB)", time.Since(start).Seconds(), float64(tx1-tx0)/1e6, float64(image)/1e6)
	var fromPeers int64
	for h, o := range res {
		if p := o.Swarm; p != nil {
			fromPeers += p.FromPeers
			t.Logf("%s: %d pieces, %.1f MB from peers, %.1f MB web seed, %.1f MB uploaded, %d peers", h, p.PiecesNeeded, float64(p.FromPeers)/1e6, float64(p.FromWebSeed)/1e6, float64(p.Uploaded)/1e6, p.Peers)
		}
	}
	if tx1-tx0 > 4*image {
		t.Errorf("the server sent %d bytes for 8 installs of a %d-byte image: not shared", tx1-tx0, image)
	}
	// The killed node resumes: it keeps what it had.
	if _, err := l.btCheckout("n7", filepath.Join(base, "n7-store"), url, "v2", filepath.Join(base, "n7-root"), nil, "--force"); err != nil {
		t.Fatal(err)
	}
	snapshottest.Equal(t, filepath.Join(c, "v2"), filepath.Join(base, "n7-root"))
	// kill -9 mid-transfer left the store consistent.
	ok(t, filepath.Join(base, "n7-store"), "fsck", "--read-data")

	// Update to v3: one torrent of the changed objects, kilobytes.
	_, tx0 = l.bytes("srv")
	res = run(nodes, "v3", nil, "", nil)
	_, tx1 = l.bytes("srv")
	for h, o := range res {
		if o.Transfer.WireBytes > 64<<10 {
			t.Errorf("%s: update v2→v3 moved %d bytes", h, o.Transfer.WireBytes)
		}
	}
	t.Logf("update v2→v3 on 8 nodes: n1 moved %d bytes; the server sent %d bytes in all", res["n1"].Transfer.WireBytes, tx1-tx0)
	// Roll back: everything is local, nothing moves.
	res = run(nodes, "v2", nil, "", nil)
	if w := res["n2"].Transfer.WireBytes; w != 0 {
		t.Errorf("rollback to v2 moved %d bytes", w)
	}

	// A node that serves corrupt data: n1 (fresh store) installs v2 and
	// then seeds it spoiled; n2 and n3 (fresh) fetch from it and the
	// origin. They must refuse its pieces and still end exact.
	corrupt := l.sim("n1", "--store", filepath.Join(base, "n1-bad"), "checkout", "--from", url, "--transport", "bittorrent", "v2", filepath.Join(base, "n1-bad-root"), "--seed-time", "40s")
	corrupt.Env = append(corrupt.Env, "SIM_BT_CORRUPT=1")
	var ce bytes.Buffer
	corrupt.Stderr = &ce
	if err := corrupt.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { corrupt.Process.Signal(syscall.SIGKILL); corrupt.Wait() }()
	for i := 0; i < 200 && !strings.Contains(ce.String(), "seeding for"); i++ {
		time.Sleep(100 * time.Millisecond)
	}
	var bad int64
	var wg gosync.WaitGroup
	var mu gosync.Mutex
	for _, h := range []string{"n2", "n3"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			root := filepath.Join(base, h+"-fresh-root")
			out, err := l.btCheckout(h, filepath.Join(base, h+"-fresh"), url, "v2", root, nil)
			if err != nil {
				t.Error(err)
				return
			}
			snapshottest.Equal(t, filepath.Join(c, "v2"), root)
			mu.Lock()
			if p := out.Swarm; p != nil {
				bad += p.BadPieces
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	t.Logf("pieces refused from the corrupt peer: %d", bad)
	if bad == 0 {
		t.Errorf("no bad piece detected: the corrupt peer was never used (stderr of n1: %s)", lastLines(ce.String(), 3))
	}
}

// dirSize is the apparent size of the files under dir.
func dirSize(t *testing.T, dir string) int64 {
	out, err := exec.Command("du", "-sb", dir).Output()
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	fmt.Sscan(string(out), &n)
	return n
}
