package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	gosync "sync"
	"testing"
	"time"
)

// TestTransportAuto: `sim checkout --transport auto` on real Debian data.
// Three nodes asking for an image together behind a 10 Mbit uplink are
// sent to one multicast session or swarm; a small update of one node goes
// over HTTP. Each says what it was told and why (the cores the nodes share
// among the figures), and each tree is exact.
func TestTransportAuto(t *testing.T) {
	c := corpus(t)
	up := newStore(t)
	src1 := filepath.Join(c, "v1", "usr", "share", "locale")
	src2 := filepath.Join(c, "v2", "usr", "share", "locale")
	v1 := lastLine(ok(t, up, "commit", src1, "--image", "loc", "-m", "v1"))
	url := startServer(t, up, "--bt-listen", "127.0.0.1:0", "--auto-uplink", "10Mbit", "--auto-gather", "1m", "--auto-node-cores", "2")
	other := newStore(t) // up is the running server's
	for _, bad := range [][]string{{"--auto-node-cores", "-1"}, {"--auto-node-cores", "NaN"}, {"--auto-node-cores", "two"},
		{"--auto-shared-host"}} { // the cores it would share are not given
		// Refused before serving; bounded in case it were not.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var o, e bytes.Buffer
		code := run(ctx, append([]string{"--store", other, "serve", "--listen", "127.0.0.1:0"}, bad...), &env{stdout: &o, stderr: &e})
		cancel()
		if code == 0 || !strings.Contains(e.String(), strings.TrimPrefix(bad[0], "--")) {
			t.Errorf("serve %v: exit %d, %q: want it refused, naming the flag", bad, code, e.String())
		}
	}

	type result struct {
		Auto struct {
			Chosen string `json:"chosen"`
			Reason string `json:"reason"`
			Nodes  int    `json:"nodes"`
		} `json:"auto"`
		Transfer struct {
			Transport string `json:"transport"`
			Delivered int64  `json:"transport_blobs"`
		} `json:"transfer"`
	}
	run := func(n int, ref string, stores, dirs []string, extra ...string) []result {
		out := make([]result, n)
		errs := make([]error, n)
		var wg gosync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				args := append([]string{"--store", stores[i], "checkout", "--from", url, ref, dirs[i], "--json", "--no-sync",
					"--transport", "auto", "--bt-listen", "127.0.0.1:0"}, extra...)
				cmd := simProcess(args...)
				var so, se bytes.Buffer
				cmd.Stdout, cmd.Stderr = &so, &se
				if err := cmd.Run(); err != nil {
					errs[i] = fmt.Errorf("node %d: %v: %s", i, err, se.String())
					return
				}
				if err := json.Unmarshal(so.Bytes(), &out[i]); err != nil {
					errs[i] = fmt.Errorf("node %d: %v: %q", i, err, so.String())
				}
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		return out
	}
	stores := []string{newStore(t), newStore(t), newStore(t)}
	dirs := []string{filepath.Join(t.TempDir(), "r"), filepath.Join(t.TempDir(), "r"), filepath.Join(t.TempDir(), "r")}
	for i, r := range run(3, "loc", stores, dirs, "--auto-nodes", "3") {
		// One copy for the three (multicast, which sim serve runs on
		// loopback too, or the swarm), not three streams.
		if (r.Auto.Chosen != "bittorrent" && r.Auto.Chosen != "multicast") || r.Auto.Nodes != 3 ||
			r.Transfer.Transport != r.Auto.Chosen || r.Transfer.Delivered == 0 || !strings.Contains(r.Auto.Reason, "3 nodes asking for") || !strings.Contains(r.Auto.Reason, "sharing 2 cores") {
			t.Errorf("node %d: %+v: want a session or a swarm chosen for 3 nodes, and used", i, r)
		}
		if d := ok(t, up, "diff", v1, dirs[i]+"/"); strings.TrimSpace(d) != "" {
			t.Errorf("node %d: tree differs from v1:\n%s", i, d)
		}
	}
	// A small update of the same nodes: answered at once, over HTTP.
	v2 := lastLine(ok(t, up, "commit", src2, "--image", "loc", "-m", "v2"))
	if v2 == v1 {
		t.Skip("corpus v1 and v2 have the same locale tree: no update to make")
	}
	for i, r := range run(1, "loc", stores[:1], dirs[:1]) {
		if r.Auto.Chosen != "" && r.Auto.Chosen != "http" {
			t.Errorf("update %d: %+v: want http", i, r)
		}
		if d := ok(t, up, "diff", v2, dirs[i]+"/"); strings.TrimSpace(d) != "" {
			t.Errorf("update %d: tree differs from v2:\n%s", i, d)
		}
	}
}
