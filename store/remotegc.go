package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store/s3"
)

// gc on an S3 store (ARCHITECTURE.md "gc on S3"). Several frontends and
// admins write one bucket with no lock server, so gc cannot delete what it
// finds unreachable at once: a push that has just been told "the store
// has blob X" (and so will not send it) may name X in a commit a moment
// later. The restic and OSTree prune races were exactly this. Instead:
//
//  1. Mark: walk from the refs; copy the live blobs of every pack that
//     holds a dead one into new packs (uploaded, then their index file),
//     and only then create gc/<mark> listing the doomed packs and dead
//     commits. From the moment a store sees the mark, its Has/HasMany
//     report a blob that lives only in a doomed pack as absent, so its
//     writers store it again instead of deduplicating against it.
//  2. Sweep, once the mark is older than its grace period (longer than
//     any push): walk again, from the refs and from every commit not
//     listed as dead (what pushes completed since the mark), and delete
//     only doomed packs none of whose now-live blobs lacks a copy in a
//     pack no mark names. The index files naming them are replaced by one
//     naming their other packs before anything is deleted; the mark goes
//     last, so a sweep killed at any point is finished by the next gc.

// GCMark is a pending gc mark: what one gc found dead.
type GCMark struct {
	Key     string        `json:"-"`
	Time    time.Time     `json:"time"`
	Grace   time.Duration `json:"grace_ns"`
	Writer  string        `json:"writer"`
	Packs   []chunk.ID    `json:"packs"`
	Commits []chunk.ID    `json:"commits"`
	Bytes   int64         `json:"bytes"`
}

// Due reports whether the mark's grace period is over at now.
func (m GCMark) Due(now time.Time) bool { return !now.Before(m.Time.Add(m.Grace)) }

// RemoteGCStats says what a mark or a sweep did.
type RemoteGCStats struct {
	PacksMarked    int   // packs a new mark dooms
	BytesMarked    int64 // their size
	PacksRewritten int   // packs written with the live blobs of doomed ones
	BlobsCopied    int
	CommitsMarked  int
	PacksDeleted   int
	PacksKept      int // doomed, but something pushed since the mark needs them
	BytesFreed     int64
	IndexReplaced  int // index files replaced by one without the deleted packs
	CommitsRemoved int
}

const gcPrefix = "gc/"

// gcKill is a fault-injection hook for crash tests: with
// $SIM_GC_KILL_AFTER=N the process kills itself (SIGKILL, as kill -9)
// right after gc's Nth write or delete in the bucket.
var gcWrites int

