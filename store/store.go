package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"github.com/klauspost/compress/zstd"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store/s3"
)

// Owned names what the store keeps in its directory (ARCHITECTURE.md
// "Store layout"); anything else there is someone else's.
var Owned = []string{"config", "packs", "index", "tmp", "cache"}

// ErrNotFound is returned for a blob, commit or ref the store does not hold.
var ErrNotFound = errors.New("not found")

// ErrUnavailable wraps a failure to reach the store's object store (a
// timeout, a refused connection, a 5xx): it says nothing about whether
// the object is there or sound, so fsck and gc stop on it rather than
// call the object damaged.
var ErrUnavailable = s3.ErrUnavailable

// ErrLocked is returned when another process has the store open.
var ErrLocked = errors.New("store is in use by another sim process")

// Store is an open object store. Its methods are safe for concurrent use.
type Store struct {
	dir string
	cfg Config
	db  *badger.DB

	enc *zstd.Encoder
	dec *zstd.Decoder

	mu      sync.Mutex
	packs   map[chunk.ID]*os.File
	frames  *frameCache
	headers map[chunk.ID][]PackEntry // pack headers read for the wire
	closed  bool

	rem *remote // the bucket of an s3:// store; nil for a local one

	docsMu   sync.Mutex
	nodeDocs map[string]*NodeDocs // kind → the per-node documents loaded (remotenodes.go)
}

// Badger key prefixes (ARCHITECTURE.md "Format: index").
const (
	kBlob    = "b" // + id → Loc
	kPack    = "p" // + pack id → uint64 size
	kCommit  = "c" // + id → encoded commit
	kImage   = "i" // + name → commit id
	kTag     = "t" // + name → tag record
	kReflog  = "l" // + name + 0 + seq(8 BE) → reflog entry
	kShallow = "s" // + commit id → nothing: stored without its parents
	kSig     = "g" // + commit id + public key[32] → signature (JSON)
	kTrust   = "k" // + name → trusted public key (JSON)
	kSetting = "o" // + name → a setting or secret
	kToken   = "a" // + SHA-256 of a token → token record (JSON)
)

// Init creates a new, empty store in dir (created if missing; it must be
// empty or hold no store yet).
func Init(dir string) error {
	if err := CheckLocation(dir); err != nil {
		return err
	}
	if IsRemote(dir) {
		return initRemote(dir)
	}
	if _, err := os.Stat(filepath.Join(dir, "config")); err == nil {
		return fmt.Errorf("a store already exists at %s", dir)
	}
	for _, d := range []string{dir, filepath.Join(dir, "packs"), filepath.Join(dir, "tmp"), filepath.Join(dir, "cache")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("init store: %w", err)
		}
	}
	s, err := openDB(dir, DefaultConfig())
	if err != nil {
		return err
	}
	if err := s.Close(); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(DefaultConfig(), "", "  ")
	// The config is written last: a store without one is not a store.
	return writeFileAtomic(filepath.Join(dir, "config"), append(b, '\n'), 0o644)
}

// Open opens the store in dir.
func Open(dir string) (*Store, error) {
	if err := CheckLocation(dir); err != nil {
		return nil, err
	}
	if IsRemote(dir) {
		return OpenCache(dir, "")
	}
	cfg, err := readConfig(dir)
	if err != nil {
		return nil, err
	}
	s, err := openDB(dir, cfg)
	if err != nil {
		return nil, err
	}
	// Leftovers of an interrupted write: never named by the index.
	tmp := filepath.Join(dir, "tmp")
	if ents, err := os.ReadDir(tmp); err == nil {
		for _, e := range ents {
			os.RemoveAll(filepath.Join(tmp, e.Name()))
		}
	}
	return s, nil
}

