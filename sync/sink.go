package sync

import (
	"errors"
	"fmt"
	gosync "sync"

	"github.com/klauspost/compress/zstd"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/store"
)

// flushEvery is how many received (uncompressed) bytes a Sink takes
// before it indexes them durably, so an interrupted transfer keeps what
// arrived. Packs are fsynced as they fill, off the receiving path; this
// bounds what a kill -9 loses.
const flushEvery = 64 << 20

// Sink is the one way received objects enter a store, whatever carried
// them (an HTTP stream, BitTorrent pieces, multicast datagrams, a push):
// it checks every blob and commit against its id (and that every tree
// decodes: a tree no checkout could use is refused), stores blobs once
// (frames that arrive whole are kept as they came, without a second
// compression), and makes what it took durable every 64 MiB, at Sync and
// at Close. Nothing it was handed is trusted before that check, so a
// transport may pass it bytes straight off the network.
//
// A Sink is safe for concurrent use. After Close it takes nothing more.
type Sink struct {
	st   *store.Store
	dec  *zstd.Decoder
	feed *Feed // nil: no checkout reads beside the fetch (SetFeed)

	mu      gosync.Mutex
	w       *store.Writer
	pending int64
	commits map[chunk.ID][]byte
	taken   SinkStats // blobs and bytes verified and handed to a writer
	closed  bool
	// limit, when > 0, bounds the bytes (uncompressed) the sink takes,
	// counted as they arrive, duplicates included (SetLimit).
	limit, got int64
	limitWhy   string

	// Earlier writers flush in the background while the transfer goes on
	// into a fresh one: receiving never waits for an fsync.
	wg     gosync.WaitGroup
	fmu    gosync.Mutex
	stored store.WriterStats
	err    error
}

// SinkStats counts what a Sink took.
type SinkStats struct {
	// Blobs and Bytes: verified blobs received (new to the store or not)
	// and their uncompressed size.
	Blobs, Bytes int64
	// New, NewBytes, StoredBytes: of those, what the store lacked, as
	// made durable so far (after Sync or Close: all of it).
	New, NewBytes, StoredBytes int64
}

var _ Receiver = (*Sink)(nil)

// NewSink receives into st.
func NewSink(st *store.Store) *Sink {
	// No zstd checksum: every blob a frame holds is BLAKE3-hashed
	// against its id right after, which proves more than the frame's
	// xxhash would (and the store's reader checks that one when it
	// decompresses the kept frame).
	dec, _ := zstd.NewReader(nil, zstd.WithDecoderConcurrency(2), zstd.WithDecoderMaxMemory(maxWireFrame), zstd.IgnoreChecksum(true))
	return &Sink{st: st, dec: dec, w: st.NewWriter(), commits: map[chunk.ID][]byte{}}
}

// ErrTooMuch is wrapped when a sink is handed more than its limit: a
// peer sending far more than the commit it delivers holds.
var ErrTooMuch = errors.New("more than the commit holds")

// SetLimit bounds what the sink takes, in uncompressed bytes counted as
// they arrive (0: no bound); beyond it every Blob and Frame fails with an
// error wrapping ErrTooMuch that says why (FetchCommit sets it from the
// commit's size, so an endless stream cannot fill a node's disk).
func (s *Sink) SetLimit(n int64, why string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.limit, s.got, s.limitWhy = n, 0, why
}

// charge counts n arriving bytes against the limit.
func (s *Sink) charge(n int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got += int64(n)
	if s.limit > 0 && s.got > s.limit {
		return fmt.Errorf("%s: %w", s.limitWhy, ErrTooMuch)
	}
	return nil
}

// SetFeed makes the sink hand every blob it verified to f as well (a
// checkout running beside the fetch reads them there), and tell f when
// what it took became readable in the store. Set it before the first
// object arrives.
func (s *Sink) SetFeed(f *Feed) { s.feed = f }

// Store is the store the sink writes to, for reading (what is there
// already, frames to serve to peers); writing goes through the sink.
func (s *Sink) Store() *store.Store { return s.st }

// Has reports which of ids the store holds already.
func (s *Sink) Has(ids []chunk.ID) ([]bool, error) { return s.st.HasMany(ids) }

// Base returns the bytes of a blob the store holds (a delta's base).
func (s *Sink) Base(id chunk.ID) ([]byte, error) { return s.st.Get(id) }

