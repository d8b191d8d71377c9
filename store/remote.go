package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/zeebo/blake3"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store/s3"
)

// The store on S3 (ARCHITECTURE.md "The store on S3"): the bucket is the
// truth, the local directory a cache that can be thrown away. Object keys,
// under the location's prefix:
//
//	config                              the store's Config (JSON), created once by init
//	packs/<pack id>.pack                packs, immutable, uploaded before any index file names them
//	index/<writer id>/<seq, 16 hex>     one index file per Writer.Flush (format below), immutable
//	commits/<commit id>                 encoded commits, created once
//	refs/images/<name>/<^seq, 16 hex>   an image's log: refEntry JSON, newest first
//	refs/tags/<name>/<^seq, 16 hex>     a tag's log, likewise
//	meta/<hex of the badger key>        trust keys, settings, secrets, tokens, signatures
//	fleet/<kind>/<node>/<^time>-<writer> nodes' states and install reports (remotenodes.go)
//
// Index file: "SIMIDX1\n" { pack id(32) uvarint(size) uvarint(len(h)) h }*
// BLAKE3(all before)(32), where h is the pack's header as in the pack.

const (
	kIndexFile = "x" // + index file key → nothing: loaded into this cache
	idxMagic   = "SIMIDX1\n"
)

// metaPrefixes are the badger prefixes mirrored under meta/.
var metaPrefixes = []string{kSig, kTrust, kSetting, kToken}

type remote struct {
	c      *s3.Client
	loc    string
	writer string // this Store's writer id, for index file names

	mu          sync.Mutex
	seq         uint64
	lastRefresh time.Time
	packMu      sync.Mutex

	// Pending gc marks (remotegc.go) and the packs they doom.
	markMu    sync.RWMutex
	marks     map[string]GCMark
	doomed    map[chunk.ID]string
	lastMarks time.Time
	// ranged: read frames of packs the cache lacks by ranged GETs instead
	// of downloading the whole pack (fsck and gc walk only trees).
	ranged atomic.Bool
}

// IsRemote reports whether loc names a store on an object store (s3://).
func IsRemote(loc string) bool { return s3.IsLocation(loc) }

// remoteCtx bounds one store operation as a whole. Each request has its
// own, much shorter deadline (s3.RequestTimeout): this one only stops an
// operation of thousands of requests that never ends.
func remoteCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), time.Hour)
}

// CacheDir is the local cache directory of an S3 store: $SIM_S3_CACHE if
// set, else under $XDG_CACHE_HOME/sim/s3 (or /var/cache/sim/s3 for root,
// ~/.cache/sim/s3 for others), named by a hash of the location.
func CacheDir(loc string) (string, error) {
	if d := os.Getenv("SIM_S3_CACHE"); d != "" {
		return d, nil
	}
	l, err := s3.ParseLocation(loc)
	if err != nil {
		return "", err
	}
	h := sha256.Sum256([]byte(l.String()))
	name := hex.EncodeToString(h[:8])
	if x := os.Getenv("XDG_CACHE_HOME"); x != "" {
		return filepath.Join(x, "sim", "s3", name), nil
	}
	if os.Geteuid() == 0 {
		return filepath.Join("/var/cache/sim/s3", name), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("s3 store cache: %w (set $SIM_S3_CACHE)", err)
	}
	return filepath.Join(home, ".cache", "sim", "s3", name), nil
}

func initRemote(loc string) error {
	c, err := s3.Open(loc)
	if err != nil {
		return err
	}
	ctx, cancel := remoteCtx()
	defer cancel()
	ok, err := c.BucketExists(ctx)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("store %s: bucket %q does not exist at %s (create it first)", c.Loc, c.Loc.Bucket, c.Loc.Endpoint)
	}
	b, _ := json.MarshalIndent(DefaultConfig(), "", "  ")
	if err := c.PutCreateOnce(ctx, "config", append(b, '\n')); errors.Is(err, s3.ErrExists) {
		return fmt.Errorf("a store already exists at %s", c.Loc)
	} else if errors.Is(err, s3.ErrUnknown) {
		if got, gerr := c.Get(ctx, "config"); gerr == nil && bytes.Equal(got, append(b, '\n')) {
			return nil
		}
		return err
	} else if err != nil {
		return err
	}
	return nil
}