// repairIndex removes what a process killed while badger created a log
// file leaves behind: an empty *.mem (memtable write-ahead log) or *.vlog
// (value log). It holds no data (a log with data has at least its header),
// but badger v4 refuses to open a directory with one ("Create a new file"),
// which would turn a kill -9 at the wrong moment into a dead store.
func repairIndex(dir string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".mem") && !strings.HasSuffix(e.Name(), ".vlog") {
			continue
		}
		if fi, err := e.Info(); err == nil && fi.Size() == 0 {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

func openDB(dir string, cfg Config) (*Store, error) {
	repairIndex(filepath.Join(dir, "index"))
	opts := badger.DefaultOptions(filepath.Join(dir, "index")).
		WithLogger(nil).
		WithMemTableSize(8 << 20).WithValueThreshold(64 << 10).WithNumMemtables(2).
		WithNumLevelZeroTables(2).WithNumLevelZeroTablesStall(8).
		WithBlockCacheSize(0).WithIndexCacheSize(0).
		WithValueLogFileSize(16 << 20).WithNumCompactors(2).
		WithCompression(options.None).WithSyncWrites(false)
	db, err := badger.Open(opts)
	if err != nil {
		if strings.Contains(err.Error(), "Cannot acquire directory lock") {
			return nil, fmt.Errorf("%w: %s", ErrLocked, dir)
		}
		return nil, fmt.Errorf("open store index %s: %w", dir, err)
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(cfg.ZstdLevel)),
		zstd.WithEncoderConcurrency(1), zstd.WithZeroFrames(true))
	if err != nil {
		db.Close()
		return nil, err
	}
	// Frames are at most a few MiB; cap the decoder so a hostile frame
	// cannot make it allocate more.
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(2), zstd.WithDecoderMaxMemory(64<<20))
	if err != nil {
		db.Close()
		return nil, err
	}
	return &Store{dir: dir, cfg: cfg, db: db, enc: enc, dec: dec,
		packs: map[chunk.ID]*os.File{}, frames: newFrameCache(int(min(48<<20, MemoryShare(8)))), headers: map[chunk.ID][]PackEntry{}}, nil
}

// MemoryShare is 1/n of the process's Go memory limit (GOMEMLIMIT,
// debug.SetMemoryLimit; at least 4 MiB), or MaxInt64 where none is set:
// what a cache may take of a process told how much it may use.
func MemoryShare(n int64) int64 {
	lim := debug.SetMemoryLimit(-1)
	if lim == math.MaxInt64 || n <= 0 {
		return math.MaxInt64
	}
	return max(lim/n, 4<<20)
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

// Config is the store's configuration.
func (s *Store) Config() Config { return s.cfg }

// Close syncs and closes the store. Closing twice is harmless.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for _, f := range s.packs {
		f.Close()
	}
	s.packs = nil
	s.mu.Unlock()
	if s.dec != nil {
		s.dec.Close()
	}
	if err := s.db.Sync(); err != nil {
		s.db.Close()
		return err
	}
	return s.db.Close()
}

// Sync makes everything written so far durable.
func (s *Store) Sync() error { return s.db.Sync() }

func (s *Store) packPath(id chunk.ID) string {
	h := id.String()
	return filepath.Join(s.dir, "packs", h[:2], h+".pack")
}

// Lookup returns where blob id is stored. On an S3 store a miss first
// loads what other writers added since (at most once a second).
func (s *Store) Lookup(id chunk.ID) (Loc, error) {
	loc, err := s.lookupLocal(id)
	if errors.Is(err, ErrNotFound) && s.rem != nil {
		if rerr := s.refresh(false); rerr != nil {
			return loc, rerr
		}
		return s.lookupLocal(id)
	}
	return loc, err
}