// Blob verifies data against id and stores it (once). data may be reused
// by the caller after Blob returns.
func (s *Sink) Blob(t store.Type, id chunk.ID, data []byte) error {
	if err := s.charge(len(data)); err != nil {
		return err
	}
	if err := checkType(t); err != nil {
		return err
	}
	if err := chunk.Verify(id, data); err != nil {
		return err
	}
	var trees map[chunk.ID]*snapshot.Tree
	if t == store.TypeTree {
		tr, err := checkTree(id, data)
		if err != nil {
			return err
		}
		trees = map[chunk.ID]*snapshot.Tree{id: tr}
	}
	w, err := s.writer()
	if err != nil {
		return err
	}
	if _, err := w.Put(t, id, data); err != nil {
		return err
	}
	if s.feed != nil {
		s.feed.offer(data, []FrameEntry{{Type: t, ID: id, Len: uint32(len(data))}}, trees, false)
	}
	return s.took(1, int64(len(data)))
}

// Frame decompresses a frame as it came (comp raw or zstd, ulen bytes
// uncompressed, holding ents), verifies every blob in it against its id,
// and stores the frame as it is. payload may be reused after Frame returns.
func (s *Sink) Frame(comp byte, ulen int, payload []byte, ents []FrameEntry) error {
	if err := s.charge(max(ulen, len(payload))); err != nil {
		return err
	}
	raw, trees, err := s.decodeFrame(comp, ulen, payload, ents)
	if err != nil {
		return err
	}
	kept := false
	if comp == compZstd {
		// PutFrame copies what it keeps: the decoded frame is free
		// again once it returns (a 4 MiB buffer per frame, zeroed
		// each time, was a twentieth of an install's CPU), unless
		// the feed keeps it for the checkout.
		defer func() {
			if !kept {
				putFrameBuf(raw)
			}
		}()
	}
	pe := make([]store.PackEntry, len(ents))
	var n int64
	for i, e := range ents {
		pe[i] = store.PackEntry{ID: e.ID, Loc: store.Loc{Type: e.Type, Off: e.Off, Len: e.Len}}
		n += int64(e.Len)
	}
	w, err := s.writer()
	if err != nil {
		return err
	}
	if err := w.PutFrame(comp, payload, pe, raw); err != nil {
		return err
	}
	if s.feed != nil {
		// A raw frame's bytes are the caller's payload: the feed copies
		// what it keeps of them.
		kept = s.feed.offer(raw, ents, trees, comp == compZstd)
	}
	return s.took(int64(len(ents)), n)
}

// decodeFrame checks a frame's entries, decompresses it and verifies its
// blobs. It returns the trees among them decoded when the sink has a
// feed (which counts the reads they will cause).
func (s *Sink) decodeFrame(comp byte, ulen int, payload []byte, ents []FrameEntry) ([]byte, map[chunk.ID]*snapshot.Tree, error) {
	if ulen < 0 || ulen > maxWireFrame {
		return nil, nil, fmt.Errorf("frame of %d bytes", ulen)
	}
	for _, x := range ents {
		if uint64(x.Off)+uint64(x.Len) > uint64(ulen) {
			return nil, nil, fmt.Errorf("frame entry %s outside its frame", x.ID.Short())
		}
		if err := checkType(x.Type); err != nil {
			return nil, nil, err
		}
	}
	raw := payload
	switch comp {
	case compZstd:
		var err error
		buf := getFrameBuf(decodeCap(uint64(ulen), len(payload)))
		if raw, err = s.dec.DecodeAll(payload, buf); err != nil {
			putFrameBuf(buf)
			return nil, nil, fmt.Errorf("frame: %w", err)
		}
	case compRaw:
	default:
		return nil, nil, fmt.Errorf("frame: unknown compression %d", comp)
	}
	fail := func(err error) ([]byte, map[chunk.ID]*snapshot.Tree, error) {
		if comp == compZstd {
			putFrameBuf(raw)
		}
		return nil, nil, err
	}
	if len(raw) != ulen {
		return fail(fmt.Errorf("frame is %d bytes, its header says %d", len(raw), ulen))
	}
	var trees map[chunk.ID]*snapshot.Tree
	for _, x := range ents {
		b := raw[x.Off : x.Off+x.Len]
		if err := chunk.Verify(x.ID, b); err != nil {
			return fail(err)
		}
		if x.Type == store.TypeTree {
			t, err := checkTree(x.ID, b)
			if err != nil {
				return fail(err)
			}
			if s.feed != nil {
				if trees == nil {
					trees = map[chunk.ID]*snapshot.Tree{}
				}
				trees[x.ID] = t
			}
		}
	}
	return raw, trees, nil
}

// frameBufs holds decode buffers of frames the sink is done with.
var frameBufs gosync.Pool