// OpenCache opens the store at loc; for an s3:// store cache names its
// local cache directory ("" for CacheDir's default). Several Stores on one
// bucket need one cache each.
func OpenCache(loc, cache string) (*Store, error) {
	if !IsRemote(loc) {
		return Open(loc)
	}
	c, err := s3.Open(loc)
	if err != nil {
		return nil, err
	}
	ctx, cancel := remoteCtx()
	defer cancel()
	cb, err := c.Get(ctx, "config")
	if errors.Is(err, s3.ErrNotFound) {
		return nil, fmt.Errorf("no sim store at %s (sim init --store '%s')", c.Loc, loc)
	}
	if err != nil {
		return nil, err
	}
	var cfg Config
	if err := json.Unmarshal(cb, &cfg); err != nil {
		return nil, fmt.Errorf("store %s: config: %w", c.Loc, err)
	}
	if cfg.Version != FormatVersion {
		return nil, fmt.Errorf("store %s: format version %d, this sim reads %d", c.Loc, cfg.Version, FormatVersion)
	}
	if cache == "" {
		if cache, err = CacheDir(loc); err != nil {
			return nil, err
		}
	}
	if _, err := os.Stat(filepath.Join(cache, "config")); err != nil {
		if err := Init(cache); err != nil {
			return nil, fmt.Errorf("s3 store cache %s: %w", cache, err)
		}
		if err := writeFileAtomic(filepath.Join(cache, "config"), cb, 0o644); err != nil {
			return nil, err
		}
	}
	s, err := Open(cache)
	if err != nil {
		return nil, err
	}
	s.cfg = cfg
	var w [8]byte
	rand.Read(w[:])
	s.rem = &remote{c: c, loc: loc, writer: hex.EncodeToString(w[:])}
	if err := s.refresh(true); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Location is where the store lives: its directory, or its s3:// location.
func (s *Store) Location() string {
	if s.rem != nil {
		return s.rem.loc
	}
	return s.dir
}

// Remote is the S3 client of an S3 store (nil for a local one).
func (s *Store) Remote() *s3.Client {
	if s.rem == nil {
		return nil
	}
	return s.rem.c
}

// Refresh loads what other writers added to the bucket (index files,
// commits, meta) into the local cache. A local store has nothing to do.
func (s *Store) Refresh() error { return s.refresh(true) }

// refresh is Refresh, at most once a second unless force.
func (s *Store) refresh(force bool) error {
	r := s.rem
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !force && time.Since(r.lastRefresh) < time.Second {
		return nil
	}
	ctx, cancel := remoteCtx()
	defer cancel()
	// Marks first: loading index files skips packs a sweep deleted.
	if err := s.loadMarks(ctx); err != nil {
		return err
	}
	if err := s.loadIndexFiles(ctx); err != nil {
		return err
	}
	if err := s.loadCommits(ctx); err != nil {
		return err
	}
	if err := s.loadMeta(ctx); err != nil {
		return err
	}
	r.lastRefresh = time.Now()
	return nil
}

func (s *Store) hasKey(k []byte) bool {
	return s.db.View(func(txn *badger.Txn) error { _, err := txn.Get(k); return err }) == nil
}

func (s *Store) loadIndexFiles(ctx context.Context) error {
	objs, err := s.rem.c.List(ctx, "index/", 0)
	if err != nil {
		return err
	}
	listed := make(map[string]bool, len(objs))
	for _, o := range objs {
		listed[o.Key] = true
	}
	// Only while gc marks are pending can a pack be deleted: then list
	// the packs too, to leave out of the index those a sweep removed.
	var present map[chunk.ID]bool
	if s.rem.anyDoomed() {
		po, err := s.rem.c.List(ctx, "packs/", 0)
		if err != nil {
			return err
		}
		present = make(map[chunk.ID]bool, len(po))
		for _, o := range po {
			if id, err := chunk.Parse(strings.TrimSuffix(strings.TrimPrefix(o.Key, "packs/"), ".pack")); err == nil {
				present[id] = true
			}
		}
	}
	// A gc sweep replaced index files and deleted packs this cache has
	// loaded: rebuild the blob index from the bucket's index files.
	rebuild := false
	if err := s.scan(kIndexFile, false, func(k, _ []byte) error {
		if !listed[string(k)] {
			rebuild = true
		}
		return nil
	}); err != nil {
		return err
	}
	if present != nil && !rebuild {
		if err := s.scan(kPack, false, func(k, _ []byte) error {
			var id chunk.ID
			copy(id[:], k)
			if !present[id] && s.rem.isDoomed(id) {
				rebuild = true
			}
			return nil
		}); err != nil {
			return err
		}
	}
	if rebuild {
		if err := s.db.DropPrefix([]byte(kBlob), []byte(kPack), []byte(kIndexFile)); err != nil {
			return fmt.Errorf("rebuild the index of %s: %w", s.rem.c.Loc, err)
		}
		s.mu.Lock()
		s.headers = map[chunk.ID][]PackEntry{}
		s.mu.Unlock()
	}
	var want []string
	for _, o := range objs {
		if !s.hasKey([]byte(kIndexFile + o.Key)) {
			want = append(want, o.Key)
		}
	}
	bodies, err := s.rem.getMany(ctx, want)
	if err != nil {
		return err
	}
	for i, key := range want {
		mark := []byte(kIndexFile + key)
		b := bodies[i]
		if b == nil {
			continue // replaced by a gc sweep since the LIST
		}
		packs, err := decodeIndexFile(b)
		if err != nil {
			return fmt.Errorf("index file %s: %w", key, err)
		}
		wb := s.db.NewWriteBatch()
		for _, p := range packs {
			doomed := s.rem.isDoomed(p.id)
			if doomed && present != nil && !present[p.id] {
				continue // deleted by a sweep that has not finished
			}
			if err == nil && doomed {
				// Keep a blob's location in a pack that stays.
				p.ents = s.notElsewhere(p.ents)
			}
			if err == nil {
				err = indexPack(wb, p)
			}
		}
		if err == nil {
			err = wb.Set(mark, nil)
		}
		if err == nil {
			err = wb.Flush()
		}
		wb.Cancel()
		if err != nil {
			return fmt.Errorf("load index file %s: %w", key, err)
		}
	}
	return nil
}

// getParallel is how many small objects (index files) a store fetches
// at once: a new cache of a store that has seen a thousand pushes loads
// a thousand index files, and one at a time that is a thousand round
// trips (restic loads its index files in parallel too).
const getParallel = 8

// getMany fetches keys, getParallel at a time; a key gone since it was
// listed (a gc sweep replaced it) comes back nil.
func (r *remote) getMany(ctx context.Context, keys []string) ([][]byte, error) {
	out := make([][]byte, len(keys))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		next  atomic.Int64
		errMu sync.Mutex
		first error
	)
	for w := 0; w < min(getParallel, len(keys)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(keys) || ctx.Err() != nil {
					return
				}
				b, err := r.c.Get(ctx, keys[i])
				if errors.Is(err, s3.ErrNotFound) {
					continue
				}
				if err != nil {
					errMu.Lock()
					if first == nil {
						first = err
					}
					errMu.Unlock()
					cancel()
					return
				}
				if b == nil {
					b = []byte{}
				}
				out[i] = b
			}
		}()
	}
	wg.Wait()
	return out, first
}

