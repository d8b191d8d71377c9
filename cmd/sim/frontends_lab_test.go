package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	gosync "sync"
	"testing"
	"time"

	"github.com/anacrolix/torrent/metainfo"
	"golang.org/x/sys/unix"

	"github.com/systemimager/sim/snapshot/snapshottest"
)

// nsForward makes the TCP port addr (host:port, as reached from this
// process's network namespace) reachable at the same address inside
// network namespace ns (a /run/netns name): a listener opened in ns,
// each connection relayed to addr from here. The lab's hosts have no
// route to this namespace, and the Ceph harness listens on 127.0.0.1.
func nsForward(t *testing.T, ns, addr string) {
	t.Helper()
	type res struct {
		ln  net.Listener
		err error
	}
	ch := make(chan res)
	go func() {
		// setns changes only this thread: lock it, switch, open the
		// listener (its socket belongs to ns), switch back. A thread that
		// cannot switch back is left locked, so Go ends it with the
		// goroutine instead of reusing it.
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			ch <- res{err: err}
			return
		}
		defer self.Close()
		target, err := os.Open("/run/netns/" + ns)
		if err != nil {
			ch <- res{err: err}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- res{err: fmt.Errorf("setns %s: %w", ns, err)}
			return
		}
		ln, lerr := net.Listen("tcp", addr)
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			if ln != nil {
				ln.Close()
			}
			ch <- res{err: fmt.Errorf("setns back: %w", err)}
			return
		}
		runtime.UnlockOSThread()
		ch <- res{ln, lerr}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatalf("forward %s into %s: %v", addr, ns, r.err)
	}
	t.Cleanup(func() { r.ln.Close() })
	go func() {
		for {
			c, err := r.ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := net.Dial("tcp", addr)
				if err != nil {
					return
				}
				defer up.Close()
				go func() { io.Copy(up, c); up.(*net.TCPConn).CloseWrite() }()
				io.Copy(c, up)
			}()
		}
	}()
}

// curl GETs u from lab host h and returns the body; it fails the test on
// an HTTP error.
func (l *lab) curl(t *testing.T, h, u string) []byte {
	t.Helper()
	out, err := exec.Command("bash", l.sh, "exec", "--name", l.name, h, "--", "curl", "-sSf", "--max-time", "60", u).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("%s: curl %s: %v %s", h, u, err, stderr)
	}
	return out
}

// frontend is one `sim serve` of the lab's store on Ceph, at addr in the
// server namespace, with a cache of its own.
type frontend struct {
	addr, url string
	cache     string
	proc      *labProc
}

func (l *lab) startFrontend(t *testing.T, fe *frontend, loc string) {
	t.Helper()
	host, _, _ := net.SplitHostPort(fe.addr)
	fe.url = "http://" + fe.addr
	fe.proc = l.start(t, "srv", "frontend "+fe.addr, []string{"SIM_S3_CACHE=" + fe.cache},
		"--store", loc, "serve", "--listen", fe.addr, "--bt-listen", host+":6881", "--no-ui")
	waitFor(t, "frontend "+fe.addr+" answers", 60*time.Second, func() (bool, string) {
		select {
		case <-fe.proc.done:
			b, _ := os.ReadFile(fe.proc.log.Name())
			t.Fatalf("frontend %s exited: %s", fe.addr, lastLines(string(b), 10))
		default:
		}
		err := exec.Command("bash", l.sh, "exec", "--name", l.name, "n1", "--", "curl", "-sf", "--max-time", "5", "-o", "/dev/null", fe.url+"/v1/refs").Run()
		return err == nil, fmt.Sprint(err)
	})
}

