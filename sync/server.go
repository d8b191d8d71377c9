package sync

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	gosync "sync"
	"time"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/store/sign"
)

// Server serves a store over HTTP (ARCHITECTURE.md "HTTP protocol").
// Every route needs a role (see Authorize): reads are open unless
// PrivateReads (or ReadTokens) is set; writes (push, ref updates) need an
// admin token, from WriteTokens or the store's tokens (sim token add).
type Server struct {
	Store   *store.Store
	Planner *Planner
	// WriteTokens are admin tokens (sim serve --token-file); ReadTokens
	// may only read, and close reads to anonymous requests.
	WriteTokens []string
	ReadTokens  []string
	// PrivateReads closes every route to requests without a valid
	// token (sim serve --read-token).
	PrivateReads bool
	// RequireSignature refuses a push that moves a ref to a commit
	// without a valid signature by a key the store trusts, as the
	// store's own policy does when set (sim serve --require-signature).
	RequireSignature bool
	// MaxStreams bounds the object streams (fetch, objects, push) served
	// at once; more wait. Each holds at most a few frames in memory.
	MaxStreams int
	Log        *log.Logger
	// IdleTimeout ends a request whose response makes no progress (the
	// client stopped reading) or whose body brings nothing for that
	// long: a stalled client cannot hold a stream slot or its memory
	// forever. 0: one minute.
	IdleTimeout time.Duration
	// Observe, when set, is told of every request once it is answered:
	// the ServeMux pattern that routed it ("" when none did: a 404 or
	// 405), its status, the bytes of its response body and how long it
	// took. sim serve's GET /metrics counts by it (client/metrics); the
	// pattern, never the path, keeps its labels few. Set it before
	// serving; it must not block.
	Observe func(pattern string, status int, bytes int64, d time.Duration)
	// Cache, when set, makes the server a pull-through site cache of
	// an upstream (sync/cache.go): set it before serving.
	Cache *Cache

	once  gosync.Once
	mux   *http.ServeMux
	slots chan struct{}
	// pushMu serializes pushes' ref updates with their checks.
	pushMu gosync.Mutex
	stats  ServerStats
	smu    gosync.Mutex
}

// ServerStats counts what the server sent and received.
type ServerStats struct {
	Fetches, Pushes   int64
	BytesOut, BytesIn int64
}

// Stats returns a copy of the counters.
func (s *Server) Stats() ServerStats {
	s.smu.Lock()
	defer s.smu.Unlock()
	return s.stats
}

func (s *Server) init() {
	s.once.Do(func() {
		if s.MaxStreams <= 0 {
			s.MaxStreams = 64
		}
		s.slots = make(chan struct{}, s.MaxStreams)
		if s.Planner == nil {
			s.Planner = NewPlanner(s.Store)
		}
		if s.Log == nil {
			s.Log = log.New(io.Discard, "", 0)
		}
		s.mux = http.NewServeMux()
		for _, r := range []struct {
			pattern string
			role    Role
			h       http.HandlerFunc
		}{
			{"GET /v1/whoami", RoleNone, s.whoami},
			{"GET /v1/refs", RoleRead, s.refs},
			{"GET /v1/commits/{id}", RoleRead, func(w http.ResponseWriter, r *http.Request) {
				s.immutable(w, r, r.PathValue("id"), func(id chunk.ID) ([]byte, error) { return s.Store.CommitRaw(id) })
			}},
			{"GET /v1/commits/{id}/signatures", RoleRead, s.signatures},
			{"GET /v1/blobs/{id}", RoleRead, func(w http.ResponseWriter, r *http.Request) { s.immutable(w, r, r.PathValue("id"), s.Store.Get) }},
			{"GET /v1/packs/{id}", RoleRead, s.pack},
			{"GET /v1/fetch", RoleRead, func(w http.ResponseWriter, r *http.Request) { s.fetch(w, r, false) }},
			{"GET /v1/plan", RoleRead, func(w http.ResponseWriter, r *http.Request) { s.fetch(w, r, true) }},
			{"POST /v1/objects", RoleRead, s.objects},
			{"POST /v1/have", RoleRead, s.have},
			{"POST /v1/push", RoleAdmin, s.push},
			{"POST /v1/refs", RoleAdmin, s.updateRefs},
		} {
			h, role := r.h, r.role
			if s.Cache != nil {
				h, role = s.Cache.route(r.pattern, role, h)
			}
			s.mux.Handle(r.pattern, s.Require(role, h))
		}
	})
}

