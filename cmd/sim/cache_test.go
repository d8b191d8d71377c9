package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strings"
	gosync "sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/snapshot/snapshottest"
)

// upstreamProxy stands between a site cache and its upstream: it counts
// the requests and response bytes of every route, and can corrupt the
// object streams (one byte flipped), as a broken link or a hostile
// middlebox would.
type upstreamProxy struct {
	srv *httptest.Server
	// tamper names the route whose answers get a byte flipped ("":
	// none; "objects": /v1/fetch and /v1/objects).
	tamper atomic.Value
	mu     gosync.Mutex
	reqs   map[string]int
	bytes  map[string]int64
}

func newUpstreamProxy(t *testing.T, upstream string) *upstreamProxy {
	u, err := url.Parse(upstream)
	if err != nil {
		t.Fatal(err)
	}
	p := &upstreamProxy{reqs: map[string]int{}, bytes: map[string]int64{}}
	p.tamper.Store("")
	rp := httputil.NewSingleHostReverseProxy(u)
	// A stopped upstream is part of the test: its 502s need no log.
	rp.ErrorLog = log.New(io.Discard, "", 0)
	rp.ModifyResponse = func(resp *http.Response) error {
		route := resp.Request.URL.Path
		if strings.HasPrefix(route, "/v1/commits/") {
			route = "/v1/commits"
			if strings.HasSuffix(resp.Request.URL.Path, "/signatures") {
				route = "/v1/signatures"
			}
		}
		p.mu.Lock()
		p.reqs[route]++
		p.mu.Unlock()
		at := int64(-1)
		if t := p.tamper.Load(); t == route || t == "objects" && (route == "/v1/fetch" || route == "/v1/objects") {
			// Past the stream header, inside the first frames; for
			// a commit, inside its few hundred bytes.
			at = 4000
			if route == "/v1/commits" {
				at = 40
			}
		}
		resp.Body = &countingBody{ReadCloser: resp.Body, p: p, route: route, flipAt: at}
		return nil
	}
	p.srv = httptest.NewServer(rp)
	t.Cleanup(p.srv.Close)
	return p
}

func (p *upstreamProxy) counts() (map[string]int, map[string]int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r, b := map[string]int{}, map[string]int64{}
	for k, v := range p.reqs {
		r[k] = v
	}
	for k, v := range p.bytes {
		b[k] = v
	}
	return r, b
}

type countingBody struct {
	io.ReadCloser
	p     *upstreamProxy
	route string
	n     int64
	// flipAt is the offset of the byte to flip (< 0: none).
	flipAt int64
}

func (b *countingBody) Read(buf []byte) (int, error) {
	n, err := b.ReadCloser.Read(buf)
	if b.flipAt >= b.n && b.flipAt < b.n+int64(n) {
		buf[b.flipAt-b.n] ^= 0x40
	}
	b.n += int64(n)
	b.p.mu.Lock()
	b.p.bytes[b.route] += int64(n)
	b.p.mu.Unlock()
	return n, err
}

// checkoutJSON is what the cache tests read of sim checkout --json.
type checkoutJSON struct {
	Commit   string
	Transfer struct {
		WireBytes int64 `json:"wire_bytes"`
	}
}

