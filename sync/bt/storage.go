package bt

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	gosync "sync"

	"github.com/anacrolix/torrent/metainfo"
	"github.com/anacrolix/torrent/storage"
	"golang.org/x/sys/unix"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
	"github.com/systemimager/sim/sync/seal"
)

// seedStorage is the server's side: the whole payload is there, read
// from the packs (anacrolix's storage.ClientImpl for one torrent).
type seedStorage struct{ p *payload }

func (s seedStorage) OpenTorrent(context.Context, *metainfo.Info, metainfo.Hash) (storage.TorrentImpl, error) {
	return storage.TorrentImpl{
		Piece: func(mp metainfo.Piece) storage.PieceImpl { return seedPiece{s.p, mp.Offset()} },
		Close: func() error { return nil },
	}, nil
}

type seedPiece struct {
	p   *payload
	off int64
}

func (s seedPiece) ReadAt(b []byte, off int64) (int, error) { return s.p.ReadAt(b, s.off+off) }
func (s seedPiece) WriteAt([]byte, int64) (int, error) {
	return 0, errors.New("bt: the server's payload is read-only")
}
func (seedPiece) MarkComplete() error    { return nil }
func (seedPiece) MarkNotComplete() error { return nil }
func (seedPiece) Completion() storage.Completion {
	// Ok: trust it, no hashing of the whole payload at start.
	return storage.Completion{Ok: true, Complete: true}
}

// refuseStorage is the client's default storage: every torrent sim adds
// brings its own, so anything else is a bug, not a reason to write files
// into the working directory (anacrolix's default).
type refuseStorage struct{}

func (refuseStorage) OpenTorrent(context.Context, *metainfo.Info, metainfo.Hash) (storage.TorrentImpl, error) {
	return storage.TorrentImpl{}, errors.New("bt: torrent without sim storage")
}

// Record states on a node.
const (
	recMissing = iota // needed, not all its pieces are here
	recSpooled        // its pieces are here, decoding
	recPending        // decoded and put, the store not yet flushed
	recStored         // in the store as the same frame: served from there
	recKept           // in the store regrouped: served from the spool
	recLocal          // the store had every object before: not needed
	recFailed         // did not decode: left to the HTTP fallback
)

// nodeStorage is a node's side of one torrent. Pieces arrive in the
// spool, a sparse file in the store's tmp directory, at their payload
// offset; a frame whose pieces are all there is decoded, every object in
// it verified against its id and written into the store. Once the store
// holds the frame as it came (the usual case) its range of the spool is
// punched out and peers are served from the pack: the spool only ever
// holds frames in flight, never a second copy of the image.
type nodeStorage struct {
	sink    *simsync.Sink
	st      *store.Store // the sink's, read only: what is there, frames for peers
	t       *Torrent
	spool   *os.File
	corrupt bool // test hook: serve peers flipped bytes
	// sealer opens the frames of a sealed torrent. Peers are then served
	// the sealed bytes from the spool, which keeps them (a node never
	// serves frames from its store: it would have to seal them again).
	sealer *seal.Sealer

	// punch is held for reading while a piece is read from the spool
	// and for writing while spool ranges are punched out, so a peer is
	// never served the zeros of a hole punched under its read.
	punch gosync.RWMutex

	mu      gosync.Mutex
	pieces  []bool
	state   []uint8
	locs    []store.Loc // of recStored records
	needed  int         // records still to decode
	pending []int
	pbytes  int64
	queue   chan int
	done    chan struct{}
	err     error
	blobs   int64
	bytes   int64
	failed  int
	closed  bool
	wg      gosync.WaitGroup
}

// flushEvery is how much decoded data waits for a store flush: the
// spool keeps those frames until then.
const flushEvery = 32 << 20