// notElsewhere keeps the entries whose blob the index does not already
// place in a pack no gc mark dooms.
func (s *Store) notElsewhere(ents []PackEntry) []PackEntry {
	out := ents[:0:0]
	for _, e := range ents {
		if loc, err := s.lookupLocal(e.ID); err == nil && !s.rem.isDoomed(loc.Pack) {
			continue
		}
		out = append(out, e)
	}
	return out
}

func indexPack(wb *badger.WriteBatch, p packDone) error {
	var sz [8]byte
	binary.BigEndian.PutUint64(sz[:], uint64(p.size))
	if err := wb.Set(append([]byte(kPack), p.id[:]...), sz[:]); err != nil {
		return err
	}
	for _, e := range p.ents {
		if err := wb.Set(append([]byte(kBlob), e.ID[:]...), e.Loc.marshal()); err != nil {
			return err
		}
	}
	return nil
}

func encodeIndexFile(packs []packDone) []byte {
	b := []byte(idxMagic)
	for _, p := range packs {
		h := encodePackHeader(p.ents)
		b = append(b, p.id[:]...)
		b = binary.AppendUvarint(b, uint64(p.size))
		b = binary.AppendUvarint(b, uint64(len(h)))
		b = append(b, h...)
	}
	sum := blake3.Sum256(b)
	return append(b, sum[:]...)
}

func decodeIndexFile(b []byte) ([]packDone, error) {
	if len(b) < len(idxMagic)+32 || string(b[:len(idxMagic)]) != idxMagic {
		return nil, fmt.Errorf("not a sim index file")
	}
	body, sum := b[:len(b)-32], b[len(b)-32:]
	if got := blake3.Sum256(body); !bytes.Equal(got[:], sum) {
		return nil, fmt.Errorf("checksum mismatch")
	}
	r := body[len(idxMagic):]
	var out []packDone
	for len(r) > 0 {
		if len(r) < 32 {
			return nil, fmt.Errorf("truncated")
		}
		var p packDone
		copy(p.id[:], r)
		r = r[32:]
		size, n := binary.Uvarint(r)
		if n <= 0 {
			return nil, fmt.Errorf("bad pack size")
		}
		r = r[n:]
		hl, n := binary.Uvarint(r)
		if n <= 0 || hl > uint64(len(r)-n) {
			return nil, fmt.Errorf("bad header length")
		}
		r = r[n:]
		ents, err := decodePackHeader(r[:hl], p.id, size)
		if err != nil {
			return nil, err
		}
		r = r[hl:]
		p.size, p.ents = int64(size), ents
		out = append(out, p)
	}
	return out, nil
}

