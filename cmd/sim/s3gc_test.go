package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/client"
	"github.com/systemimager/sim/snapshot/snapshottest"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/store/s3"
)

// gcFixture fills an S3 store: image "old" (shared files and files only
// it has) and image "keep" (the shared files and its own), then removes
// "old". Its pack is then partly dead: the shared blobs must survive gc,
// the others may go. It returns the directories and the dead-only blobs.
type gcFixture struct {
	loc, old, keep string
	deadOnly       []chunk.ID // blobs only "old" had
	oldTree        chunk.ID
}

func randomFiles(rng *rand.Rand, prefix string, n, size int) map[string]string {
	m := map[string]string{}
	buf := make([]byte, size)
	for i := 0; i < n; i++ {
		rng.Read(buf)
		m[fmt.Sprintf("%s%02d", prefix, i)] = string(buf[:size/2+rng.Intn(size/2)])
	}
	return m
}

func newGCFixture(t *testing.T) gcFixture {
	t.Helper()
	f := gcFixture{loc: cephStore(t)}
	ok(t, f.loc, "init")
	rng := rand.New(rand.NewSource(15))
	shared := randomFiles(rng, "shared/f", 12, 200<<10)
	dead := randomFiles(rng, "dead/f", 12, 200<<10)
	f.old, f.keep = t.TempDir(), t.TempDir()
	writeFiles(t, f.old, shared)
	writeFiles(t, f.old, dead)
	writeFiles(t, f.keep, shared)
	writeFiles(t, f.keep, randomFiles(rng, "own/f", 6, 200<<10))
	ok(t, f.loc, "commit", f.old, "--image", "old", "-m", "old")
	ok(t, f.loc, "commit", f.keep, "--image", "keep", "-m", "keep")
	f.oldTree = mustParse(headTree(t, f.loc, "old"))
	ok(t, f.loc, "image", "rm", "old")
	for _, c := range dead {
		f.deadOnly = append(f.deadOnly, chunkIDs(t, []byte(c))...)
	}
	return f
}

// chunkIDs are the blobs a file of content c is stored as: a file of
// 100-200 KiB is one chunk or two (64 KiB min, 128 KiB average), so the
// sum of the whole file is not always a blob.
func chunkIDs(t *testing.T, c []byte) []chunk.ID {
	t.Helper()
	ch := chunk.NewChunker(store.DefaultConfig().Chunker)
	ch.Reset(bytes.NewReader(c))
	var ids []chunk.ID
	for {
		b, err := ch.Next()
		if err == io.EOF {
			return ids
		}
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, chunk.Sum(b))
	}
}

func headTree(t *testing.T, loc, image string) string {
	t.Helper()
	var c struct {
		Tree string `json:"tree"`
	}
	decodeJSON(t, ok(t, loc, "show", image, "--json"), &c)
	return c.Tree
}