func (s *Store) lookupLocal(id chunk.ID) (Loc, error) {
	var loc Loc
	err := s.db.View(func(txn *badger.Txn) error {
		it, err := txn.Get(append([]byte(kBlob), id[:]...))
		if err != nil {
			return err
		}
		return it.Value(func(v []byte) error {
			loc, err = unmarshalLoc(v)
			return err
		})
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return loc, fmt.Errorf("blob %s: %w", id.Short(), ErrNotFound)
	}
	return loc, err
}

// Has reports whether the store holds blob id. On an S3 store a blob
// held only in a pack a pending gc mark dooms counts as absent, so a
// writer stores it again rather than deduplicating against a pack the
// sweep may delete (remotegc.go).
func (s *Store) Has(id chunk.ID) (bool, error) {
	if s.rem != nil {
		s.refreshMarks()
	}
	loc, err := s.lookupLocal(id)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	if err == nil && s.rem != nil && s.rem.isDoomed(loc.Pack) {
		return false, nil
	}
	return err == nil, err
}

// HasMany answers "which of these do you have?" in one read transaction,
// as Has does.
func (s *Store) HasMany(ids []chunk.ID) ([]bool, error) {
	doomed := false
	if s.rem != nil {
		s.refreshMarks()
		doomed = s.rem.anyDoomed()
	}
	return s.hasMany(ids, doomed)
}

// HasManyIndexed is HasMany for checks: every blob the index places,
// doomed or not.
func (s *Store) HasManyIndexed(ids []chunk.ID) ([]bool, error) { return s.hasMany(ids, false) }

func (s *Store) hasMany(ids []chunk.ID, doomed bool) ([]bool, error) {
	out := make([]bool, len(ids))
	err := s.db.View(func(txn *badger.Txn) error {
		key := make([]byte, 1+32)
		key[0] = kBlob[0]
		for i, id := range ids {
			copy(key[1:], id[:])
			it, err := txn.Get(key)
			if err == nil {
				out[i] = true
				if doomed {
					err = it.Value(func(v []byte) error {
						loc, err := unmarshalLoc(v)
						if err == nil && s.rem.isDoomed(loc.Pack) {
							out[i] = false
						}
						return err
					})
				}
			}
			if err != nil && !errors.Is(err, badger.ErrKeyNotFound) {
				return err
			}
		}
		return nil
	})
	return out, err
}

func (s *Store) packFile(id chunk.ID) (*os.File, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f := s.packs[id]; f != nil {
		return f, nil
	}
	if s.rem != nil {
		if err := s.fetchPack(id); err != nil {
			return nil, fmt.Errorf("pack %s: %w", id.Short(), err)
		}
	}
	f, err := os.Open(s.packPath(id))
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w", id.Short(), err)
	}
	if len(s.packs) > 256 {
		for k, f := range s.packs {
			f.Close()
			delete(s.packs, k)
		}
	}
	s.packs[id] = f
	return f, nil
}

// frame returns the decompressed bytes of the frame at loc, and whether
// all of them came out of one zstd frame whose content checksum the
// decoder verified (see GetStored). Concurrent readers of one frame wait
// for a single decompression.
func (s *Store) frame(loc Loc) ([]byte, bool, error) {
	key := frameKey{loc.Pack, loc.FrameOff}
	return s.frames.get(key, func() ([]byte, bool, error) {
		raw, ranged, err := s.rangedRead(loc.Pack, int64(loc.FrameOff), int64(loc.FrameLen))
		if err != nil {
			return nil, false, err
		}
		if !ranged {
			f, err := s.packFile(loc.Pack)
			if err != nil {
				return nil, false, err
			}
			raw = make([]byte, loc.FrameLen)
			if _, err := f.ReadAt(raw, int64(loc.FrameOff)); err != nil {
				return nil, false, fmt.Errorf("read pack %s at %d: %w", loc.Pack.Short(), loc.FrameOff, err)
			}
		}
		if loc.Comp != compZstd {
			return raw, false, nil
		}
		b, err := s.dec.DecodeAll(raw, make([]byte, 0, groupTarget+groupTarget/4))
		if err != nil {
			return nil, false, fmt.Errorf("decompress frame in pack %s at %d: %w", loc.Pack.Short(), loc.FrameOff, err)
		}
		return b, checksummed(raw, len(b)), nil
	})
}

// checksummed reports whether a zstd frame's whole content (n bytes
// decompressed) lies in its first frame and that frame carries a content
// checksum: then DecodeAll, which verifies checksums, has proven every
// byte is what the writer compressed. Frames the store writes always
// do (EncodeAll: content size and checksum); a received frame may not.
func checksummed(raw []byte, n int) bool {
	var h zstd.Header
	if err := h.Decode(raw); err != nil {
		return false
	}
	return h.HasCheckSum && h.HasFCS && h.FrameContentSize == uint64(n) && !h.Skippable
}

