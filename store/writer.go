package store

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/dgraph-io/badger/v4"
	"github.com/zeebo/blake3"

	"github.com/systemimager/sim/chunk"
)

const (
	// Blobs are compressed together in frames of about this many
	// uncompressed bytes, in the order they arrive (walk order, so
	// neighbouring files share a frame). Measured on the corpus (v1..v3,
	// level 3): one frame per blob 117.5 MB of packs, 256 KiB frames for
	// blobs under 64 KiB 117.5 MB, 1 MiB frames for blobs under 256 KiB
	// 112.5 MB, 4 MiB frames for all blobs 107.9 MB, 8 MiB 107.8 MB. A
	// blob stays individually addressable (frame offset + offset inside);
	// reading one costs decompressing at most one frame, which the frame
	// cache then keeps for its neighbours.
	groupTarget = 4 << 20
	// Packs are closed at this size: several MiB, so a store of a few
	// images has hundreds of packs, not tens of thousands of files.
	packTarget = 16 << 20
)

// WriterStats counts what a Writer added.
type WriterStats struct {
	Blobs       int64 // new blobs
	Bytes       int64 // their uncompressed size
	StoredBytes int64 // their size in packs
	Packs       int
}

// Writer adds blobs to the store. Put may be called from many goroutines;
// blobs become visible to readers (Has, Get) only after Flush returns.
type Writer struct {
	s      *Store
	mu     sync.Mutex
	seen   map[chunk.ID]struct{}
	groups map[Type]*group
	frames chan frameJob
	done   chan struct{}
	// Finished packs go to the syncer, which fsyncs and installs them
	// while the packer goes on writing the next: an fsync never stalls
	// the stream feeding the writer (a node receiving at link rate).
	syncq  chan *packFile
	synced chan struct{}
	err    error // first error of the packer or syncer, under mu
	stats  WriterStats
	packed []packDone
	force  bool // store even blobs the index has (gc's rewrite)
}

type group struct {
	buf  []byte
	ents []PackEntry
}

type frameJob struct {
	data []byte
	comp uint8
	ents []PackEntry
}

type packDone struct {
	id   chunk.ID
	size int64
	ents []PackEntry
}

// NewWriter starts a writer.
func (s *Store) NewWriter() *Writer {
	if s.rem != nil {
		// Learn of gc marks before deduplicating against anything.
		s.refreshMarks()
	}
	w := &Writer{s: s, seen: map[chunk.ID]struct{}{}, groups: map[Type]*group{},
		frames: make(chan frameJob, 8), done: make(chan struct{}),
		syncq: make(chan *packFile, 4), synced: make(chan struct{})}
	go w.packer()
	go w.syncer()
	return w
}

// Put stores data as blob id of type t unless the store already has it. The
// caller has computed id = chunk.Sum(data). It reports whether the blob was
// new. data may be reused by the caller after Put returns.
func (w *Writer) Put(t Type, id chunk.ID, data []byte) (bool, error) {
	w.mu.Lock()
	_, dup := w.seen[id]
	err := w.err
	w.mu.Unlock()
	if err != nil {
		return false, err
	}
	if dup {
		return false, nil
	}
	if !w.force {
		has, err := w.s.Has(id)
		if err != nil || has {
			return false, err
		}
	}
	w.mu.Lock()
	if _, dup := w.seen[id]; dup {
		w.mu.Unlock()
		return false, nil
	}
	w.seen[id] = struct{}{}
	w.stats.Blobs++
	w.stats.Bytes += int64(len(data))
	if len(data) >= groupTarget {
		w.mu.Unlock()
		w.emit([]byte(nil), data, []PackEntry{{ID: id, Loc: Loc{Type: t, Len: uint32(len(data))}}})
		return true, nil
	}
	g := w.groups[t]
	if g == nil {
		g = &group{}
		w.groups[t] = g
	}
	g.ents = append(g.ents, PackEntry{ID: id, Loc: Loc{Type: t, Off: uint32(len(g.buf)), Len: uint32(len(data))}})
	g.buf = append(g.buf, data...)
	if len(g.buf) < groupTarget {
		w.mu.Unlock()
		return true, nil
	}
	delete(w.groups, t)
	w.mu.Unlock()
	w.emit(g.buf, g.buf, g.ents)
	return true, nil
}

// PutVerified is Put for bytes from outside (a transport): it hashes data
// and refuses it unless it matches id.
func (w *Writer) PutVerified(t Type, id chunk.ID, data []byte) (bool, error) {
	if err := chunk.Verify(id, data); err != nil {
		return false, err
	}
	return w.Put(t, id, data)
}