// openS3 opens loc with a cache of its own (another frontend).
func openS3(t *testing.T, loc string) *store.Store {
	t.Helper()
	s, err := store.OpenCache(loc, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// bucketPacks counts the packs in the bucket.
func bucketPacks(t *testing.T, st *store.Store) int {
	t.Helper()
	objs, err := st.Remote().List(context.Background(), "packs/", 0)
	if err != nil {
		t.Fatal(err)
	}
	return len(objs)
}

// TestS3GCRace: gc on the store on Ceph racing pushes. Two frontends
// (stores with caches opened before the mark) commit images that reuse
// the blobs gc finds dead, before, during and after its mark and sweep;
// one commit made after the mark names the dead image's whole tree (a
// push that deduplicated against everything). Every image a completed
// push made checks out exact afterwards, `sim fsck --read-data` is clean,
// and a final gc removes what nothing needs.
func TestS3GCRace(t *testing.T) {
	f := newGCFixture(t)
	a, b := openS3(t, f.loc), openS3(t, f.loc)
	const grace = 3 * time.Second

	// Pushers: each round a directory of some "dead" files of old plus
	// a file of its own, committed as a new image.
	type done struct{ image, dir string }
	var (
		mu        sync.Mutex
		completed []done
		stop      = make(chan struct{})
		wg        sync.WaitGroup
		perr      = make(chan error, 2)
		// budget holds one token per push the pushers may make: the
		// test grants a few right before each gc, so pushes race every
		// phase, yet their number (and the index files each leaves) is
		// bounded, not whatever a loaded machine lets through.
		budget = make(chan struct{}, 64)
	)
	grant := func(n int) {
		for i := 0; i < n; i++ {
			budget <- struct{}{}
		}
	}
	for w, st := range []*store.Store{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(w)))
			for round := 0; ; round++ {
				select {
				case <-budget:
				case <-stop:
					return
				}
				dir := t.TempDir()
				files := map[string]string{fmt.Sprintf("own-%d-%d", w, round): fmt.Sprint(rng.Int63(), "\n")}
				for i := 0; i < 4; i++ {
					n := rng.Intn(12)
					c, err := os.ReadFile(filepath.Join(f.old, fmt.Sprintf("dead/f%02d", n)))
					if err != nil {
						perr <- err
						return
					}
					files[fmt.Sprintf("dead/f%02d", n)] = string(c)
				}
				writeFiles(t, dir, files)
				image := fmt.Sprintf("push-%d-%d", w, round)
				if _, _, err := client.Commit(context.Background(), st, dir, client.CommitOptions{Image: image, Message: "push"}); err != nil {
					perr <- fmt.Errorf("push %s: %w", image, err)
					return
				}
				mu.Lock()
				completed = append(completed, done{image, dir})
				mu.Unlock()
			}
		}()
	}
	pushes := func() int { mu.Lock(); defer mu.Unlock(); return len(completed) }
	waitPushes := func(n int) {
		for pushes() < n {
			select {
			case err := <-perr:
				t.Fatal(err)
			default:
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	grant(2)
	waitPushes(2)

	// Mark, with the pushers running.
	grant(8)
	gcEnv := func() { t.Setenv("SIM_S3_CACHE", t.TempDir()) }
	gcEnv()
	out := ok(t, f.loc, "gc", "--grace", grace.String())
	if !strings.Contains(out, "gc: marked ") {
		t.Fatalf("first gc marked nothing:\n%s", out)
	}
	marks, err := a.GCMarks()
	if err != nil || len(marks) != 1 {
		t.Fatalf("marks after the first gc: %v, %v", marks, err)
	}
	// A push that deduplicated against the whole dead image, completed
	// after the mark: the sweep must keep what it names.
	rc := &store.Commit{Tree: f.oldTree, Image: "revived", Message: "revived", Time: time.Now().UTC()}
	rid, err := b.PutCommit(rc)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.SetImage("revived", chunk.ID{}, rid, "commit", ""); err != nil {
		t.Fatal(err)
	}
	// Too early: the mark waits.
	grant(4)
	out = ok(t, f.loc, "gc", "--grace", grace.String())
	if !strings.Contains(out, "is swept by a gc from") || strings.Contains(out, "swept 1 marks") {
		t.Fatalf("gc within the grace period:\n%s", out)
	}
	// Sweep once the grace period is over, pushes still running.
	for !marks[0].Due(time.Now()) {
		time.Sleep(50 * time.Millisecond)
	}
	atMark := pushes()
	grant(2)
	waitPushes(atMark + 2)
	grant(8)
	out = ok(t, f.loc, "gc", "--grace", grace.String())
	if !strings.Contains(out, "gc: swept ") {
		t.Fatalf("gc after the grace period swept nothing:\n%s", out)
	}
	grant(2)
	waitPushes(pushes() + 2)
	close(stop)
	wg.Wait()
	select {
	case err := <-perr:
		t.Fatal(err)
	default:
	}
	t.Logf("%d pushes completed (%d by the mark); gc:\n%s", len(completed), atMark, out)

	check := func(when string, extra ...done) {
		t.Helper()
		gcEnv()
		for _, d := range append(append(completed[:len(completed):len(completed)], extra...), done{"keep", f.keep}) {
			dst := filepath.Join(t.TempDir(), "co")
			if r := sim(t, f.loc, "checkout", d.image, dst, "--no-sync"); r.code != 0 {
				t.Fatalf("%s: checkout %s: %s%s", when, d.image, r.stdout, r.stderr)
			}
			snapshottest.Equal(t, d.dir, dst)
		}
		if r := sim(t, f.loc, "fsck", "--read-data"); r.code != 0 || strings.Contains(r.stdout, "warning") {
			t.Fatalf("%s: fsck: %s%s", when, r.stdout, r.stderr)
		}
	}
	check("after the racing sweep", done{"revived", f.old})

	// With the pushers gone, "revived" removed, and gc swept at once:
	// the blobs only "old" had are gone, everything else stays.
	ok(t, f.loc, "image", "rm", "revived")
	for {
		ms, err := a.GCMarks()
		if err != nil {
			t.Fatal(err)
		}
		due := true
		for _, m := range ms {
			due = due && m.Due(time.Now())
		}
		if due {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	out = ok(t, f.loc, "gc", "--grace", "0")
	t.Logf("final gc:\n%s", out)
	fresh := openS3(t, f.loc)
	used := map[chunk.ID]bool{}
	for _, d := range completed {
		for i := 0; i < 12; i++ {
			if c, err := os.ReadFile(filepath.Join(d.dir, fmt.Sprintf("dead/f%02d", i))); err == nil {
				for _, id := range chunkIDs(t, c) {
					used[id] = true
				}
			}
		}
	}
	for _, id := range f.deadOnly {
		has, err := fresh.HasManyIndexed([]chunk.ID{id})
		if err != nil {
			t.Fatal(err)
		}
		if has[0] != used[id] {
			t.Errorf("blob %s: in the store %v, used by a push %v", id.Short(), has[0], used[id])
		}
	}
	if ms, _ := fresh.GCMarks(); len(ms) != 0 {
		t.Errorf("marks left after gc --grace 0: %v", ms)
	}
	check("after the final gc")
}

// TestS3GCCrash: `sim gc --grace 0` killed (SIGKILL) right after each of
// its writes to the bucket in turn: after every kill `sim fsck
// --read-data` is clean, and the next gc finishes the job.
func TestS3GCCrash(t *testing.T) {
	f := newGCFixture(t)
	gcCache := t.TempDir() // one gc host's cache across the kills
	killed := 0
	for n := 1; ; n++ {
		c := simProcess("--store", f.loc, "gc", "--grace", "0")
		c.Env = append(c.Env, "SIM_GC_KILL_AFTER="+fmt.Sprint(n), "SIM_S3_CACHE="+gcCache)
		outb, err := c.CombinedOutput()
		if err == nil {
			t.Logf("gc completed without reaching write %d:\n%s", n, outb)
			break
		}
		if ws, ok := c.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("gc (kill after write %d): %v\n%s", n, err, outb)
		}
		killed++
		t.Setenv("SIM_S3_CACHE", t.TempDir())
		if r := sim(t, f.loc, "fsck"); r.code != 0 {
			t.Fatalf("kill after write %d: fsck: %s%s", n, r.stdout, r.stderr)
		}
		if r := sim(t, f.loc, "fsck", "--read-data"); r.code != 0 {
			t.Fatalf("kill after write %d: fsck --read-data: %s%s", n, r.stdout, r.stderr)
		}
		if n > 200 {
			t.Fatal("gc never completes")
		}
	}
	if killed < 3 {
		t.Fatalf("only %d kills: the test proves little", killed)
	}
	// The job is done: no mark left, the dead-only blobs gone, "keep"
	// exact, and another gc finds nothing.
	t.Setenv("SIM_S3_CACHE", t.TempDir())
	out := ok(t, f.loc, "gc", "--grace", "0")
	if !strings.Contains(out, "nothing new to mark") || strings.Contains(out, "swept") {
		t.Errorf("gc after the crashes:\n%s", out)
	}
	fresh := openS3(t, f.loc)
	if ms, err := fresh.GCMarks(); err != nil || len(ms) != 0 {
		t.Errorf("marks left: %v %v", ms, err)
	}
	has, err := fresh.HasManyIndexed(f.deadOnly)
	if err != nil {
		t.Fatal(err)
	}
	for i, h := range has {
		if h {
			t.Errorf("dead blob %s survived", f.deadOnly[i].Short())
		}
	}
	dst := filepath.Join(t.TempDir(), "co")
	ok(t, f.loc, "checkout", "keep", dst, "--no-sync")
	snapshottest.Equal(t, f.keep, dst)
	if r := sim(t, f.loc, "fsck", "--read-data"); r.code != 0 || strings.Contains(r.stdout, "warning") {
		t.Fatalf("final fsck: %s%s", r.stdout, r.stderr)
	}
	t.Logf("%d kills; %d packs in the bucket", killed, bucketPacks(t, fresh))
}

// TestS3FsckReadsNoPack: plain fsck on an S3 store downloads no pack
// (structure from the index files and the listing, trees by ranged
// GETs); --read-data downloads every one.
func TestS3FsckReadsNoPack(t *testing.T) {
	f := newGCFixture(t)
	st := openS3(t, f.loc)
	sizes, err := st.PackSizes()
	if err != nil {
		t.Fatal(err)
	}
	var packBytes int64
	for _, s := range sizes {
		packBytes += s
	}
	before := s3.Totals()
	rep, err := client.Fsck(st, false)
	if err != nil {
		t.Fatalf("fsck: %v %+v", err, rep)
	}
	plain := s3.Totals()
	cached := func() int {
		n := 0
		filepath.Walk(st.Dir(), func(p string, fi os.FileInfo, err error) error {
			if err == nil && strings.HasSuffix(p, ".pack") && strings.Contains(p, "/packs/") {
				n++
			}
			return nil
		})
		return n
	}
	if n := cached(); n != 0 {
		t.Errorf("plain fsck downloaded %d packs", n)
	}
	got := plain.BytesDown - before.BytesDown
	if got*4 > packBytes {
		t.Errorf("plain fsck read %d bytes of %d in packs", got, packBytes)
	}
	if _, err := client.Fsck(st, true); err != nil {
		t.Fatal(err)
	}
	full := s3.Totals()
	if n := cached(); n != len(sizes) {
		t.Errorf("fsck --read-data has %d of %d packs", n, len(sizes))
	}
	t.Logf("packs %d B; plain fsck %d requests %d B in; --read-data %d requests %d B in",
		packBytes, plain.Requests-before.Requests, got, full.Requests-plain.Requests, full.BytesDown-plain.BytesDown)
}

// TestS3Unavailable: when the gateway stops answering reads of packs (a
// 503 for each, as a radosgw whose OSDs are stuck gives), fsck and gc
// stop and say the store could not be read; neither calls it damaged,
// gc deletes nothing, and once the gateway answers again all is clean.
func TestS3Unavailable(t *testing.T) {
	f := newGCFixture(t)
	u, err := url.Parse(f.loc)
	if err != nil {
		t.Fatal(err)
	}
	up, err := url.Parse(u.Query().Get("endpoint"))
	if err != nil {
		t.Fatal(err)
	}
	var failing atomic.Bool
	var refused atomic.Int64
	rp := httputil.NewSingleHostReverseProxy(up)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() && r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/packs/") {
			refused.Add(1)
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code><Message>slow down</Message></Error>`)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	defer srv.Close()
	q := u.Query()
	q.Set("endpoint", srv.URL)
	u.RawQuery = q.Encode()
	loc := u.String()
	packs := bucketPacks(t, openS3(t, f.loc))

	failing.Store(true)
	for _, args := range [][]string{{"fsck", "--read-data"}, {"gc", "--grace", "0"}} {
		t.Setenv("SIM_S3_CACHE", t.TempDir()) // nothing cached: every tree is read from a pack
		r := sim(t, loc, args...)
		out := r.stdout + r.stderr
		if r.code == 0 || !strings.Contains(out, "could not read the store") || strings.Contains(out, "damaged") {
			t.Fatalf("%s with the gateway failing: exit %d\n%s", args[0], r.code, out)
		}
	}
	if refused.Load() == 0 {
		t.Fatal("no GET of a pack reached the failing gateway")
	}
	if n := bucketPacks(t, openS3(t, f.loc)); n != packs {
		t.Fatalf("gc on an unreadable store changed the bucket: %d packs, were %d", n, packs)
	}
	failing.Store(false)
	t.Setenv("SIM_S3_CACHE", t.TempDir())
	if r := sim(t, loc, "fsck", "--read-data"); r.code != 0 {
		t.Fatalf("fsck once the gateway answers: %s%s", r.stdout, r.stderr)
	}
	dst := filepath.Join(t.TempDir(), "co")
	ok(t, loc, "checkout", "keep", dst, "--no-sync")
	snapshottest.Equal(t, f.keep, dst)
}