// newNodeStorage opens the spool and works out, from what the sink's
// store already holds, which records are needed and which pieces can be
// served.
func newNodeStorage(sink *simsync.Sink, t *Torrent, corrupt bool) (*nodeStorage, error) {
	st := sink.Store()
	n := &nodeStorage{sink: sink, st: st, t: t, corrupt: corrupt,
		pieces: make([]bool, t.Info.NumPieces()),
		state:  make([]uint8, len(t.Records)),
		locs:   make([]store.Loc, len(t.Records)),
		queue:  make(chan int, len(t.Records)),
		done:   make(chan struct{}),
	}
	if t.Sealed {
		var err error
		if n.sealer, err = seal.New(t.Key); err != nil {
			return nil, err
		}
	}
	for i := range t.Records {
		r := &t.Records[i]
		ids := make([]chunk.ID, len(r.Entries))
		for k, e := range r.Entries {
			ids[k] = e.ID
		}
		has, err := st.HasMany(ids)
		if err != nil {
			return nil, err
		}
		all := true
		for _, h := range has {
			all = all && h
		}
		switch {
		case !all:
			n.state[i] = recMissing
			n.needed++
		case !t.Sealed && n.verbatim(i):
			n.state[i] = recStored
		default:
			n.state[i] = recLocal
		}
	}
	for p := range n.pieces {
		n.pieces[p] = n.servable(p)
	}
	name := filepath.Join(st.Dir(), "tmp", "bt-"+t.InfoHash.HexString()+".spool")
	var err error
	if n.spool, err = os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600); err != nil {
		return nil, fmt.Errorf("bt: spool: %w", err)
	}
	// Unlinked at once: nothing to clean up after a crash.
	os.Remove(name)
	if err := n.spool.Truncate(t.Length()); err != nil {
		n.spool.Close()
		return nil, fmt.Errorf("bt: spool: %w", err)
	}
	if n.needed == 0 {
		close(n.done)
	}
	n.wg.Add(1)
	go n.decoder()
	return n, nil
}

// verbatim says whether the store holds record i as the very same frame
// (so its bytes can be read back for peers), and remembers where.
func (n *nodeStorage) verbatim(i int) bool {
	r := &n.t.Records[i]
	var first store.Loc
	for k, e := range r.Entries {
		loc, err := n.st.Lookup(e.ID)
		if err != nil {
			return false
		}
		if k == 0 {
			first = loc
			if int64(loc.FrameLen) != r.Len || loc.Comp != r.Comp {
				return false
			}
		} else if loc.Pack != first.Pack || loc.FrameOff != first.FrameOff {
			return false
		}
		if loc.Off != e.Off || loc.Len != e.Len {
			return false
		}
	}
	n.locs[i] = first
	return true
}

// servable says whether piece p can be read back: every record it
// overlaps is in the store as it came. Called with mu held or before
// the torrent starts.
func (n *nodeStorage) servable(p int) bool {
	pl := n.t.Info.PieceLength
	i, j := n.t.recordsIn(int64(p)*pl, pl)
	for k := i; k < j; k++ {
		if n.state[k] != recStored {
			return false
		}
	}
	return i < j
}

// neededPieces lists the pieces to download, as [begin, end) runs.
func (n *nodeStorage) neededPieces() [][2]int {
	var runs [][2]int
	for i := range n.t.Records {
		if n.state[i] != recMissing {
			continue
		}
		a, b := n.t.piecesOf(&n.t.Records[i])
		if len(runs) > 0 && runs[len(runs)-1][1] >= a {
			runs[len(runs)-1][1] = max(runs[len(runs)-1][1], b)
		} else {
			runs = append(runs, [2]int{a, b})
		}
	}
	return runs
}

func (n *nodeStorage) OpenTorrent(context.Context, *metainfo.Info, metainfo.Hash) (storage.TorrentImpl, error) {
	return storage.TorrentImpl{
		Piece: func(mp metainfo.Piece) storage.PieceImpl { return nodePiece{n, mp.Index(), mp.Offset()} },
		Close: func() error { return nil },
	}, nil
}

type nodePiece struct {
	n   *nodeStorage
	idx int
	off int64
}

// ReadAt serves a piece: from the store for frames it holds as they
// came, from the spool for the rest.
func (p nodePiece) ReadAt(b []byte, off int64) (int, error) {
	n := p.n
	pos := p.off + off
	i, j := n.t.recordsIn(pos, int64(len(b)))
	n.punch.RLock()
	defer n.punch.RUnlock()
	// Where each record is, as of now (reads happen outside mu).
	n.mu.Lock()
	complete := n.pieces[p.idx]
	stored := make([]bool, j-i)
	locs := make([]store.Loc, j-i)
	for k := i; k < j; k++ {
		stored[k-i], locs[k-i] = n.state[k] == recStored, n.locs[k]
	}
	n.mu.Unlock()
	done, err := n.t.readSpans(b, pos, func(k int, part []byte, in int64) error {
		var err error
		if stored[k-i] {
			_, err = n.st.ReadRawAt(locs[k-i], part, in)
		} else {
			_, err = n.spool.ReadAt(part, n.t.Records[k].Off+in)
		}
		return err
	})
	if err != nil {
		return done, err
	}
	// The test hook only spoils pieces served as complete (what peers
	// get), not this node's own hash checks of pieces it downloads.
	if n.corrupt && complete && len(b) > 0 {
		b[len(b)/2] ^= 0x5a
	}
	return done, nil
}