// uploadIndex writes the index file naming packs (already uploaded).
func (s *Store) uploadIndex(packs []packDone) (string, error) {
	r := s.rem
	r.mu.Lock()
	r.seq++
	key := fmt.Sprintf("index/%s/%016x", r.writer, r.seq)
	r.mu.Unlock()
	ctx, cancel := remoteCtx()
	defer cancel()
	return key, r.c.Put(ctx, key, encodeIndexFile(packs))
}

func packKey(id chunk.ID) string { return "packs/" + id.String() + ".pack" }

// uploadPack puts an installed pack into the bucket.
func (s *Store) uploadPack(id chunk.ID) error {
	ctx, cancel := remoteCtx()
	defer cancel()
	return s.rem.c.PutFile(ctx, packKey(id), s.packPath(id))
}

// fetchPack makes sure pack id is in the local cache.
func (s *Store) fetchPack(id chunk.ID) error {
	p := s.packPath(id)
	if _, err := os.Stat(p); err == nil {
		return nil
	}
	s.rem.packMu.Lock()
	defer s.rem.packMu.Unlock()
	if _, err := os.Stat(p); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	ctx, cancel := remoteCtx()
	defer cancel()
	return s.rem.c.GetFile(ctx, packKey(id), p)
}

// remotePacks lists the packs in the bucket with their sizes (one LIST
// per 1000 packs; nothing is downloaded).
func (s *Store) remotePacks() (map[chunk.ID]int64, error) {
	ctx, cancel := remoteCtx()
	defer cancel()
	objs, err := s.rem.c.List(ctx, "packs/", 0)
	if err != nil {
		return nil, err
	}
	out := map[chunk.ID]int64{}
	for _, o := range objs {
		id, err := chunk.Parse(strings.TrimSuffix(strings.TrimPrefix(o.Key, "packs/"), ".pack"))
		if err != nil {
			continue
		}
		out[id] = o.Size
	}
	return out, nil
}

// SetRangedReads makes reads of packs the cache lacks fetch just the
// frame they need (a ranged GET) instead of the whole pack: for walks
// that read trees only (fsck, gc), which would otherwise download every
// pack that holds a tree frame. No effect on a local store.
func (s *Store) SetRangedReads(on bool) {
	if s.rem != nil {
		s.rem.ranged.Store(on)
	}
}

// rangedRead reads n bytes at off of pack id by a ranged GET when ranged
// reads are on and the cache lacks the pack (ok false: read the file).
func (s *Store) rangedRead(id chunk.ID, off, n int64) ([]byte, bool, error) {
	if s.rem == nil || !s.rem.ranged.Load() {
		return nil, false, nil
	}
	s.mu.Lock()
	open := s.packs[id] != nil
	s.mu.Unlock()
	if open {
		return nil, false, nil
	}
	if _, err := os.Stat(s.packPath(id)); err == nil {
		return nil, false, nil
	}
	ctx, cancel := remoteCtx()
	defer cancel()
	b, err := s.rem.c.GetRange(ctx, packKey(id), off, n)
	if err != nil {
		return nil, true, fmt.Errorf("pack %s: %w", id.Short(), err)
	}
	return b, true, nil
}

// ---- commits ----

func commitKey(id chunk.ID) string { return "commits/" + id.String() }

func (s *Store) uploadCommit(id chunk.ID, b []byte) error {
	ctx, cancel := remoteCtx()
	defer cancel()
	err := s.rem.c.PutCreateOnce(ctx, commitKey(id), b)
	if errors.Is(err, s3.ErrExists) {
		return nil // the same bytes: its id is their hash
	}
	if errors.Is(err, s3.ErrUnknown) {
		if got, gerr := s.rem.c.Get(ctx, commitKey(id)); gerr == nil && chunk.Verify(id, got) == nil {
			return nil
		}
	}
	return err
}

// fetchCommit gets commit id from the bucket into the cache.
func (s *Store) fetchCommit(id chunk.ID) ([]byte, error) {
	ctx, cancel := remoteCtx()
	defer cancel()
	b, err := s.rem.c.Get(ctx, commitKey(id))
	if err != nil {
		return nil, err
	}
	if err := chunk.Verify(id, b); err != nil {
		return nil, fmt.Errorf("commit object %s: %w", id.Short(), err)
	}
	return b, s.db.Update(func(txn *badger.Txn) error { return txn.Set(append([]byte(kCommit), id[:]...), b) })
}