// Handle mounts an extension's handler (the BitTorrent seeder, multicast
// sessions, the install protocol) on the server's mux, with a ServeMux
// pattern ("GET /v1/bt/torrent", "/v1/install/"). It is a read
// (HandleRole with RoleRead). Call it before serving.
func (s *Server) Handle(pattern string, h http.Handler) {
	s.HandleRole(pattern, RoleRead, h)
}

// Serves reports whether a request METHOD PATH would reach a handler: an
// extension asks it at request time which others are mounted (sync/auto
// offers multicast only where sim serve runs multicast sessions).
func (s *Server) Serves(method, path string) bool {
	s.init()
	r, err := http.NewRequest(method, path, nil)
	if err != nil {
		return false
	}
	_, pattern := s.mux.Handler(r)
	return pattern != ""
}

// RefsResponse is GET /v1/refs.
type RefsResponse struct {
	Images map[string]chunk.ID `json:"images"`
	Tags   map[string]chunk.ID `json:"tags"`
}

// RefUpdate moves one ref on the server (POST /v1/refs).
type RefUpdate struct {
	Kind string   `json:"kind"` // "image" or "tag"
	Name string   `json:"name"`
	Old  chunk.ID `json:"old"` // image: expected head, zero to create
	New  chunk.ID `json:"new"`
}

// RefsRequest is POST /v1/refs: commits to store (encoded, in parent
// before child order) and ref updates, applied after checking that every
// object the commits reach is present.
type RefsRequest struct {
	Commits []json.RawMessage `json:"commits"`
	Updates []RefUpdate       `json:"updates"`
	// Signatures of the commits above or of commits the server holds,
	// verified and stored beside them.
	Signatures []CommitSignature `json:"signatures,omitempty"`
}

// maxRefsRequest bounds POST /v1/refs.
const maxRefsRequest = 64 << 20

// ServeHTTP serves the API and the extensions mounted with Handle and
// HandleRole, each behind the role its route needs, and with every read
// of the request body and write of the response bounded by IdleTimeout.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.init()
	start := time.Now()
	idle := s.IdleTimeout
	if idle <= 0 {
		idle = time.Minute
	}
	rc := http.NewResponseController(w)
	iw := &idleWriter{ResponseWriter: w, rc: rc, idle: idle}
	if r.Body != nil {
		r.Body = idleBody{r.Body, rc, idle}
	}
	s.mux.ServeHTTP(iw, r)
	// The connection may serve another request: no deadline of this one
	// may outlive it.
	rc.SetWriteDeadline(time.Time{})
	rc.SetReadDeadline(time.Time{})
	if s.Observe != nil {
		// The mux set r.Pattern on this request before calling the route.
		status := iw.status
		if status == 0 {
			status = http.StatusOK // a handler that wrote nothing
		}
		s.Observe(r.Pattern, status, iw.n, time.Since(start))
	}
}

// idleWriter moves the write deadline before every write: a response
// must make progress, however long it is. It also notes the status and
// the body's bytes, for Observe.
type idleWriter struct {
	http.ResponseWriter
	rc     *http.ResponseController
	idle   time.Duration
	status int
	n      int64
}

func (w *idleWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *idleWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	w.rc.SetWriteDeadline(time.Now().Add(w.idle))
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

// ReadFrom keeps sendfile for whole packs (one long call: no deadline;
// a slow reader of a pack holds a goroutine and an open file, no slot).
func (w *idleWriter) ReadFrom(r io.Reader) (int64, error) {
	w.rc.SetWriteDeadline(time.Time{})
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		if w.status == 0 {
			w.status = http.StatusOK
		}
		n, err := rf.ReadFrom(r)
		w.n += n
		return n, err
	}
	return io.Copy(struct{ io.Writer }{w}, r) // counted by Write
}