func gcStep() {
	n, err := strconv.Atoi(os.Getenv("SIM_GC_KILL_AFTER"))
	if err != nil || n <= 0 {
		return
	}
	gcWrites++
	if gcWrites >= n {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
}

// isDoomed reports whether pack id is named by a pending mark this
// store has seen.
func (r *remote) isDoomed(id chunk.ID) bool {
	r.markMu.RLock()
	defer r.markMu.RUnlock()
	_, ok := r.doomed[id]
	return ok
}

func (r *remote) anyDoomed() bool {
	r.markMu.RLock()
	defer r.markMu.RUnlock()
	return len(r.doomed) > 0
}

// loadMarks lists gc/ and keeps the pending marks (and the packs they
// doom) in memory.
func (s *Store) loadMarks(ctx context.Context) error {
	r := s.rem
	objs, err := r.c.List(ctx, gcPrefix, 0)
	if err != nil {
		return err
	}
	r.markMu.RLock()
	old := r.marks
	r.markMu.RUnlock()
	marks := map[string]GCMark{}
	for _, o := range objs {
		if m, ok := old[o.Key]; ok {
			marks[o.Key] = m
			continue
		}
		b, err := r.c.Get(ctx, o.Key)
		if errors.Is(err, s3.ErrNotFound) {
			continue // swept since the LIST
		}
		if err != nil {
			return err
		}
		var m GCMark
		if err := json.Unmarshal(b, &m); err != nil {
			return fmt.Errorf("gc mark %s: %w", o.Key, err)
		}
		m.Key = o.Key
		marks[o.Key] = m
	}
	doomed := map[chunk.ID]string{}
	for k, m := range marks {
		for _, p := range m.Packs {
			doomed[p] = k
		}
	}
	r.markMu.Lock()
	r.marks, r.doomed, r.lastMarks = marks, doomed, time.Now()
	r.markMu.Unlock()
	return nil
}

// refreshMarks reloads the marks at most every two seconds: Has and
// HasMany call it, so a long-running frontend learns of a new mark before
// it tells a pusher it has a doomed blob.
func (s *Store) refreshMarks() {
	r := s.rem
	r.markMu.Lock()
	fresh := time.Since(r.lastMarks) < 2*time.Second
	if !fresh {
		r.lastMarks = time.Now() // one caller lists; the rest go on
	}
	r.markMu.Unlock()
	if fresh {
		return
	}
	ctx, cancel := remoteCtx()
	defer cancel()
	// An error leaves the marks as they were: the next call tries again,
	// and a sweep still re-checks everything.
	s.loadMarks(ctx)
}

// GCMarks lists the pending gc marks, oldest first.
func (s *Store) GCMarks() ([]GCMark, error) {
	if s.rem == nil {
		return nil, nil
	}
	ctx, cancel := remoteCtx()
	defer cancel()
	if err := s.loadMarks(ctx); err != nil {
		return nil, err
	}
	s.rem.markMu.RLock()
	out := make([]GCMark, 0, len(s.rem.marks))
	for _, m := range s.rem.marks {
		out = append(out, m)
	}
	s.rem.markMu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// bucketIndex is what the bucket's index files say, read fresh.
type bucketIndex struct {
	files   map[string][]chunk.ID          // index file → the packs it names
	ents    map[chunk.ID][]PackEntry       // pack → its blobs
	named   map[chunk.ID][]string          // pack → the index files naming it
	present map[chunk.ID]int64             // packs in the bucket, with sizes
	headers map[chunk.ID]packDone          // pack → its entry as in an index file
	blobs   map[chunk.ID]map[chunk.ID]bool // blob → the packs holding it
}

func (s *Store) readBucketIndex(ctx context.Context) (*bucketIndex, error) {
	c := s.rem.c
	bi := &bucketIndex{files: map[string][]chunk.ID{}, ents: map[chunk.ID][]PackEntry{},
		named: map[chunk.ID][]string{}, present: map[chunk.ID]int64{},
		headers: map[chunk.ID]packDone{}, blobs: map[chunk.ID]map[chunk.ID]bool{}}
	objs, err := c.List(ctx, "packs/", 0)
	if err != nil {
		return nil, err
	}
	for _, o := range objs {
		if id, err := chunk.Parse(strings.TrimSuffix(strings.TrimPrefix(o.Key, "packs/"), ".pack")); err == nil {
			bi.present[id] = o.Size
		}
	}
	if objs, err = c.List(ctx, "index/", 0); err != nil {
		return nil, err
	}
	keys := make([]string, len(objs))
	for i, o := range objs {
		keys[i] = o.Key
	}
	bodies, err := s.rem.getMany(ctx, keys)
	if err != nil {
		return nil, err
	}
	for i, o := range objs {
		b := bodies[i]
		if b == nil {
			continue // replaced by a sweep since the LIST
		}
		packs, err := decodeIndexFile(b)
		if err != nil {
			return nil, fmt.Errorf("index file %s: %w", o.Key, err)
		}
		for _, p := range packs {
			bi.files[o.Key] = append(bi.files[o.Key], p.id)
			bi.named[p.id] = append(bi.named[p.id], o.Key)
			if _, ok := bi.ents[p.id]; ok {
				continue
			}
			bi.ents[p.id] = p.ents
			bi.headers[p.id] = p
			for _, e := range p.ents {
				if bi.blobs[e.ID] == nil {
					bi.blobs[e.ID] = map[chunk.ID]bool{}
				}
				bi.blobs[e.ID][p.id] = true
			}
		}
	}
	return bi, nil
}

// GCMarkNew is gc's first phase on an S3 store: it copies the live blobs
// (live) of packs holding dead ones into new packs and then writes a mark
// dooming those packs, the packs no index file names and the commits
// liveCommits rejects. Packs already doomed by a pending mark are left to
// that mark's sweep. It returns the mark (nil when nothing is dead).
func (s *Store) GCMarkNew(live, liveCommits func(chunk.ID) bool, grace time.Duration) (*GCMark, RemoteGCStats, error) {
	var gs RemoteGCStats
	if s.rem == nil {
		return nil, gs, fmt.Errorf("gc marks are for S3 stores")
	}
	if err := s.Refresh(); err != nil {
		return nil, gs, err
	}
	ctx, cancel := remoteCtx()
	defer cancel()
	bi, err := s.readBucketIndex(ctx)
	if err != nil {
		return nil, gs, err
	}
	pending := s.pendingPacks()
	doomed := map[chunk.ID]bool{}
	for pid, ents := range bi.ents {
		if pending[pid] {
			continue
		}
		if _, ok := bi.present[pid]; !ok {
			return nil, gs, fmt.Errorf("gc: pack %s, named by index file %s, is missing from the bucket (run `sim fsck`)", pid.Short(), bi.named[pid][0])
		}
		for _, e := range ents {
			if !live(e.ID) {
				doomed[pid] = true
				break
			}
		}
	}
	for pid := range bi.present {
		if _, named := bi.ents[pid]; !named && !pending[pid] {
			// Left by an interrupted write, or a push between its pack
			// upload and its index file: the grace period tells which.
			doomed[pid] = true
		}
	}
	// Blobs in packs that stay (no mark dooms them) need no copy.
	kept := func(blob chunk.ID) bool {
		for pid := range bi.blobs[blob] {
			if !doomed[pid] && !pending[pid] {
				return true
			}
		}
		return false
	}
	ids := make([]chunk.ID, 0, len(doomed))
	for pid := range doomed {
		ids = append(ids, pid)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i].String() < ids[j].String() })
	// Copying reads most of a doomed pack: download it whole rather
	// than a ranged GET per raw blob.
	if s.rem.ranged.Swap(false) {
		defer s.rem.ranged.Store(true)
	}
	w := s.NewWriter()
	w.force = true
	copied := map[chunk.ID]bool{}
	for _, pid := range ids {
		gs.BytesMarked += bi.present[pid]
		for _, e := range bi.ents[pid] {
			if !live(e.ID) || copied[e.ID] || kept(e.ID) {
				continue
			}
			b, err := s.GetAt(e.ID, e.Loc)
			if err != nil {
				w.Abort()
				return nil, gs, fmt.Errorf("gc: cannot copy live blob %s out of pack %s: %w", e.ID, pid.Short(), err)
			}
			if _, err := w.Put(e.Type, e.ID, b); err != nil {
				w.Abort()
				return nil, gs, err
			}
			copied[e.ID] = true
		}
	}
	// The copies are in the bucket and indexed before the mark exists.
	ws, err := w.Flush()
	if err != nil {
		return nil, gs, fmt.Errorf("gc: %w", err)
	}
	if ws.Packs > 0 {
		gcStep()
	}
	gs.PacksRewritten, gs.BlobsCopied = ws.Packs, len(copied)
	var dead []chunk.ID
	cids, err := s.Commits()
	if err != nil {
		return nil, gs, err
	}
	marked := map[chunk.ID]bool{}
	s.rem.markMu.RLock()
	for _, m := range s.rem.marks {
		for _, c := range m.Commits {
			marked[c] = true
		}
	}
	s.rem.markMu.RUnlock()
	for _, id := range cids {
		if !liveCommits(id) && !marked[id] {
			dead = append(dead, id)
		}
	}
	if len(ids) == 0 && len(dead) == 0 {
		return nil, gs, nil
	}
	m := &GCMark{Time: time.Now().UTC(), Grace: grace, Writer: s.rem.writer, Packs: ids, Commits: dead, Bytes: gs.BytesMarked}
	var nb [4]byte
	rand.Read(nb[:])
	// Keys sort by time: sweeps go oldest first.
	m.Key = fmt.Sprintf("%s%016x-%s", gcPrefix, m.Time.UnixNano(), hex.EncodeToString(nb[:]))
	b, _ := json.Marshal(m)
	if err := s.rem.c.PutCreateOnce(ctx, m.Key, b); err != nil && !errors.Is(err, s3.ErrUnknown) {
		return nil, gs, fmt.Errorf("gc: write mark %s: %w", m.Key, err)
	} else if err != nil {
		// Unknown outcome: what the bucket holds decides.
		if got, gerr := s.rem.c.Get(ctx, m.Key); gerr != nil || string(got) != string(b) {
			return nil, gs, fmt.Errorf("gc: write mark %s: %w", m.Key, err)
		}
	}
	gcStep()
	gs.PacksMarked, gs.CommitsMarked = len(ids), len(dead)
	if err := s.loadMarks(ctx); err != nil {
		return nil, gs, err
	}
	return m, gs, nil
}