// getFrameBuf returns an empty buffer of capacity at least n, reused
// when one is free.
func getFrameBuf(n int) []byte {
	if b, ok := frameBufs.Get().(*[]byte); ok && cap(*b) >= n {
		return (*b)[:0]
	}
	return make([]byte, 0, n)
}

// putFrameBuf gives b back for reuse; nothing may hold it after.
func putFrameBuf(b []byte) {
	if cap(b) == 0 || cap(b) > 2*maxFrameBuf {
		return
	}
	b = b[:0]
	frameBufs.Put(&b)
}

// maxFrameBuf: buffers beyond twice this (a rare big frame) are not
// kept for reuse.
const maxFrameBuf = 8 << 20

// checkTree refuses a tree that does not decode (names with "/", ".",
// "..", NUL or over 255 bytes, hard links out of the tree, bad
// encodings): its bytes may match its id, but no checkout could use it,
// so no store keeps it.
func checkTree(id chunk.ID, b []byte) (*snapshot.Tree, error) {
	t, err := snapshot.DecodeTree(b)
	if err != nil {
		return nil, fmt.Errorf("tree %s: %w", id.Short(), err)
	}
	return t, nil
}

// Commit verifies an encoded commit against its id and keeps it for the
// caller (Commits): a commit is stored only once its tree is complete.
func (s *Sink) Commit(id chunk.ID, b []byte) error {
	if err := chunk.Verify(id, b); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.commits[id] = append([]byte(nil), b...)
	return nil
}

// Commits returns the commits received, verified, by id.
func (s *Sink) Commits() map[chunk.ID][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[chunk.ID][]byte, len(s.commits))
	for k, v := range s.commits {
		out[k] = v
	}
	return out
}

func (s *Sink) writer() (*store.Writer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errSinkClosed
	}
	return s.w, nil
}

var errSinkClosed = fmt.Errorf("sink: closed")

// took counts what a writer got and starts a background flush every
// flushEvery bytes.
func (s *Sink) took(blobs, n int64) error {
	s.mu.Lock()
	s.taken.Blobs += blobs
	s.taken.Bytes += n
	s.pending += n
	if s.pending >= flushEvery && !s.closed {
		old := s.w
		s.w, s.pending = s.st.NewWriter(), 0
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.flushed(old.Flush())
		}()
	}
	s.mu.Unlock()
	s.fmu.Lock()
	defer s.fmu.Unlock()
	return s.err
}

func (s *Sink) flushed(ws store.WriterStats, err error) {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	s.stored.Blobs += ws.Blobs
	s.stored.Bytes += ws.Bytes
	s.stored.StoredBytes += ws.StoredBytes
	s.stored.Packs += ws.Packs
	if s.err == nil {
		s.err = err
	}
	if s.feed != nil {
		s.feed.wake()
	}
}

// Sync makes everything taken so far durable (packs fsynced, index
// synced) and returns the totals. The sink goes on taking objects.
func (s *Sink) Sync() (SinkStats, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return s.Stats(), errSinkClosed
	}
	old := s.w
	s.w, s.pending = s.st.NewWriter(), 0
	s.mu.Unlock()
	s.flushed(old.Flush())
	s.wg.Wait()
	st := s.Stats()
	s.fmu.Lock()
	defer s.fmu.Unlock()
	return st, s.err
}

// Stats returns the counts so far.
func (s *Sink) Stats() SinkStats {
	s.mu.Lock()
	out := s.taken
	s.mu.Unlock()
	s.fmu.Lock()
	out.New, out.NewBytes, out.StoredBytes = s.stored.Blobs, s.stored.Bytes, s.stored.StoredBytes
	s.fmu.Unlock()
	return out
}

// Close makes everything taken durable and returns the totals. Calling
// it again returns them again.
func (s *Sink) Close() (SinkStats, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.wg.Wait()
		s.fmu.Lock()
		defer s.fmu.Unlock()
		return s.statsLocked(), s.err
	}
	s.closed = true
	w := s.w
	s.mu.Unlock()
	s.flushed(w.Flush())
	s.wg.Wait()
	s.dec.Close()
	s.fmu.Lock()
	defer s.fmu.Unlock()
	return s.statsLocked(), s.err
}

// statsLocked is Stats with fmu held.
func (s *Sink) statsLocked() SinkStats {
	s.mu.Lock()
	out := s.taken
	s.mu.Unlock()
	out.New, out.NewBytes, out.StoredBytes = s.stored.Blobs, s.stored.Bytes, s.stored.StoredBytes
	return out
}