func (w *idleWriter) Flush() { w.rc.Flush() }

func (w *idleWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// idleBody moves the read deadline before every read of a request body.
type idleBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	idle time.Duration
}

func (b idleBody) Read(p []byte) (int, error) {
	b.rc.SetReadDeadline(time.Now().Add(b.idle))
	return b.ReadCloser.Read(p)
}

func (s *Server) refs(w http.ResponseWriter, _ *http.Request) {
	out := RefsResponse{Images: map[string]chunk.ID{}, Tags: map[string]chunk.ID{}}
	ims, err := s.Store.Images()
	if err == nil {
		for _, im := range ims {
			out.Images[im.Name] = im.Head
		}
		var tags []store.Tag
		if tags, err = s.Store.Tags(); err == nil {
			for _, t := range tags {
				out.Tags[t.Name] = t.Commit
			}
		}
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache") // refs move
	json.NewEncoder(w).Encode(out)
}

// immutable serves an object named by its id: cacheable forever, with a
// strong ETag and Range support.
func (s *Server) immutable(w http.ResponseWriter, r *http.Request, name string, get func(chunk.ID) ([]byte, error)) {
	id, err := chunk.Parse(name)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	b, err := get(id)
	if err != nil {
		httpError(w, err)
		return
	}
	w.Header().Set("ETag", `"`+id.String()+`"`)
	w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "", time.Time{}, strings.NewReader(string(b)))
	s.count(int64(len(b)), 0)
}

// pack serves a whole pack file (mirrors, caches, web seeds): sendfile
// and Range through http.ServeContent on the file.
func (s *Server) pack(w http.ResponseWriter, r *http.Request) {
	id, err := chunk.Parse(strings.TrimSuffix(r.PathValue("id"), ".pack"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	sizes, err := s.Store.PackSizes()
	if _, ok := sizes[id]; err != nil || !ok {
		http.Error(w, "no such pack", http.StatusNotFound)
		return
	}
	f, err := os.Open(s.Store.PackPath(id))
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	defer f.Close()
	w.Header().Set("ETag", `"`+id.String()+`"`)
	w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "", time.Time{}, f)
}

// httpError answers 404 for what the store does not have, 500 otherwise.
func httpError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	if errors.Is(err, store.ErrNotFound) {
		code = http.StatusNotFound
	}
	http.Error(w, err.Error(), code)
}

func (s *Server) count(out, in int64) {
	s.smu.Lock()
	s.stats.BytesOut += out
	s.stats.BytesIn += in
	s.smu.Unlock()
}

func (s *Server) acquire(r *http.Request) bool {
	select {
	case s.slots <- struct{}{}:
		return true
	case <-r.Context().Done():
		return false
	}
}

func (s *Server) release() { <-s.slots }

// PlanInfo is GET /v1/plan: what a fetch would send.
type PlanInfo struct {
	Commit     chunk.ID `json:"commit"`
	Haves      int      `json:"haves_known"`
	Trees      int      `json:"trees"`
	TreeBytes  int64    `json:"tree_bytes"`
	Chunks     int      `json:"chunks"`
	ChunkBytes int64    `json:"chunk_bytes"`
	WireBytes  int64    `json:"wire_bytes_estimate"` // what the fetch stream should weigh
}

// ParseWantHaves reads a fetch's query: want=ID and have=ID,ID,... (at
// most 64), as GET /v1/fetch, GET /v1/plan and the transport advice take
// them. The error says which parameter is wrong.
func ParseWantHaves(q url.Values) (chunk.ID, []chunk.ID, error) {
	want, err := chunk.Parse(q.Get("want"))
	if err != nil {
		return want, nil, fmt.Errorf("want: %w", err)
	}
	var haves []chunk.ID
	if h := q.Get("have"); h != "" {
		for _, x := range strings.Split(h, ",") {
			id, err := chunk.Parse(x)
			if err != nil {
				return want, nil, fmt.Errorf("have: %w", err)
			}
			haves = append(haves, id)
		}
	}
	if len(haves) > 64 {
		return want, nil, errors.New("at most 64 have commits")
	}
	return want, haves, nil
}