func (s *Store) pendingPacks() map[chunk.ID]bool {
	s.rem.markMu.RLock()
	defer s.rem.markMu.RUnlock()
	out := make(map[chunk.ID]bool, len(s.rem.doomed))
	for p := range s.rem.doomed {
		out[p] = true
	}
	return out
}

// GCSweep is gc's second phase for mark m (due: its grace is over). live
// and liveCommits come from a walk done now, from the refs and from every
// commit m does not list as dead. A doomed pack is deleted only when each
// of its blobs that live accepts has a copy in a pack no pending mark
// names (or one this sweep keeps); the others are kept. In order: an index
// file naming the other packs of the index files that name deleted ones;
// the packs; those index files; the dead commits and their signatures;
// the mark.
func (s *Store) GCSweep(m GCMark, live, liveCommits func(chunk.ID) bool) (RemoteGCStats, error) {
	var gs RemoteGCStats
	if s.rem == nil {
		return gs, fmt.Errorf("gc marks are for S3 stores")
	}
	if err := s.Refresh(); err != nil {
		return gs, err
	}
	ctx, cancel := remoteCtx()
	defer cancel()
	bi, err := s.readBucketIndex(ctx)
	if err != nil {
		return gs, err
	}
	pending := s.pendingPacks()
	ids := append([]chunk.ID(nil), m.Packs...)
	sort.Slice(ids, func(i, j int) bool { return ids[i].String() < ids[j].String() })
	inMark := map[chunk.ID]bool{}
	for _, p := range ids {
		inMark[p] = true
	}
	keep := map[chunk.ID]bool{} // doomed packs this sweep keeps
	covered := func(blob chunk.ID, self chunk.ID) bool {
		for pid := range bi.blobs[blob] {
			if pid == self {
				continue
			}
			if _, ok := bi.present[pid]; !ok {
				continue
			}
			if keep[pid] || (!pending[pid] && !inMark[pid]) {
				return true
			}
		}
		return false
	}
	var del []chunk.ID
	gone := map[chunk.ID]bool{} // deleted now or by an interrupted sweep
	for _, pid := range ids {
		if _, ok := bi.present[pid]; !ok {
			gone[pid] = true // an earlier sweep of m was interrupted
			continue
		}
		needed := false
		for _, e := range bi.ents[pid] {
			if live(e.ID) && !covered(e.ID, pid) {
				needed = true
				break
			}
		}
		if needed {
			keep[pid] = true
			gs.PacksKept++
			continue
		}
		del = append(del, pid)
	}
	// Index files that name a pack about to go are replaced by one naming
	// their other packs, written first.
	for _, p := range del {
		gone[p] = true
	}
	var stale []string
	var survivors []packDone
	listed := map[chunk.ID]bool{}
	for key, packs := range bi.files {
		hit := false
		for _, p := range packs {
			if gone[p] {
				hit = true
			}
		}
		if !hit {
			continue
		}
		stale = append(stale, key)
		for _, p := range packs {
			if !gone[p] && !listed[p] {
				listed[p] = true
				survivors = append(survivors, bi.headers[p])
			}
		}
	}
	sort.Strings(stale)
	sort.Slice(survivors, func(i, j int) bool { return survivors[i].id.String() < survivors[j].id.String() })
	if len(survivors) > 0 {
		key, err := s.uploadIndex(survivors)
		if err != nil {
			return gs, fmt.Errorf("gc sweep: %w", err)
		}
		gcStep()
		if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set([]byte(kIndexFile+key), nil) }); err != nil {
			return gs, err
		}
	}
	for _, p := range del {
		if err := s.rem.c.Delete(ctx, packKey(p)); err != nil {
			return gs, fmt.Errorf("gc sweep: %w", err)
		}
		gcStep()
		gs.PacksDeleted++
		gs.BytesFreed += bi.present[p]
	}
	for _, k := range stale {
		if err := s.rem.c.Delete(ctx, k); err != nil {
			return gs, fmt.Errorf("gc sweep: %w", err)
		}
		gcStep()
		gs.IndexReplaced++
	}
	// Commits: those the mark listed that nothing reaches now.
	var deadCommits []chunk.ID
	for _, c := range m.Commits {
		if !liveCommits(c) {
			deadCommits = append(deadCommits, c)
		}
	}
	deadSet := map[chunk.ID]bool{}
	for _, c := range deadCommits {
		deadSet[c] = true
	}
	var sigKeys [][]byte
	if err := s.scan(kSig, false, func(k, _ []byte) error {
		var id chunk.ID
		copy(id[:], k)
		if deadSet[id] {
			sigKeys = append(sigKeys, append([]byte(kSig), k...))
		}
		return nil
	}); err != nil {
		return gs, err
	}
	for _, k := range sigKeys {
		if err := s.rem.c.Delete(ctx, "meta/"+hex.EncodeToString(k)); err != nil {
			return gs, fmt.Errorf("gc sweep: %w", err)
		}
		gcStep()
	}
	for _, c := range deadCommits {
		if err := s.rem.c.Delete(ctx, commitKey(c)); err != nil {
			return gs, fmt.Errorf("gc sweep: %w", err)
		}
		gcStep()
		gs.CommitsRemoved++
	}
	if err := s.rem.c.Delete(ctx, m.Key); err != nil {
		return gs, fmt.Errorf("gc sweep: %w", err)
	}
	gcStep()
	// This cache follows the bucket: the next refresh rebuilds its blob
	// index (an index file it loaded is gone) and drops the commits.
	s.rem.mu.Lock()
	s.rem.lastRefresh = time.Time{}
	s.rem.mu.Unlock()
	if err := s.Refresh(); err != nil {
		return gs, err
	}
	s.mu.Lock()
	for _, p := range del {
		if f := s.packs[p]; f != nil {
			f.Close()
			delete(s.packs, p)
		}
	}
	s.mu.Unlock()
	for _, p := range del {
		os.Remove(s.packPath(p))
	}
	return gs, nil
}