// checkoutAll runs n node checkouts of ref from server at once, each a
// sim process with its own store and directory, and returns their
// directories and results.
func checkoutAll(t *testing.T, server, ref string, n int, extra ...string) ([]string, []checkoutJSON) {
	t.Helper()
	dirs := make([]string, n)
	outs := make([]checkoutJSON, n)
	errs := make([]error, n)
	var wg gosync.WaitGroup
	for i := range n {
		nodeStore := newStore(t)
		dirs[i] = filepath.Join(t.TempDir(), "root")
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := simProcess(append([]string{"--store", nodeStore, "checkout", "--from", server, ref, dirs[i], "--json", "--no-sync"}, extra...)...)
			var so, se bytes.Buffer
			c.Stdout, c.Stderr = &so, &se
			if err := c.Run(); err != nil {
				errs[i] = fmt.Errorf("node %d: %v: %s", i, err, se.String())
				return
			}
			if err := json.Unmarshal(so.Bytes(), &outs[i]); err != nil {
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
	return dirs, outs
}

// waitRefs waits until server's refs name image at commit id (the cache
// refreshes them every couple of seconds).
func waitRefs(t *testing.T, server, image, id string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		var rr struct{ Images map[string]string }
		resp, err := http.Get(server + "/v1/refs")
		if err == nil {
			json.NewDecoder(resp.Body).Decode(&rr)
			resp.Body.Close()
			if rr.Images[image] == id {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never listed image %s", server, image)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestSiteCache: sim serve --upstream on real Debian data. Four nodes
// check out a signed image through the cache at once, requiring the
// signature: each gets it byte-identical and verified, and the upstream
// sends it once (one fetch stream, about one node's wire bytes). A
// mirror clones and pulls through the cache. With the upstream stopped,
// what is cached is still served, and a ref that is not fails naming
// the upstream. Pushes are refused.
func TestSiteCache(t *testing.T) {
	c := corpus(t)
	keys := t.TempDir()
	ok(t, newStore(t), "key", "gen", "admin", "--dir", keys)
	up := newStore(t)
	v1src, v2src := filepath.Join(c, "v1", "usr", "share"), filepath.Join(c, "v2", "usr", "share")
	ok(t, up, "commit", v1src, "--image", "deb", "-m", "v1")
	ok(t, up, "tag", "deb-v1", "deb")
	v2 := lastLine(ok(t, up, "commit", v2src, "--image", "deb", "--sign", filepath.Join(keys, "admin.key"), "-m", "v2"))
	upURL, upProc := startServerProcess(t, up)
	proxy := newUpstreamProxy(t, upURL)
	cacheStore := newStore(t)
	cache := startServer(t, cacheStore, "--upstream", proxy.srv.URL)

	// What one node fetching straight from the upstream receives.
	_, direct := checkoutAll(t, upURL, "deb", 1)
	image := direct[0].Transfer.WireBytes

	// Four nodes at once through the cache, each requiring a signature
	// by the admin's key.
	const nodes = 4
	var dirs []string
	var outs []checkoutJSON
	{
		n := make([]string, nodes)
		for i := range n {
			n[i] = newStore(t)
			ok(t, n[i], "trust", "add", filepath.Join(keys, "admin.pub"))
			ok(t, n[i], "trust", "require", "on")
		}
		// checkoutAll makes fresh stores; these need the trusted key,
		// so run them here.
		dirs = make([]string, nodes)
		outs = make([]checkoutJSON, nodes)
		errs := make([]string, nodes)
		var wg gosync.WaitGroup
		for i := range nodes {
			dirs[i] = filepath.Join(t.TempDir(), "root")
			wg.Add(1)
			go func() {
				defer wg.Done()
				cmd := simProcess("--store", n[i], "checkout", "--from", cache, "deb", dirs[i], "--json", "--no-sync")
				var so, se bytes.Buffer
				cmd.Stdout, cmd.Stderr = &so, &se
				if err := cmd.Run(); err != nil {
					errs[i] = fmt.Sprintf("node %d: %v: %s", i, err, se.String())
					return
				}
				json.Unmarshal(so.Bytes(), &outs[i])
			}()
		}
		wg.Wait()
		for _, e := range errs {
			if e != "" {
				t.Fatal(e)
			}
		}
		for i := range nodes {
			if s := ok(t, n[i], "verify", "deb"); !strings.Contains(s, "good signature by admin") {
				t.Errorf("node %d: verify after a checkout through the cache: %s", i, s)
			}
		}
	}
	for i, d := range dirs {
		snapshottest.Equal(t, v2src, d)
		if outs[i].Commit != v2 {
			t.Errorf("node %d checked out %s, want %s", i, outs[i].Commit, v2)
		}
	}
	reqs, byts := proxy.counts()
	objects := byts["/v1/fetch"] + byts["/v1/objects"]
	t.Logf("one image: %d wire bytes; upstream sent %d bytes of objects for %d nodes; requests %v", image, objects, nodes, reqs)
	if reqs["/v1/fetch"] != 1 {
		t.Errorf("upstream fetch streams for %d nodes: %d, want 1", nodes, reqs["/v1/fetch"])
	}
	if objects > image+image/20 || objects < image/2 {
		t.Errorf("upstream sent %d bytes of objects for %d nodes; one image is %d", objects, nodes, image)
	}
	if reqs["/v1/refs"] > 3 {
		t.Errorf("upstream refs requests: %d for %d nodes asking within seconds", reqs["/v1/refs"], nodes)
	}

	// A node that does not require signatures and one that requires a
	// key nobody signed with: the cache passes the signatures on as
	// they are, so the second is refused.
	ok(t, newStore(t), "key", "gen", "eve", "--dir", keys)
	eveNode := newStore(t)
	ok(t, eveNode, "trust", "add", filepath.Join(keys, "eve.pub"))
	if r := sim(t, eveNode, "checkout", "--require-signature", "--from", cache, "deb", filepath.Join(t.TempDir(), "x")); r.code == 0 || !strings.Contains(r.stderr, "refusing") {
		t.Errorf("checkout through the cache requiring an untrusted key: %+v", r)
	}

	// A mirror clones through the cache (the history: v1 comes up too),
	// then pulls a commit made upstream since.
	mirror := filepath.Join(t.TempDir(), "mirror")
	ok(t, newStore(t), "clone", cache, mirror)
	ok(t, mirror, "fsck", "--read-data")
	if s := ok(t, mirror, "log", "deb"); !strings.Contains(s, v2) || strings.Count(s, "commit ") < 2 {
		t.Errorf("clone through the cache: log %s", s)
	}
	v3 := lastLine(ok(t, up, "commit", filepath.Join(c, "v3", "etc"), "--image", "deb", "-m", "v3"))
	waitRefs(t, cache, "deb", v3)
	ok(t, mirror, "pull")
	if s := ok(t, mirror, "show", "deb"); !strings.Contains(s, v3) {
		t.Errorf("pull through the cache: deb is not %s: %s", v3, s)
	}
	// An image the cache lists but nobody asked for: not cached.
	other := lastLine(ok(t, up, "commit", filepath.Join(c, "v3", "etc", "ssh"), "--image", "other", "-m", "never cached"))
	waitRefs(t, cache, "other", other)

	// Pushes are refused, naming the upstream.
	if r := sim(t, mirror, "push", cache, "deb"); r.code == 0 || !strings.Contains(r.stderr, "site cache") {
		t.Errorf("push to a cache: %+v", r)
	}

	// The upstream goes away. What is cached is still served...
	upProc.Process.Signal(syscall.SIGTERM)
	upProc.Wait()
	before, _ := proxy.counts()
	dirs, _ = checkoutAll(t, cache, "deb-v1", 2)
	for _, d := range dirs {
		snapshottest.Equal(t, v1src, d)
	}
	dirs, _ = checkoutAll(t, cache, v2, 1)
	snapshottest.Equal(t, v2src, dirs[0])
	after, _ := proxy.counts()
	if after["/v1/fetch"] != before["/v1/fetch"] || after["/v1/objects"] != before["/v1/objects"] {
		t.Errorf("objects asked of a stopped upstream: %v then %v", before, after)
	}
	// ...and what is not fails naming the upstream.
	r := sim(t, newStore(t), "checkout", "--from", cache, "other", filepath.Join(t.TempDir(), "x"))
	if r.code == 0 || !strings.Contains(r.stderr, "upstream "+proxy.srv.URL) {
		t.Errorf("checkout of an uncached image with the upstream down: %+v", r)
	}
}

// TestSiteCacheTamper: an object stream corrupted between the upstream
// and the cache is refused: the node's checkout fails, nothing
// unverified is stored (the cache's store passes fsck and lacks the
// commit), and once the link is clean the same checkout succeeds.
func TestSiteCacheTamper(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	files := map[string]string{}
	for i := range 50 {
		files[fmt.Sprintf("usr/lib/f%02d", i)] = strings.Repeat(fmt.Sprintf("file %d, ", i), 3000+i*100)
	}
	writeFiles(t, src, files)
	up := newStore(t)
	id := lastLine(ok(t, up, "commit", src, "--image", "img"))
	proxy := newUpstreamProxy(t, startServer(t, up))
	cacheStore := newStore(t)
	cache, cacheProc := startServerProcess(t, cacheStore, "--upstream", proxy.srv.URL)
	node := newStore(t)
	dir := filepath.Join(t.TempDir(), "root")

	// A commit whose bytes do not hash to its id, then an object stream
	// with a flipped byte (and so is every request for what it lacks
	// after refusing it).
	for _, route := range []string{"/v1/commits", "objects"} {
		proxy.tamper.Store(route)
		r := sim(t, node, "checkout", "--from", cache, "img", dir)
		if r.code == 0 || !strings.Contains(r.stderr, "upstream "+proxy.srv.URL) {
			t.Fatalf("checkout through a cache fed a corrupted %s: %+v", route, r)
		}
		if reqs, _ := proxy.counts(); reqs[strings.Replace(route, "objects", "/v1/fetch", 1)] == 0 {
			t.Fatalf("the corrupted %s was never asked for: %v", route, reqs)
		}
		t.Logf("corrupted %s refused: %s", route, lastLine(r.stderr))
	}
	// Nothing of the commit was admitted: the cache does not hold it.
	resp, err := http.Post(cache+"/v1/have", "application/octet-stream", bytes.NewReader(mustID(t, id)))
	if err != nil {
		t.Fatal(err)
	}
	has, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Equal(has, []byte{0}) {
		t.Errorf("the cache holds the commit after a corrupted fill: %v", has)
	}

	proxy.tamper.Store("")
	ok(t, node, "checkout", "--from", cache, "img", dir)
	snapshottest.Equal(t, src, dir)

	// The cache's store, once its server stops: every byte verifies.
	cacheProc.Process.Signal(syscall.SIGTERM)
	cacheProc.Wait()
	if s := ok(t, cacheStore, "fsck", "--read-data"); !strings.Contains(s, "no errors") {
		t.Errorf("cache store fsck: %s", s)
	}
	if s := ok(t, cacheStore, "show", "img"); !strings.Contains(s, id) {
		t.Errorf("cache store after the fill: %s", s)
	}
}

func mustID(t *testing.T, s string) []byte {
	t.Helper()
	id, err := chunk.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return id[:]
}