// TestLabFrontends: two stateless `sim serve` frontends on one Ceph
// bucket (real radosgw), 8 nodes in network namespaces checking out v2
// across them (4 naming A first, 4 naming B first). Once every A node has
// received 24 MB, A is killed with SIGKILL: its nodes say they switched
// to B and finish there without fetching again what they had, and every
// tree is exactly the corpus's. A restarted on its cache, both frontends
// derive byte-identical torrent documents and .torrent info dictionaries
// (one info hash), and a BitTorrent swarm of 2 nodes, each naming another
// frontend first, takes pieces from both frontends' seeders.
func TestLabFrontends(t *testing.T) {
	if testing.Short() {
		t.Skip("frontends lab: long (make test runs it)")
	}
	c := corpus(t)
	loc := cephStore(t)
	u, err := url.Parse(loc)
	if err != nil {
		t.Fatal(err)
	}
	ep, err := url.Parse(u.Query().Get("endpoint"))
	if err != nil || ep.Host == "" {
		t.Fatalf("store location %s: no endpoint host", loc)
	}
	start := time.Now()
	ok(t, loc, "init")
	ok(t, loc, "commit", filepath.Join(c, "v2"), "--image", "deb", "-m", "v2")
	ok(t, loc, "tag", "v2", "deb")
	v2 := head(t, loc, "deb")
	t.Logf("v2 committed to Ceph in %s", time.Since(start).Round(time.Millisecond))

	const nn = 8
	// 100 Mbit per node: an install takes seconds, so a frontend can be
	// killed in the middle of it.
	l := newNamedLab(t, "simfe", nn, "--node-rate", "100mbit")
	if out, err := exec.Command("ip", "-n", l.name+"-srv", "addr", "add", "198.18.0.2/16", "dev", "eth0").CombinedOutput(); err != nil {
		t.Fatalf("second server address: %v %s", err, out)
	}
	nsForward(t, l.name+"-srv", ep.Host)
	base := t.TempDir()
	fes := []*frontend{
		{addr: "198.18.0.1:7480", cache: filepath.Join(base, "cache-a")},
		{addr: "198.18.0.2:7480", cache: filepath.Join(base, "cache-b")},
	}
	for _, fe := range fes {
		l.startFrontend(t, fe, loc)
	}
	a, b := fes[0], fes[1]

	// Phase 1: HTTP installs across both; A killed mid-way.
	type nodeRun struct {
		host, store, root string
		first             *frontend
		cmd               *exec.Cmd
		out, errb         bytes.Buffer
		done              chan error
	}
	nodes := make([]*nodeRun, nn)
	for i := range nodes {
		h := fmt.Sprintf("n%d", i+1)
		n := &nodeRun{host: h, store: filepath.Join(base, h+"-store"), root: filepath.Join(base, h+"-root"), first: a, done: make(chan error, 1)}
		list := a.url + "," + b.url
		if i >= nn/2 {
			n.first, list = b, b.url+","+a.url
		}
		n.cmd = l.sim(h, "--store", n.store, "checkout", "--from", list, "v2", n.root, "--json")
		n.cmd.Stdout, n.cmd.Stderr = &n.out, &n.errb
		if err := n.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { n.done <- n.cmd.Wait() }()
		t.Cleanup(func() { n.cmd.Process.Kill() })
		nodes[i] = n
	}
	rx0 := map[string]int64{}
	for _, n := range nodes {
		rx0[n.host], _ = l.bytes(n.host)
	}
	const cut = 24 << 20
	waitFor(t, "every node of A has received 24 MB", 90*time.Second, func() (bool, string) {
		var got []string
		all := true
		for _, n := range nodes[:nn/2] {
			select {
			case err := <-n.done:
				t.Fatalf("%s finished (%v) before A was killed: %s", n.host, err, n.errb.String())
			default:
			}
			rx, _ := l.bytes(n.host)
			got = append(got, fmt.Sprintf("%s %d", n.host, rx-rx0[n.host]))
			all = all && rx-rx0[n.host] >= cut
		}
		return all, strings.Join(got, ", ")
	})
	a.proc.cmd.Process.Kill() // SIGKILL: no goodbye to the nodes
	<-a.proc.done
	t.Logf("A killed after %s", time.Since(start).Round(time.Millisecond))

	wire := map[string]int64{}
	for _, n := range nodes {
		select {
		case err := <-n.done:
			if err != nil {
				t.Fatalf("%s: checkout failed: %v\n%s", n.host, err, lastLines(n.errb.String(), 10))
			}
		case <-time.After(3 * time.Minute):
			t.Fatalf("%s: checkout did not end", n.host)
		}
		var res checkoutOut
		if err := json.Unmarshal(n.out.Bytes(), &res); err != nil {
			t.Fatalf("%s: %v: %s", n.host, err, n.out.String())
		}
		wire[n.host] = res.Transfer.WireBytes
		switched := strings.Contains(n.errb.String(), "switched to "+b.url)
		if n.first == a && switched && n.host == "n1" {
			t.Logf("%s said: %s", n.host, lastLines(n.errb.String(), 3))
		}
		if n.first == a && !switched {
			t.Errorf("%s: A was killed under it, yet it did not say it switched to B: %s", n.host, n.errb.String())
		}
		if n.first == b && strings.Contains(n.errb.String(), "switched") {
			t.Errorf("%s switched though B never failed: %s", n.host, n.errb.String())
		}
		if d, err := snapshottest.Diff(filepath.Join(c, "v2"), n.root); err != nil || len(d) > 0 {
			t.Errorf("%s: tree differs from v2: %v %v", n.host, err, d[:min(len(d), 5)])
		}
	}
	t.Logf("wire bytes per node: %v (phase 1 done after %s)", wire, time.Since(start).Round(time.Millisecond))
	// A resumed transfer fetches only what is missing: what came from A
	// (≥ 24 MB) is not fetched again. Allowed beyond an uninterrupted
	// node: the frame A was cut in, and stored frames that go out whole.
	var clean int64
	for _, n := range nodes[nn/2:] {
		clean = max(clean, wire[n.host])
	}
	for _, n := range nodes[:nn/2] {
		if w := wire[n.host]; w > clean+12<<20 {
			t.Errorf("%s: %d wire bytes, an uninterrupted node %d: what arrived from A was fetched again", n.host, w, clean)
		}
	}

	// Phase 2: A restarted on its cache; both derive the same torrents.
	l.startFrontend(t, a, loc)
	docA := l.curl(t, "n1", a.url+"/v1/bt/torrent?want="+v2)
	docB := l.curl(t, "n1", b.url+"/v1/bt/torrent?want="+v2)
	if !bytes.Equal(docA, docB) {
		t.Errorf("torrent documents differ: A %d bytes, B %d bytes", len(docA), len(docB))
	}
	var hashes []metainfo.Hash
	var infos [][]byte
	for _, fe := range fes {
		mi, err := metainfo.Load(bytes.NewReader(l.curl(t, "n1", fe.url+"/v1/bt/torrents/v2.torrent")))
		if err != nil {
			t.Fatalf("%s: .torrent: %v", fe.url, err)
		}
		if want := fe.url + "/v1/bt/announce"; mi.Announce != want {
			t.Errorf("%s: .torrent announce %q, want %q", fe.url, mi.Announce, want)
		}
		hashes, infos = append(hashes, mi.HashInfoBytes()), append(infos, mi.InfoBytes)
	}
	if hashes[0] != hashes[1] || !bytes.Equal(infos[0], infos[1]) {
		t.Errorf(".torrent info dictionaries differ: %s vs %s", hashes[0], hashes[1])
	}
	t.Logf("one info hash on both frontends: %s", hashes[0].HexString())

	// Phase 3: a swarm across both frontends' seeders.
	p3 := time.Now()
	var wg gosync.WaitGroup
	for i := 1; i <= 2; i++ {
		wg.Add(1)
		go func(h string, list string) {
			defer wg.Done()
			st, root := filepath.Join(base, h+"-bt-store"), filepath.Join(base, h+"-bt-root")
			if _, err := l.btCheckout(h, st, list, "v2", root, nil); err != nil {
				t.Error(err)
				return
			}
			if d, err := snapshottest.Diff(filepath.Join(c, "v2"), root); err != nil || len(d) > 0 {
				t.Errorf("%s (bittorrent): tree differs from v2: %v %v", h, err, d[:min(len(d), 5)])
			}
		}(fmt.Sprintf("n%d", i), map[bool]string{true: a.url + "," + b.url, false: b.url + "," + a.url}[i%2 == 1])
	}
	wg.Wait()
	for _, fe := range fes {
		var status []struct {
			InfoHash string `json:"info_hash"`
			Uploaded int64  `json:"uploaded"`
		}
		if err := json.Unmarshal(l.curl(t, "n1", fe.url+"/v1/bt/status"), &status); err != nil {
			t.Fatal(err)
		}
		var up int64
		for _, s := range status {
			if s.InfoHash == hashes[0].HexString() {
				up += s.Uploaded
			}
		}
		t.Logf("%s seeded %d payload bytes of %s", fe.url, up, hashes[0].HexString())
		if up == 0 {
			t.Errorf("%s seeded nothing: the swarm did not span both frontends", fe.url)
		}
	}
	t.Logf("phase 3 (bittorrent) %s; total %s", time.Since(p3).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}
