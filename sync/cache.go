package sync

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"strings"
	gosync "sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/store/sign"
)

// Cache makes a Server a pull-through site cache of an upstream server
// (sim serve --upstream, ARCHITECTURE.md "Site caches"): the refs are
// the upstream's, and every commit, signature and object a node asks for
// that the local store lacks is fetched from the upstream once (however
// many nodes ask at the same time), verified as any fetch is, stored,
// and then served from the local store like everything else. The cache
// is read-through: pushes and ref updates are refused.
type Cache struct {
	// Up is the upstream server; Store the cache's own store (the
	// Server's).
	Up    *Remote
	Store *store.Store
	// RefsTTL is how long an answer of the upstream's refs (or its
	// failure) is reused: at most one upstream refs request per RefsTTL,
	// however many nodes ask. 0: DefaultRefsTTL.
	RefsTTL time.Duration
	// Ctx bounds the upstream fetches, which outlive the request that
	// started them (others may wait for the same one). nil: Background.
	Ctx context.Context
	Log *log.Logger

	flight singleflight.Group

	mu      gosync.Mutex
	refs    *RefsResponse // the upstream's last answer
	refsAt  time.Time
	refsErr error // the upstream's last failure, reused until refsAt+TTL
	commits map[chunk.ID][]byte
	stats   CacheStats

	// objMu serializes fills of single objects (POST /v1/objects, GET
	// /v1/blobs): a node asking for what another's request is bringing
	// waits for it instead of fetching it again.
	objMu gosync.Mutex
}

// DefaultRefsTTL is Cache.RefsTTL's default.
const DefaultRefsTTL = 2 * time.Second

// CacheStats counts what a cache asked of its upstream.
type CacheStats struct {
	// RefsRequests: GET /v1/refs sent upstream. Fills: commits fetched
	// whole (a stream each); ObjectFills: object requests.
	RefsRequests, Fills, ObjectFills int64
	// UpstreamBytes is the wire bytes of the fills.
	UpstreamBytes int64
	// Hits: fetches served without the upstream.
	Hits int64
}

// Stats returns a copy of the counters.
func (c *Cache) Stats() CacheStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

// maxCachedCommits bounds the encoded commits held in memory between a
// node's GET of a commit and its fetch (which stores it).
const maxCachedCommits = 1024

func (c *Cache) ctx() context.Context {
	if c.Ctx != nil {
		return c.Ctx
	}
	return context.Background()
}

func (c *Cache) logf(format string, args ...any) {
	if c.Log != nil {
		c.Log.Printf(format, args...)
	}
}

// UpstreamError says that the upstream could not supply what a request
// needs: the cache answers 404 when the upstream has no such thing, 502
// otherwise, naming the upstream either way.
type UpstreamError struct {
	URL string
	Err error
}

func (e *UpstreamError) Error() string {
	return fmt.Sprintf("site cache: upstream %s: %v", e.URL, e.Err)
}

func (e *UpstreamError) Unwrap() error { return e.Err }

func (c *Cache) upErr(err error) error {
	var ue *UpstreamError
	if err == nil || errors.As(err, &ue) {
		return err
	}
	return &UpstreamError{URL: c.Up.URL, Err: err}
}

func (c *Cache) fail(w http.ResponseWriter, err error) {
	code := http.StatusBadGateway
	if errors.Is(err, ErrRemoteNotFound) {
		code = http.StatusNotFound
	}
	http.Error(w, c.upErr(err).Error(), code)
}

// route wraps the handler h of a Server route (pattern and role as in
// Server.init) with what the cache does before it: bring from the
// upstream what the local store lacks, so that h then serves it. Routes
// the cache does not know serve the local store as they are.
func (c *Cache) route(pattern string, role Role, h http.HandlerFunc) (http.HandlerFunc, Role) {
	if pattern == "POST /v1/push" || pattern == "POST /v1/refs" {
		// Refused to anyone, before any credentials are asked for: no
		// token would make it work.
		return func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, fmt.Sprintf("this server is a read-through site cache of %s: push to the upstream", c.Up.URL), http.StatusMethodNotAllowed)
		}, RoleNone
	}
	return c.wrap(pattern, h), role
}