// ReadRaw returns the stored (possibly compressed) frame bytes holding loc,
// for transports that ship frames as they are.
func (s *Store) ReadRaw(loc Loc) ([]byte, error) { return s.ReadRawInto(loc, nil) }

// ReadRawInto is ReadRaw reusing buf's memory when it is large enough.
func (s *Store) ReadRawInto(loc Loc, buf []byte) ([]byte, error) {
	f, err := s.packFile(loc.Pack)
	if err != nil {
		return buf[:0], err
	}
	if cap(buf) < int(loc.FrameLen) {
		buf = make([]byte, loc.FrameLen)
	}
	raw := buf[:loc.FrameLen]
	if _, err = f.ReadAt(raw, int64(loc.FrameOff)); err != nil {
		return raw[:0], fmt.Errorf("read pack %s at %d: %w", loc.Pack.Short(), loc.FrameOff, err)
	}
	return raw, nil
}

// ReadRawAt reads len(p) bytes of the stored frame holding loc, from
// offset off within the frame: a BitTorrent peer asks for 16 KiB blocks
// of frames, and reading the whole frame for each would cost 100×.
func (s *Store) ReadRawAt(loc Loc, p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(loc.FrameLen) {
		return 0, fmt.Errorf("read %d bytes at %d of a %d-byte frame", len(p), off, loc.FrameLen)
	}
	f, err := s.packFile(loc.Pack)
	if err != nil {
		return 0, err
	}
	n, err := f.ReadAt(p, int64(loc.FrameOff)+off)
	if err != nil {
		return n, fmt.Errorf("read pack %s at %d: %w", loc.Pack.Short(), int64(loc.FrameOff)+off, err)
	}
	return n, nil
}

// Get returns the bytes of blob id, verified against id. The result may
// share memory with the store's frame cache: callers must not modify it.
func (s *Store) Get(id chunk.ID) ([]byte, error) {
	loc, err := s.Lookup(id)
	if err != nil {
		return nil, err
	}
	b, err := s.GetAt(id, loc)
	if err != nil && s.rem != nil && errors.Is(err, s3.ErrNotFound) {
		// A gc sweep deleted the pack after copying its live blobs
		// elsewhere: follow the bucket's index and read the copy.
		if rerr := s.Refresh(); rerr != nil {
			return nil, err
		}
		if loc2, lerr := s.lookupLocal(id); lerr == nil && loc2.Pack != loc.Pack {
			return s.GetAt(id, loc2)
		}
	}
	return b, err
}

// GetStored returns the bytes of blob id as the store holds them, for
// a checkout. Every blob was verified against its id when it entered
// the store (the Sink hashes what arrives, a commit hashes what it
// reads), so GetStored hashes only what nothing else vouches for since:
// a blob in a zstd frame whose content checksum the decoder verified is
// the stored bytes, and hashing it again would spend a tenth of an
// install's CPU proving it twice. Blobs in raw frames, in frames
// without a checksum, and every blob of an S3 store (whose packs other
// writers put in the bucket) are verified as Get verifies them. fsck
// --read-data still re-hashes everything (GetAt).
func (s *Store) GetStored(id chunk.ID) ([]byte, error) {
	if s.rem != nil {
		return s.Get(id) // verified, and following a pack a gc swept
	}
	loc, err := s.Lookup(id)
	if err != nil {
		return nil, err
	}
	return s.getAt(id, loc, s.rem == nil)
}

// GetAt is Get with a known location.
func (s *Store) GetAt(id chunk.ID, loc Loc) ([]byte, error) { return s.getAt(id, loc, false) }