func (p nodePiece) WriteAt(b []byte, off int64) (int, error) {
	return p.n.spool.WriteAt(b, p.off+off)
}

// MarkComplete is called once the piece's SHA-1 matched: records whose
// pieces are now all here go to the decoder.
func (p nodePiece) MarkComplete() error {
	n := p.n
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil
	}
	n.pieces[p.idx] = true
	pl := n.t.Info.PieceLength
	i, j := n.t.recordsIn(int64(p.idx)*pl, pl)
	for k := i; k < j; k++ {
		if n.state[k] != recMissing {
			continue
		}
		a, b := n.t.piecesOf(&n.t.Records[k])
		all := true
		for q := a; q < b && all; q++ {
			all = n.pieces[q]
		}
		if all {
			n.state[k] = recSpooled
			n.queue <- k
		}
	}
	return nil
}

func (p nodePiece) MarkNotComplete() error {
	p.n.mu.Lock()
	p.n.pieces[p.idx] = false
	p.n.mu.Unlock()
	return nil
}

func (p nodePiece) Completion() storage.Completion {
	p.n.mu.Lock()
	defer p.n.mu.Unlock()
	return storage.Completion{Ok: true, Complete: p.n.pieces[p.idx]}
}

// decoder decodes spooled records, one at a time, off anacrolix's
// goroutines.
func (n *nodeStorage) decoder() {
	defer n.wg.Done()
	for k := range n.queue {
		err := n.decode(k)
		n.mu.Lock()
		if err != nil {
			n.state[k] = recFailed
			n.failed++
		} else {
			n.state[k] = recPending
			n.pending = append(n.pending, k)
			n.pbytes += int64(n.t.Records[k].ULen)
		}
		n.needed--
		flush := n.pbytes >= flushEvery || n.needed == 0
		last := n.needed == 0
		n.mu.Unlock()
		if flush {
			n.flush()
		}
		if last {
			close(n.done)
		}
	}
}

// decode reads record k from the spool and hands the frame to the sink,
// which verifies every object in it and stores it.
func (n *nodeStorage) decode(k int) error {
	r := &n.t.Records[k]
	payload := make([]byte, r.Len)
	if _, err := n.spool.ReadAt(payload, r.Off); err != nil {
		return fmt.Errorf("bt: spool: %w", err)
	}
	if n.sealer != nil {
		frame, err := n.sealer.Open(nil, uint64(k), r.Nonce, payload)
		if err != nil {
			return fmt.Errorf("bt: frame at %d: %w", r.Off, err)
		}
		payload = frame
	}
	if err := n.sink.Frame(r.Comp, int(r.ULen), payload, r.Entries); err != nil {
		return fmt.Errorf("bt: frame at %d: %w", r.Off, err)
	}
	n.mu.Lock()
	n.blobs += int64(len(r.Entries))
	n.bytes += r.Len
	n.mu.Unlock()
	return nil
}

// flush makes the pending records durable and, for those the store now
// holds as they came, serves them from the store and frees their spool.
// Only the decoder goroutine (or close, after it) flushes.
func (n *nodeStorage) flush() {
	n.mu.Lock()
	idle := len(n.pending) == 0
	n.mu.Unlock()
	if idle {
		return // the sink may be closed by now: nothing to make durable
	}
	_, err := n.sink.Sync()
	n.punch.Lock()
	defer n.punch.Unlock()
	n.mu.Lock()
	defer n.mu.Unlock()
	if err != nil {
		if n.err == nil {
			n.err = err
		}
		return
	}
	for _, k := range n.pending {
		if n.sealer != nil || !n.verbatim(k) {
			n.state[k] = recKept
			continue
		}
		n.state[k] = recStored
		r := &n.t.Records[k]
		unix.Fallocate(int(n.spool.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, r.Off, r.Len)
	}
	n.pending, n.pbytes = n.pending[:0], 0
}

// progress reports what was decoded (objects, payload bytes) and what
// failed.
func (n *nodeStorage) progress() (blobs, bytes int64, failed int, err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.blobs, n.bytes, n.failed, n.err
}

// close stops the decoder and drops the spool. Called after the torrent
// is dropped from the client.
func (n *nodeStorage) close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	n.mu.Unlock()
	close(n.queue)
	n.wg.Wait()
	n.flush()
	err := n.spool.Close()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.err != nil {
		return n.err
	}
	return err
}