func (c *Cache) wrap(pattern string, h http.HandlerFunc) http.HandlerFunc {
	switch pattern {
	case "GET /v1/refs":
		return c.serveRefs(h)
	case "GET /v1/commits/{id}":
		return c.serveCommit(h)
	case "GET /v1/commits/{id}/signatures":
		return c.serveSignatures(h)
	case "GET /v1/fetch":
		return c.serveFetch(h)
	case "GET /v1/plan":
		return c.servePlan(h)
	case "POST /v1/objects":
		return c.serveObjects(h)
	case "GET /v1/blobs/{id}":
		return func(w http.ResponseWriter, r *http.Request) {
			if id, err := chunk.Parse(r.PathValue("id")); err == nil {
				if err := c.fillObjects(r.Context(), []chunk.ID{id}); err != nil {
					c.fail(w, err)
					return
				}
			}
			h(w, r)
		}
	}
	return h
}

// upstreamRefs returns the upstream's refs, asking it at most once per
// RefsTTL (concurrent askers share one request).
func (c *Cache) upstreamRefs(ctx context.Context) (*RefsResponse, error) {
	ttl := c.RefsTTL
	if ttl <= 0 {
		ttl = DefaultRefsTTL
	}
	c.mu.Lock()
	if time.Since(c.refsAt) < ttl {
		rr, err := c.refs, c.refsErr
		c.mu.Unlock()
		if err != nil {
			return nil, err
		}
		return rr, nil
	}
	c.mu.Unlock()
	ch := c.flight.DoChan("refs", func() (any, error) {
		// A short bound: a node waits for this before anything else,
		// and an unreachable upstream must not hold every node.
		ctx, cancel := context.WithTimeout(c.ctx(), 10*time.Second)
		defer cancel()
		rr, err := c.Up.Refs(ctx)
		c.mu.Lock()
		c.stats.RefsRequests++
		c.refsAt = time.Now()
		if err != nil {
			c.refsErr = c.upErr(err)
		} else {
			c.refs, c.refsErr = rr, nil
		}
		c.mu.Unlock()
		return rr, err
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, c.upErr(res.Err)
		}
		return res.Val.(*RefsResponse), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// serveRefs answers the upstream's refs. When the upstream fails, the
// last refs it gave (or, before any, the local store's: what this cache
// holds whole) are served, with the failure in an X-Sim-Upstream-Error
// header: nodes keep installing what is cached.
func (c *Cache) serveRefs(local http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rr, err := c.upstreamRefs(r.Context())
		if err != nil {
			if r.Context().Err() != nil {
				return
			}
			c.logf("refs: %v (serving the last known)", err)
			w.Header().Set("X-Sim-Upstream-Error", strings.ReplaceAll(err.Error(), "\n", " "))
			c.mu.Lock()
			rr = c.refs
			c.mu.Unlock()
			if rr == nil {
				local(w, r)
				return
			}
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-cache")
		json.NewEncoder(w).Encode(rr)
	}
}

// commitRaw returns encoded commit id from the local store or else the
// upstream (verified against its id, kept in memory until stored).
func (c *Cache) commitRaw(ctx context.Context, id chunk.ID) ([]byte, error) {
	if raw, err := c.Store.CommitRaw(id); err == nil {
		return raw, nil
	}
	c.mu.Lock()
	raw, ok := c.commits[id]
	c.mu.Unlock()
	if ok {
		return raw, nil
	}
	ch := c.flight.DoChan("commit:"+id.String(), func() (any, error) {
		ctx, cancel := context.WithTimeout(c.ctx(), time.Minute)
		defer cancel()
		raw, err := c.Up.Commit(ctx, id) // verified against id
		if err != nil {
			return nil, err
		}
		c.mu.Lock()
		if c.commits == nil || len(c.commits) >= maxCachedCommits {
			c.commits = map[chunk.ID][]byte{}
		}
		c.commits[id] = raw
		c.mu.Unlock()
		return raw, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, c.upErr(res.Err)
		}
		return res.Val.([]byte), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (c *Cache) serveCommit(local http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := chunk.Parse(r.PathValue("id"))
		if err != nil {
			local(w, r) // its error
			return
		}
		if ok, _ := c.Store.HasCommit(id); ok {
			local(w, r)
			return
		}
		raw, err := c.commitRaw(r.Context(), id)
		if err != nil {
			c.fail(w, err)
			return
		}
		w.Header().Set("ETag", `"`+id.String()+`"`)
		w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
		w.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(raw))
	}
}

// serveSignatures answers the upstream's signatures of a commit, each
// verified against the commit (a forged one is dropped, as a node
// drops it), together with those the local store holds; the upstream's
// are stored when the commit is here. An admin may sign a commit after
// it was cached, so the upstream is asked every time; when it fails,
// the local store's are served.
func (c *Cache) serveSignatures(local http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := chunk.Parse(r.PathValue("id"))
		if err != nil {
			local(w, r)
			return
		}
		have, _ := c.Store.HasCommit(id)
		raw, err := c.commitRaw(r.Context(), id)
		if err != nil {
			c.fail(w, err)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
		up, err := c.Up.Signatures(ctx, id, raw)
		cancel()
		if err != nil {
			if have {
				c.logf("signatures of %s: %v (serving the cached)", id.Short(), c.upErr(err))
				local(w, r)
				return
			}
			c.fail(w, err)
			return
		}
		out := up
		if have {
			if err := keepSignatures(c.Store, id, up); err != nil {
				c.logf("keeping signatures of %s: %v", id.Short(), err)
			}
			if sigs, err := c.Store.Signatures(id); err == nil {
				out = sigs
			}
		}
		if out == nil {
			out = []sign.Signature{}
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-cache")
		json.NewEncoder(w).Encode(SignaturesResponse{out})
	}
}

// Fill makes commit id and its whole tree present in the local store,
// fetching from the upstream what it lacks. Concurrent fills of one
// commit are one upstream fetch; a waiter whose ctx ends stops waiting,
// not the fetch.
func (c *Cache) Fill(ctx context.Context, id chunk.ID) error {
	// A commit in the store has its whole tree.
	if ok, err := c.Store.HasCommit(id); err != nil {
		return err
	} else if ok {
		c.mu.Lock()
		c.stats.Hits++
		c.mu.Unlock()
		return nil
	}
	ch := c.flight.DoChan("fill:"+id.String(), func() (any, error) {
		if ok, err := c.Store.HasCommit(id); err != nil || ok {
			return nil, err
		}
		return nil, c.fill(id)
	})
	select {
	case res := <-ch:
		return res.Err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// fill is one upstream fetch of commit id: FetchCommit's steps (the
// commit verified against its id, its signatures verified, the cache
// store's own trust policy applied, every object verified by the sink)
// with the commit's parents that are here as delta bases.
func (c *Cache) fill(id chunk.ID) error {
	ctx := c.ctx()
	start := time.Now()
	raw, err := c.commitRaw(ctx, id)
	if err != nil {
		return err
	}
	cm, err := store.DecodeCommit(id, raw)
	if err != nil {
		return c.upErr(err)
	}
	var base []chunk.ID
	for _, p := range cm.Parents {
		if ok, _ := c.Store.HasCommit(p); ok {
			base = append(base, p)
		}
	}
	sigs, err := remoteSignatures(ctx, c.Store, c.Up, id, raw)
	if err != nil {
		return c.upErr(err)
	}
	if err := admit(c.Store, c.Up, id, raw, sigs); err != nil {
		return err
	}
	ps, err := fetchCommit(ctx, c.Store, c.Up, nil, id, cm, true, base, nil)
	c.mu.Lock()
	c.stats.Fills++
	c.stats.UpstreamBytes += ps.WireBytes
	delete(c.commits, id)
	rr := c.refs
	c.mu.Unlock()
	if err != nil {
		return c.upErr(fmt.Errorf("fetching commit %s: %w", id.Short(), err))
	}
	if err := keepSignatures(c.Store, id, sigs); err != nil {
		return err
	}
	c.logf("cached commit %s from %s: %d wire bytes, %d new blobs in %s", id.Short(), c.Up.URL, ps.WireBytes, ps.NewBlobs, time.Since(start).Round(time.Millisecond))
	// The upstream's refs naming this commit become the local store's:
	// they are the delta bases of the next fill, and what a restarted
	// cache serves while the upstream is down.
	if rr != nil {
		for n, x := range rr.Images {
			if x == id {
				if err := SetLocalRef(c.Store, "image", n, id, "cache", "cached from "+c.Up.URL); err != nil {
					c.logf("image %s: %v", n, err)
				}
			}
		}
		for n, x := range rr.Tags {
			if x == id {
				if err := SetLocalRef(c.Store, "tag", n, id, "cache", "cached from "+c.Up.URL); err != nil {
					c.logf("tag %s: %v", n, err)
				}
			}
		}
	}
	return nil
}

func (c *Cache) serveFetch(local http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		want, err := chunk.Parse(r.URL.Query().Get("want"))
		if err != nil {
			local(w, r) // its error
			return
		}
		if err := c.Fill(r.Context(), want); err != nil {
			if r.Context().Err() == nil {
				c.fail(w, err)
			}
			return
		}
		local(w, r)
	}
}

// servePlan answers from the local store what it holds, and asks the
// upstream about the rest: a plan moves no objects, so it fills nothing.
func (c *Cache) servePlan(local http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		want, err := chunk.Parse(r.URL.Query().Get("want"))
		if err != nil {
			local(w, r)
			return
		}
		if ok, _ := c.Store.HasCommit(want); ok {
			local(w, r)
			return
		}
		var p PlanInfo
		if err := c.Up.GetJSON(r.Context(), "/v1/plan?"+r.URL.RawQuery, &p); err != nil {
			c.fail(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(p)
	}
}

func (c *Cache) serveObjects(local http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, maxIDs*32+1))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		// The local handler reads (and checks) the same body.
		r.Body = io.NopCloser(bytes.NewReader(body))
		if ids, err := readIDs(bytes.NewReader(body), maxIDs); err == nil {
			if err := c.fillObjects(r.Context(), ids); err != nil {
				if r.Context().Err() == nil {
					c.fail(w, err)
				}
				return
			}
		}
		local(w, r)
	}
}

// fillObjects fetches from the upstream those of ids the local store
// lacks (verified by the sink as they arrive). Objects the upstream does
// not have either are left out: the local handler serves what there is,
// as a server does.
func (c *Cache) fillObjects(ctx context.Context, ids []chunk.ID) error {
	has, err := c.Store.HasMany(ids)
	if err != nil {
		return err
	}
	if !anyMissing(has) {
		return nil
	}
	c.objMu.Lock()
	defer c.objMu.Unlock()
	// Again: another request may have brought them meanwhile.
	if has, err = c.Store.HasMany(ids); err != nil {
		return err
	}
	var missing []chunk.ID
	for i, h := range has {
		if !h {
			missing = append(missing, ids[i])
		}
	}
	if len(missing) == 0 {
		return nil
	}
	sink := NewSink(c.Store)
	ds, err := c.Up.Objects(ctx, missing, sink)
	_, cerr := sink.Close()
	c.mu.Lock()
	c.stats.ObjectFills++
	c.stats.UpstreamBytes += ds.WireBytes
	c.mu.Unlock()
	if err == nil {
		err = cerr
	}
	if err != nil {
		return c.upErr(fmt.Errorf("fetching %d objects: %w", len(missing), err))
	}
	return nil
}

func anyMissing(has []bool) bool {
	for _, h := range has {
		if !h {
			return true
		}
	}
	return false
}