// emit compresses a frame in the calling goroutine (so compression runs on
// every worker in parallel) and hands it to the packer.
func (w *Writer) emit(own, data []byte, ents []PackEntry) {
	z := w.s.enc.EncodeAll(data, make([]byte, 0, len(data)/2+64))
	job := frameJob{data: z, comp: compZstd, ents: ents}
	if len(z) >= len(data) {
		if own == nil {
			own = append([]byte(nil), data...)
		}
		job = frameJob{data: own, comp: compRaw, ents: ents}
	}
	w.frames <- job
}

// packer appends frames to pack files, one at a time, in the order they
// come.
func (w *Writer) packer() {
	defer close(w.done)
	defer close(w.syncq)
	var cur *packFile
	fail := func(err error) {
		w.mu.Lock()
		if w.err == nil {
			w.err = err
		}
		w.mu.Unlock()
	}
	for job := range w.frames {
		if w.failed() {
			continue // drain
		}
		if cur == nil {
			var err error
			if cur, err = w.s.newPackFile(); err != nil {
				fail(err)
				continue
			}
		}
		if err := cur.add(job); err != nil {
			fail(err)
			cur.abort()
			cur = nil
			continue
		}
		if cur.size >= packTarget {
			if err := w.finish(cur); err != nil {
				fail(err)
			}
			cur = nil
		}
	}
	if cur != nil {
		if w.failed() {
			cur.abort()
		} else if err := w.finish(cur); err != nil {
			fail(err)
		}
	}
}

func (w *Writer) failed() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err != nil
}

// finish writes the pack's header and queues it for the syncer.
func (w *Writer) finish(p *packFile) error {
	if err := p.seal(); err != nil {
		return err
	}
	w.syncq <- p
	return nil
}

// syncer makes sealed packs durable and installs them, in order.
func (w *Writer) syncer() {
	defer close(w.synced)
	for p := range w.syncq {
		if w.failed() {
			p.abort()
			continue
		}
		d, err := p.install()
		if err == nil && w.s.rem != nil {
			// Into the bucket before any index file names it.
			err = w.s.uploadPack(d.id)
		}
		if err != nil {
			w.mu.Lock()
			if w.err == nil {
				w.err = err
			}
			w.mu.Unlock()
			continue
		}
		w.mu.Lock()
		w.packed = append(w.packed, d)
		w.stats.Packs++
		w.stats.StoredBytes += d.size
		w.mu.Unlock()
	}
}

// Flush writes out everything Put so far and indexes it durably. The
// Writer cannot be used afterwards.
func (w *Writer) Flush() (WriterStats, error) {
	w.mu.Lock()
	groups := w.groups
	w.groups = nil
	w.mu.Unlock()
	for _, t := range []Type{TypeData, TypeTree} {
		if g := groups[t]; g != nil && len(g.ents) > 0 {
			w.emit(g.buf, g.buf, g.ents)
		}
	}
	close(w.frames)
	<-w.done
	<-w.synced
	if w.err != nil {
		return w.stats, w.err
	}
	if len(w.packed) == 0 {
		return w.stats, nil
	}
	// The packs are durable (fsynced and renamed): now the index may
	// name them.
	wb := w.s.db.NewWriteBatch()
	defer wb.Cancel()
	if w.s.rem != nil {
		// The packs are in the bucket: the index file names them there.
		key, err := w.s.uploadIndex(w.packed)
		if err != nil {
			return w.stats, err
		}
		if err := wb.Set([]byte(kIndexFile+key), nil); err != nil {
			return w.stats, err
		}
	}
	for _, p := range w.packed {
		if err := indexPack(wb, p); err != nil {
			return w.stats, err
		}
	}
	if err := wb.Flush(); err != nil {
		return w.stats, fmt.Errorf("write index: %w", err)
	}
	return w.stats, w.s.db.Sync()
}

// Abort discards everything Put so far.
func (w *Writer) Abort() {
	w.mu.Lock()
	if w.err == nil {
		w.err = fmt.Errorf("writer aborted")
	}
	w.groups = nil
	w.mu.Unlock()
	close(w.frames)
	<-w.done
	<-w.synced
	for _, p := range w.packed {
		os.Remove(w.s.packPath(p.id))
	}
}

// packFile is a pack being written in the store's tmp directory.
type packFile struct {
	s    *Store
	f    *os.File
	h    *blake3.Hasher
	size int64
	ents []PackEntry
	id   chunk.ID // set by seal
}

func (s *Store) newPackFile() (*packFile, error) {
	f, err := os.CreateTemp(filepath.Join(s.dir, "tmp"), "pack-*")
	if err != nil {
		return nil, fmt.Errorf("new pack: %w", err)
	}
	p := &packFile{s: s, f: f, h: blake3.New()}
	if err := p.write([]byte(packMagic)); err != nil {
		p.abort()
		return nil, err
	}
	return p, nil
}

