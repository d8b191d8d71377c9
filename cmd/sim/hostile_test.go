package main

import (
	"encoding/json"
	"io"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
)

// evilServer speaks sim's protocol with answers a test crafts: one image
// "img" at commit raw, and whatever streams fetch and objects write.
type evilServer struct {
	raw            []byte // the commit's bytes
	lie            []byte // if set, served as the commit instead (bytes that do not match its id)
	fetch, objects func(w io.Writer, flush func())
}

func (e *evilServer) id() chunk.ID { return chunk.Sum(e.raw) }

func (e *evilServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	flush := func() { w.(http.Flusher).Flush() }
	id := e.id().String()
	switch {
	case r.URL.Path == "/v1/refs":
		json.NewEncoder(w).Encode(map[string]any{"images": map[string]string{"img": id}, "tags": map[string]string{}})
	case r.URL.Path == "/v1/commits/"+id:
		if e.lie != nil {
			w.Write(e.lie)
		} else {
			w.Write(e.raw)
		}
	case r.URL.Path == "/v1/commits/"+id+"/signatures":
		w.Write([]byte(`{"signatures":[]}`))
	case r.URL.Path == "/v1/fetch" && e.fetch != nil:
		e.fetch(w, flush)
	case r.URL.Path == "/v1/objects" && e.objects != nil:
		io.Copy(io.Discard, r.Body)
		e.objects(w, flush)
	case r.URL.Path == "/v1/fetch" || r.URL.Path == "/v1/objects":
		io.Copy(io.Discard, r.Body)
		enc, _ := simsync.NewEncoder(w)
		enc.Close()
	case r.URL.Path == "/v1/have":
		b, _ := io.ReadAll(r.Body)
		w.Write(make([]byte, len(b)/32))
	default:
		http.NotFound(w, r)
	}
}

// stream writes a wire stream of blobs (ids as given, right or wrong).
func stream(blobs ...any) func(io.Writer, func()) {
	return func(w io.Writer, _ func()) {
		enc, _ := simsync.NewEncoder(w)
		for i := 0; i+2 < len(blobs)+1; i += 3 {
			enc.Blob(blobs[i].(store.Type), blobs[i+1].(chunk.ID), blobs[i+2].([]byte))
		}
		enc.Close()
	}
}

// hostileTree encodes a tree as given, unchecked.
func hostileTree(entries ...snapshot.Node) ([]byte, chunk.ID) {
	b := (&snapshot.Tree{Self: snapshot.Node{Kind: snapshot.KindDir, Mode: 0o755}, Entries: entries}).Encode()
	return b, chunk.Sum(b)
}

func commitOf(tree chunk.ID, files, bytes int64) []byte {
	b, _ := (&store.Commit{Tree: tree, Time: time.Unix(1, 0).UTC(), Author: "evil", Message: "evil", Image: "img",
		Stats: store.CommitStats{Files: files, Dirs: 1, Bytes: bytes}}).Encode()
	return b
}