func (s *Store) loadCommits(ctx context.Context) error {
	objs, err := s.rem.c.List(ctx, "commits/", 0)
	if err != nil {
		return err
	}
	inBucket := make(map[chunk.ID]bool, len(objs))
	for _, o := range objs {
		id, err := chunk.Parse(strings.TrimPrefix(o.Key, "commits/"))
		if err != nil {
			continue
		}
		inBucket[id] = true
		if s.hasKey(append([]byte(kCommit), id[:]...)) {
			continue
		}
		if _, err := s.fetchCommit(id); err != nil {
			return err
		}
	}
	// Commits a gc sweep deleted leave the cache too (one stored here
	// between the LIST and its upload is fetched back on its next read).
	var gone [][]byte
	if err := s.scan(kCommit, false, func(k, _ []byte) error {
		var id chunk.ID
		copy(id[:], k)
		if !inBucket[id] {
			gone = append(gone, append([]byte(kCommit), k...))
		}
		return nil
	}); err != nil {
		return err
	}
	if len(gone) == 0 {
		return nil
	}
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, k := range gone {
		if err := wb.Delete(k); err != nil {
			return err
		}
	}
	return wb.Flush()
}

// ---- meta ----

// metaSync mirrors badger keys to meta/ after a local write: present keys
// are uploaded, absent ones deleted.
func (s *Store) metaSync(keys ...[]byte) error {
	if s.rem == nil {
		return nil
	}
	ctx, cancel := remoteCtx()
	defer cancel()
	for _, k := range keys {
		var v []byte
		err := s.db.View(func(txn *badger.Txn) error {
			it, err := txn.Get(k)
			if err != nil {
				return err
			}
			v, err = it.ValueCopy(nil)
			return err
		})
		name := "meta/" + hex.EncodeToString(k)
		switch {
		case errors.Is(err, badger.ErrKeyNotFound):
			err = s.rem.c.Delete(ctx, name)
		case err == nil:
			// A zero-length object is refused by radosgw's signature
			// check: store the value behind a one-byte marker.
			err = s.rem.c.Put(ctx, name, append([]byte{'v'}, v...))
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) loadMeta(ctx context.Context) error {
	objs, err := s.rem.c.List(ctx, "meta/", 0)
	if err != nil {
		return err
	}
	remoteKeys := map[string]bool{}
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, o := range objs {
		k, err := hex.DecodeString(strings.TrimPrefix(o.Key, "meta/"))
		if err != nil || len(k) == 0 {
			continue
		}
		remoteKeys[string(k)] = true
		if string(k[:1]) == kSig && s.hasKey(k) {
			continue // signatures never change
		}
		v, err := s.rem.c.Get(ctx, o.Key)
		if errors.Is(err, s3.ErrNotFound) {
			continue // deleted since the LIST
		}
		if err != nil {
			return err
		}
		if len(v) == 0 || v[0] != 'v' {
			return fmt.Errorf("meta object %s: bad format", o.Key)
		}
		if err := wb.Set(k, v[1:]); err != nil {
			return err
		}
	}
	for _, p := range metaPrefixes {
		err := s.scan(p, false, func(k, _ []byte) error {
			full := append([]byte(p), k...)
			if !remoteKeys[string(full)] {
				return wb.Delete(full)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return wb.Flush()
}

// remoteSecret makes sure the secret under badger key k is the bucket's:
// the first frontend to need it creates it once, every other one reads it.
func (s *Store) remoteSecret(k []byte) error {
	ctx, cancel := remoteCtx()
	defer cancel()
	name := "meta/" + hex.EncodeToString(k)
	v, err := s.rem.c.Get(ctx, name)
	if errors.Is(err, s3.ErrNotFound) {
		fresh := make([]byte, 33)
		fresh[0] = 'v'
		if _, err := rand.Read(fresh[1:]); err != nil {
			return err
		}
		err = s.rem.c.PutCreateOnce(ctx, name, fresh)
		if err == nil {
			v = fresh
		} else if errors.Is(err, s3.ErrExists) || errors.Is(err, s3.ErrUnknown) {
			v, err = s.rem.c.Get(ctx, name)
		}
	}
	if err != nil {
		return err
	}
	if len(v) != 33 || v[0] != 'v' {
		return fmt.Errorf("meta object %s: bad format", name)
	}
	return s.db.Update(func(txn *badger.Txn) error { return txn.Set(k, v[1:]) })
}