func (p *packFile) write(b []byte) error {
	if _, err := p.f.Write(b); err != nil {
		return fmt.Errorf("write pack: %w", err)
	}
	p.h.Write(b)
	p.size += int64(len(b))
	return nil
}

func (p *packFile) add(job frameJob) error {
	off := uint64(p.size)
	if err := p.write(job.data); err != nil {
		return err
	}
	for _, e := range job.ents {
		e.FrameOff, e.FrameLen, e.Comp = off, uint32(len(job.data)), job.comp
		p.ents = append(p.ents, e)
	}
	return nil
}

func (p *packFile) abort() {
	p.f.Close()
	os.Remove(p.f.Name())
}

// seal writes the header and end marker and fixes the pack's id.
func (p *packFile) seal() error {
	hdr := encodePackHeader(p.ents)
	var hl [4]byte
	binary.LittleEndian.PutUint32(hl[:], uint32(len(hdr)))
	for _, b := range [][]byte{hdr, hl[:], []byte(packEnd)} {
		if err := p.write(b); err != nil {
			p.abort()
			return err
		}
	}
	p.h.Sum(p.id[:0])
	return nil
}

// install fsyncs a sealed pack and renames it into packs/.
func (p *packFile) install() (packDone, error) {
	id := p.id
	if err := p.f.Sync(); err != nil {
		p.abort()
		return packDone{}, fmt.Errorf("sync pack: %w", err)
	}
	if err := p.f.Close(); err != nil {
		os.Remove(p.f.Name())
		return packDone{}, err
	}
	final := p.s.packPath(id)
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		os.Remove(p.f.Name())
		return packDone{}, err
	}
	if err := os.Rename(p.f.Name(), final); err != nil {
		os.Remove(p.f.Name())
		return packDone{}, fmt.Errorf("install pack: %w", err)
	}
	if err := syncDir(filepath.Dir(final)); err != nil {
		return packDone{}, err
	}
	for i := range p.ents {
		p.ents[i].Pack = id
	}
	return packDone{id: id, size: p.size, ents: p.ents}, nil
}

// forEachBlob calls fn for every indexed blob.
func (s *Store) forEachBlob(fn func(id chunk.ID, loc Loc) error) error {
	return s.db.View(func(txn *badger.Txn) error {
		opt := badger.DefaultIteratorOptions
		opt.Prefix = []byte(kBlob)
		it := txn.NewIterator(opt)
		defer it.Close()
		for it.Seek(opt.Prefix); it.ValidForPrefix(opt.Prefix); it.Next() {
			var id chunk.ID
			copy(id[:], it.Item().Key()[1:])
			var loc Loc
			err := it.Item().Value(func(v []byte) (err error) {
				loc, err = unmarshalLoc(v)
				return err
			})
			if err != nil {
				return fmt.Errorf("index entry %s: %w", id.Short(), err)
			}
			if err := fn(id, loc); err != nil {
				return err
			}
		}
		return nil
	})
}

// PutFrame stores a frame received whole from another store, keeping its
// bytes as they are (no second compression). The caller has verified every
// blob of raw (the decompressed payload) against its id. When the store
// already has some of the blobs, the missing ones are Put one by one
// instead, so nothing is stored twice.
func (w *Writer) PutFrame(comp uint8, payload []byte, ents []PackEntry, raw []byte) error {
	ids := make([]chunk.ID, len(ents))
	for i, e := range ents {
		ids[i] = e.ID
	}
	has, err := w.s.HasMany(ids)
	if err != nil {
		return err
	}
	w.mu.Lock()
	fresh := true
	for i, e := range ents {
		if _, dup := w.seen[e.ID]; dup || has[i] {
			fresh = false
		}
	}
	if fresh && (comp == compZstd || comp == compRaw) {
		job := frameJob{data: append([]byte(nil), payload...), comp: comp}
		for _, e := range ents {
			w.seen[e.ID] = struct{}{}
			w.stats.Blobs++
			w.stats.Bytes += int64(e.Len)
			job.ents = append(job.ents, PackEntry{ID: e.ID, Loc: Loc{Type: e.Type, Off: e.Off, Len: e.Len}})
		}
		err := w.err
		w.mu.Unlock()
		if err != nil {
			return err
		}
		w.frames <- job
		return nil
	}
	w.mu.Unlock()
	for _, e := range ents {
		if _, err := w.Put(e.Type, e.ID, raw[e.Off:e.Off+e.Len]); err != nil {
			return err
		}
	}
	return nil
}

// Frame compressions, as in pack headers and on the wire.
const (
	CompRaw  = compRaw
	CompZstd = compZstd
)