// TestMaliciousServer: a node (sim checkout --from, and sim pull) facing
// a server that sends crafted streams (wrong ids; trees with "..",
// absolute, overlong names, hard links out of the tree; a commit whose
// tree never comes; a commit that is not what its id says; an endless
// stream; a slow drip) stops with an error naming the problem within
// its timeout, writes nothing outside (nor, here, inside) its target,
// and stores no object it could not verify: its store stays clean and
// holds no commit.
func TestMaliciousServer(t *testing.T) {
	data := []byte("the real content of /etc/motd\n")
	cid := chunk.Sum(data)
	file := func(name string) snapshot.Node {
		return snapshot.Node{Name: name, Kind: snapshot.KindFile, Mode: 0o644, Size: uint64(len(data)), Content: []snapshot.Extent{{Len: uint64(len(data)), ID: cid}}}
	}
	okTree, okID := hostileTree(file("motd"))
	dotdot, dotdotID := hostileTree(file(".."))
	abs, absID := hostileTree(file("/etc/passwd"))
	long, longID := hostileTree(file(strings.Repeat("x", 300)))
	hl := file("evil")
	hl.Link = "../../victim"
	hard, hardID := hostileTree(hl)
	endless := func(w io.Writer, flush func()) {
		enc, _ := simsync.NewEncoder(w)
		rng := rand.New(rand.NewSource(1))
		b := make([]byte, 1<<20)
		for {
			rng.Read(b)
			if enc.Blob(store.TypeData, chunk.Sum(b), b) != nil {
				return
			}
		}
	}
	drip := func(w io.Writer, flush func()) {
		w.Write([]byte("SIMWIRE1"))
		for i := 0; i < 600; i++ {
			if _, err := w.Write([]byte{1}); err != nil {
				return
			}
			flush()
			time.Sleep(100 * time.Millisecond)
		}
	}
	for _, tc := range []struct {
		name string
		srv  *evilServer
		want string
	}{
		{"wrong ids", &evilServer{raw: commitOf(okID, 1, int64(len(data))),
			fetch:   stream(store.TypeTree, okID, okTree, store.TypeData, cid, []byte("something else entirely")),
			objects: stream(store.TypeData, cid, []byte("something else entirely"))}, "is corrupt: its content hashes to"},
		{"dotdot name", &evilServer{raw: commitOf(dotdotID, 1, 30), fetch: stream(store.TypeTree, dotdotID, dotdot), objects: stream(store.TypeTree, dotdotID, dotdot)}, `invalid file name ".."`},
		{"absolute name", &evilServer{raw: commitOf(absID, 1, 30), fetch: stream(store.TypeTree, absID, abs)}, `invalid file name "/etc/passwd"`},
		{"overlong name", &evilServer{raw: commitOf(longID, 1, 30), fetch: stream(store.TypeTree, longID, long)}, "300 bytes, over 255"},
		{"hard link out", &evilServer{raw: commitOf(hardID, 1, 30), fetch: stream(store.TypeTree, hardID, hard)}, "hardlink"},
		{"tree never comes", &evilServer{raw: commitOf(okID, 1, 30)}, "cannot supply 1 objects of commit"},
		{"commit lies", &evilServer{raw: commitOf(okID, 1, 30), lie: commitOf(okID, 2, 30)}, "is corrupt"},
		{"endless stream", &evilServer{raw: commitOf(okID, 1, int64(len(data))), fetch: endless}, "more than twice what commit"},
		{"slow drip", &evilServer{raw: commitOf(okID, 1, 30), fetch: drip, objects: drip}, "the server stalled"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs := httptest.NewServer(tc.srv)
			defer hs.Close()
			dir := t.TempDir()
			victim, target := filepath.Join(dir, "victim"), filepath.Join(dir, "root")
			os.WriteFile(victim, []byte("keep"), 0o644)
			for _, args := range [][]string{
				{"checkout", "--from", hs.URL, "--stall-timeout", "1s", "img", target},
				{"pull", "--stall-timeout", "1s", hs.URL, "img"},
			} {
				st := filepath.Join(dir, args[0]+"-store")
				if args[0] == "pull" {
					ok(t, st, "init")
				}
				start := time.Now()
				r := sim(t, st, args...)
				took := time.Since(start)
				if r.code != 1 || !strings.Contains(r.stderr, tc.want) {
					t.Errorf("sim %s: exit %d, %q; want an error with %q", args[0], r.code, r.stderr, tc.want)
				}
				if took > 30*time.Second {
					t.Errorf("sim %s took %v to give up", args[0], took)
				}
				t.Logf("sim %s: %.1fs: %s", args[0], took.Seconds(), strings.TrimSpace(r.stderr))
				// Nothing but verified objects, and no commit.
				if s := ok(t, st, "fsck", "--read-data"); !strings.Contains(s, "0 commits") {
					t.Errorf("sim %s: the node store holds a commit: %s", args[0], s)
				}
				if r := sim(t, st, "show", tc.srv.id().String()); r.code == 0 {
					t.Errorf("sim %s: the commit was stored", args[0])
				}
			}
			if b, err := os.ReadFile(victim); err != nil || string(b) != "keep" {
				t.Errorf("the file beside the target is %q (%v)", b, err)
			}
			if ents, _ := os.ReadDir(target); len(ents) != 0 {
				t.Errorf("the target holds %d entries of a refused image", len(ents))
			}
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				switch e.Name() {
				case "victim", "root", "checkout-store", "pull-store":
				default:
					t.Errorf("written beside the target: %s", e.Name())
				}
			}
		})
	}
}