// getAt reads blob id at loc; trustChecksum: skip the hash when a
// verified zstd checksum covers the blob (GetStored).
func (s *Store) getAt(id chunk.ID, loc Loc, trustChecksum bool) ([]byte, error) {
	var b []byte
	if loc.Comp == compRaw {
		// A raw frame needs no decompression: read just the blob.
		if loc.Off+loc.Len > loc.FrameLen {
			return nil, fmt.Errorf("blob %s: %w: outside its frame", id.Short(), errBadPack)
		}
		rb, ranged, err := s.rangedRead(loc.Pack, int64(loc.FrameOff)+int64(loc.Off), int64(loc.Len))
		if err != nil {
			return nil, fmt.Errorf("blob %s: %w", id.Short(), err)
		}
		b = rb
		if !ranged {
			f, err := s.packFile(loc.Pack)
			if err != nil {
				return nil, fmt.Errorf("blob %s: %w", id.Short(), err)
			}
			b = make([]byte, loc.Len)
			if _, err := f.ReadAt(b, int64(loc.FrameOff)+int64(loc.Off)); err != nil {
				return nil, fmt.Errorf("blob %s: read pack %s: %w", id.Short(), loc.Pack.Short(), err)
			}
		}
	} else {
		fr, sum, err := s.frame(loc)
		if err != nil {
			return nil, fmt.Errorf("blob %s: %w", id.Short(), err)
		}
		if uint64(loc.Off)+uint64(loc.Len) > uint64(len(fr)) {
			return nil, fmt.Errorf("blob %s: %w: frame in pack %s is %d bytes, blob wants %d+%d",
				id.Short(), errBadPack, loc.Pack.Short(), len(fr), loc.Off, loc.Len)
		}
		b = fr[loc.Off : loc.Off+loc.Len]
		if sum && trustChecksum {
			return b, nil
		}
	}
	if err := chunk.Verify(id, b); err != nil {
		var ce *chunk.CorruptError
		if errors.As(err, &ce) {
			ce.Err = fmt.Errorf("in pack %s", loc.Pack.Short())
		}
		return nil, err
	}
	return b, nil
}

// frameCache keeps recently decompressed frames, so reading the many
// blobs of one frame in walk order decompresses it once.
type frameKey struct {
	pack chunk.ID
	off  uint64
}

type frameEntry struct {
	done chan struct{}
	b    []byte
	sum  bool // b came out of one verified zstd checksum (checksummed)
	err  error
}

type frameCache struct {
	mu    sync.Mutex
	max   int
	size  int
	order []frameKey
	m     map[frameKey]*frameEntry
}

func newFrameCache(max int) *frameCache { return &frameCache{max: max, m: map[frameKey]*frameEntry{}} }

// get returns the cached frame or loads it once, however many goroutines
// ask at the same time.
func (c *frameCache) get(k frameKey, load func() ([]byte, bool, error)) ([]byte, bool, error) {
	c.mu.Lock()
	if e, ok := c.m[k]; ok {
		c.mu.Unlock()
		<-e.done
		return e.b, e.sum, e.err
	}
	e := &frameEntry{done: make(chan struct{})}
	c.m[k] = e
	c.mu.Unlock()
	e.b, e.sum, e.err = load()
	close(e.done)
	c.mu.Lock()
	defer c.mu.Unlock()
	if e.err != nil {
		delete(c.m, k)
		return nil, false, e.err
	}
	c.order = append(c.order, k)
	c.size += len(e.b)
	for c.size > c.max && len(c.order) > 1 {
		old := c.order[0]
		c.order = c.order[1:]
		if oe := c.m[old]; oe != nil {
			c.size -= len(oe.b)
			delete(c.m, old)
		}
	}
	return e.b, e.sum, nil
}

// writeFileAtomic writes name through a temporary file, fsync and rename,
// then fsyncs the directory, so readers see the old or the new file whole.
func writeFileAtomic(name string, data []byte, perm os.FileMode) error {
	return WriteFileAtomic(name, perm, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// WriteFileAtomic is writeFileAtomic for content produced by fill.
func WriteFileAtomic(name string, perm os.FileMode, fill func(io.Writer) error) error {
	dir := filepath.Dir(name)
	f, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(name)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	err = fill(f)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), name)
	}
	if err != nil {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// PackPath is the file of pack id.
func (s *Store) PackPath(id chunk.ID) string { return s.packPath(id) }