// fetch streams what a receiver holding the have commits lacks of want.
// The response depends only on (want, have) and the store's contents, so
// a plain HTTP cache in front of the server can serve it to every node
// making the same update.
func (s *Server) fetch(w http.ResponseWriter, r *http.Request, planOnly bool) {
	q := r.URL.Query()
	want, haves, err := ParseWantHaves(q)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	pl, err := s.Planner.Plan(want, haves)
	if err != nil {
		httpError(w, err)
		return
	}
	if planOnly {
		est, err := s.Planner.Estimate(pl)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(PlanInfo{Commit: want, Haves: pl.Haves, Trees: len(pl.Trees), TreeBytes: pl.TreeBytes,
			Chunks: len(pl.Chunks), ChunkBytes: pl.ChunkBytes, WireBytes: est})
		return
	}
	if !s.acquire(r) {
		return
	}
	defer s.release()
	key := chunk.Sum([]byte(wireMagic + want.String() + "/" + q.Get("have")))
	w.Header().Set("ETag", `W/"`+key.String()+`"`)
	w.Header().Set("Cache-Control", "public, max-age=86400")
	w.Header().Set("Content-Type", "application/x-sim-wire")
	s.stream(w, r, func(enc *Encoder) error { return s.Planner.Send(r.Context(), enc, pl) })
	s.smu.Lock()
	s.stats.Fetches++
	s.smu.Unlock()
}

func (s *Server) stream(w http.ResponseWriter, r *http.Request, fn func(*Encoder) error) {
	enc, err := NewEncoder(w)
	if err == nil {
		err = fn(enc)
	}
	if err == nil {
		err = enc.Close()
	}
	if enc != nil {
		s.count(enc.Bytes(), 0)
	}
	if err != nil {
		// Headers are gone: the receiver sees a stream without its
		// end record and treats it as truncated.
		s.Log.Printf("stream to %s: %v", r.RemoteAddr, err)
	}
}

// readIDs reads a body of concatenated 32-byte ids.
func readIDs(r io.Reader, max int) ([]chunk.ID, error) {
	b, err := io.ReadAll(io.LimitReader(r, int64(max)*32+1))
	if err != nil {
		return nil, err
	}
	if len(b)%32 != 0 || len(b) > max*32 {
		return nil, fmt.Errorf("body must be at most %d ids of 32 bytes", max)
	}
	ids := make([]chunk.ID, len(b)/32)
	for i := range ids {
		copy(ids[i][:], b[i*32:])
	}
	return ids, nil
}

// maxIDs bounds the ids of one request (8 MiB of body): clients send
// larger sets in batches.
const maxIDs = 1 << 18

func (s *Server) objects(w http.ResponseWriter, r *http.Request) {
	ids, err := readIDs(r.Body, maxIDs)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if !s.acquire(r) {
		return
	}
	defer s.release()
	w.Header().Set("Content-Type", "application/x-sim-wire")
	s.stream(w, r, func(enc *Encoder) error { return s.Planner.SendObjects(r.Context(), enc, ids) })
}

// have answers which of the posted ids (blobs or commits) the store
// holds: one byte each.
func (s *Server) have(w http.ResponseWriter, r *http.Request) {
	ids, err := readIDs(r.Body, maxIDs)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	has, err := s.Store.HasMany(ids)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	out := make([]byte, len(has))
	for i, h := range has {
		if !h {
			h, _ = s.Store.HasCommit(ids[i])
		}
		if h {
			out[i] = 1
		}
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Write(out)
}

// PushResult is the answer to POST /v1/push.
type PushResult struct {
	Blobs       int64 `json:"blobs"`
	NewBlobs    int64 `json:"new_blobs"`
	StoredBytes int64 `json:"stored_bytes"`
}

// push stores a wire stream of objects. Everything is verified; what
// arrived before an interruption is kept.
func (s *Server) push(w http.ResponseWriter, r *http.Request) {
	if !s.acquire(r) {
		return
	}
	defer s.release()
	sink := NewSink(s.Store)
	ds, err := Decode(bufio.NewReader(r.Body), sink)
	ws, ferr := sink.Close()
	s.count(0, ds.WireBytes)
	s.smu.Lock()
	s.stats.Pushes++
	s.smu.Unlock()
	if err == nil {
		err = ferr
	}
	if err != nil {
		http.Error(w, "push: "+err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(PushResult{Blobs: ds.Blobs, NewBlobs: ws.New, StoredBytes: ws.StoredBytes})
}

// updateRefs stores pushed commits and their signatures and moves refs,
// after checking that every tree and chunk the commits reach is in the
// store, that every signature verifies, and that every ref moves to a
// commit the trust policy admits. Nothing is stored unless all of it
// passes.
func (s *Server) updateRefs(w http.ResponseWriter, r *http.Request) {
	var req RefsRequest
	if err := readJSON(r.Body, maxRefsRequest, &req); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	if len(req.Signatures) > maxSignatures*max(1, len(req.Commits)+len(req.Updates)) {
		http.Error(w, "bad request: too many signatures", http.StatusBadRequest)
		return
	}
	s.pushMu.Lock()
	defer s.pushMu.Unlock()
	type pushed struct {
		id  chunk.ID
		c   *store.Commit
		raw []byte
	}
	var commits []pushed
	raws := map[chunk.ID][]byte{}
	for _, raw := range req.Commits {
		id := chunk.Sum(raw)
		c, err := store.DecodeCommit(id, raw)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if missing, err := MissingObjects(s.Store, c.Tree, 1); err != nil || len(missing) > 0 {
			msg := fmt.Sprintf("commit %s: its objects are not all here (push them first)", id.Short())
			if err != nil {
				msg += ": " + err.Error()
			}
			http.Error(w, msg, http.StatusConflict)
			return
		}
		commits = append(commits, pushed{id, c, raw})
		raws[id] = raw
	}
	rawOf := func(id chunk.ID) ([]byte, error) {
		if b, ok := raws[id]; ok {
			return b, nil
		}
		return s.Store.CommitRaw(id)
	}
	sigs := map[chunk.ID][]sign.Signature{}
	for _, cs := range req.Signatures {
		raw, err := rawOf(cs.Commit)
		if err == nil {
			err = cs.Signature.Verify(cs.Commit, raw)
		}
		if err != nil {
			http.Error(w, "signature of commit "+cs.Commit.Short()+": "+err.Error(), http.StatusBadRequest)
			return
		}
		sigs[cs.Commit] = append(sigs[cs.Commit], cs.Signature)
	}
	p, err := s.Store.Policy()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if p.Require || s.RequireSignature {
		for _, u := range req.Updates {
			raw, err := rawOf(u.New)
			if err != nil {
				httpError(w, fmt.Errorf("%s %s: %w", u.Kind, u.Name, err))
				return
			}
			have, err := s.Store.Signatures(u.New)
			if err == nil {
				_, err = p.Check(u.New, raw, append(have, sigs[u.New]...))
			}
			if err != nil {
				http.Error(w, fmt.Sprintf("refusing to move %s %s: %v", u.Kind, u.Name, err), http.StatusForbidden)
				return
			}
		}
	}
	for _, pc := range commits {
		if _, err := s.Store.PutCommit(pc.c); err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
	}
	for id, ss := range sigs {
		for _, sig := range ss {
			if err := s.Store.PutSignature(id, sig); err != nil {
				httpError(w, err)
				return
			}
		}
	}
	for _, u := range req.Updates {
		var err error
		switch u.Kind {
		case "image":
			err = s.Store.SetImage(u.Name, u.Old, u.New, "push", "pushed")
		case "tag":
			cur, terr := s.Store.TagCommit(u.Name)
			switch {
			case terr == nil && cur == u.New:
			case terr == nil:
				err = fmt.Errorf("tag %s exists at %s: tags are immutable", u.Name, cur.Short())
			default:
				err = s.Store.CreateTag(u.Name, u.New)
			}
		default:
			err = fmt.Errorf("unknown ref kind %q", u.Kind)
		}
		if err != nil {
			code := http.StatusConflict
			if errors.Is(err, store.ErrNotFound) {
				code = http.StatusBadRequest
			}
			http.Error(w, err.Error(), code)
			return
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

// MissingObjects walks tree root in st and returns up to max ids of trees
// and chunks st lacks (0 = no limit). A missing tree hides what is below
// it: fetch it and ask again.
func MissingObjects(st *store.Store, root chunk.ID, max int) ([]chunk.ID, error) {
	var missing []chunk.ID
	errFull := errors.New("enough")
	full := func() bool { return max > 0 && len(missing) >= max }
	err := (&snapshot.Reach{Src: st,
		Tree: func(id chunk.ID, _ string, _ *snapshot.Tree, err error) error {
			if err == nil {
				return nil
			}
			if !errors.Is(err, store.ErrNotFound) {
				return err
			}
			if missing = append(missing, id); full() {
				return errFull
			}
			return nil
		},
		Chunks: func(_ chunk.ID, ids []chunk.ID) error {
			has, err := st.HasMany(ids)
			if err != nil {
				return err
			}
			for i, h := range has {
				if h {
					continue
				}
				if missing = append(missing, ids[i]); full() {
					return errFull
				}
			}
			return nil
		},
	}).Walk(root)
	if errors.Is(err, errFull) {
		err = nil
	}
	return missing, err
}

// MissingObjectsSince is MissingObjects(st, root, 0) for a store that
// holds the tree base whole (a node's current commit, which the store
// has because a fetch stores a commit only once all it reaches is there):
// it walks root beside base, path by path, so a subtree with the same id
// as base's at the same path is complete without loading it, and a file
// whose content is base's there needs no lookup. An update's walk then
// costs what differs, not the whole image. A zero base is MissingObjects.
func MissingObjectsSince(st *store.Store, root, base chunk.ID) ([]chunk.ID, error) {
	if base.IsZero() {
		return MissingObjects(st, root, 0)
	}
	var missing []chunk.ID
	seen := map[chunk.ID]struct{}{}
	var walk func(id, bid chunk.ID) error
	walk = func(id, bid chunk.ID) error {
		if id == bid {
			return nil
		}
		if _, ok := seen[id]; ok {
			return nil
		}
		seen[id] = struct{}{}
		t, err := snapshot.LoadTree(st, id)
		if errors.Is(err, store.ErrNotFound) {
			missing = append(missing, id)
			return nil
		}
		if err != nil {
			return err
		}
		var bt *snapshot.Tree
		if !bid.IsZero() {
			// The base tree's absence or damage only costs the
			// shortcut: the subtree is then walked whole.
			bt, _ = snapshot.LoadTree(st, bid)
		}
		var ids []chunk.ID
		for i := range t.Entries {
			e := &t.Entries[i]
			if e.Kind == snapshot.KindDir {
				continue
			}
			if bt != nil {
				if be := bt.Find(e.Name); be != nil && be.Kind != snapshot.KindDir && slices.Equal(be.Content, e.Content) {
					continue
				}
			}
			for _, x := range e.Content {
				if x.Hole() {
					continue
				}
				if _, ok := seen[x.ID]; !ok {
					seen[x.ID] = struct{}{}
					ids = append(ids, x.ID)
				}
			}
		}
		if len(ids) > 0 {
			has, err := st.HasMany(ids)
			if err != nil {
				return err
			}
			for i, h := range has {
				if !h {
					missing = append(missing, ids[i])
				}
			}
		}
		for i := range t.Entries {
			e := &t.Entries[i]
			if e.Kind != snapshot.KindDir {
				continue
			}
			var sub chunk.ID
			if bt != nil {
				if be := bt.Find(e.Name); be != nil && be.Kind == snapshot.KindDir {
					sub = be.Subtree
				}
			}
			if err := walk(e.Subtree, sub); err != nil {
				return err
			}
		}
		return nil
	}
	return missing, walk(root, base)
}
