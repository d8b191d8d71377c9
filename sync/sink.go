package sync

import (
	gosync "sync"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store"
)

// flushEvery is how many received (uncompressed) bytes a Sink takes
// before it indexes them durably, so an interrupted transfer keeps what
// arrived. Packs are fsynced as they fill, off the receiving path; this
// bounds what a kill -9 loses.
const flushEvery = 64 << 20

// Sink stores what a wire stream brings into a store.
type Sink struct {
	st      *store.Store
	w       *store.Writer
	pending int64
	Commits map[chunk.ID][]byte // commit records received, verified

	// Earlier writers flush in the background while the stream goes on
	// into a fresh one: receiving never waits for an fsync.
	wg    gosync.WaitGroup
	mu    gosync.Mutex
	total store.WriterStats
	err   error
}

// NewSink receives into st.
func NewSink(st *store.Store) *Sink {
	return &Sink{st: st, w: st.NewWriter(), Commits: map[chunk.ID][]byte{}}
}

func (s *Sink) added(n int) error {
	s.pending += int64(n)
	if s.pending >= flushEvery {
		old := s.w
		s.w, s.pending = s.st.NewWriter(), 0
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.flushed(old.Flush())
		}()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (s *Sink) flushed(ws store.WriterStats, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.total.Blobs += ws.Blobs
	s.total.Bytes += ws.Bytes
	s.total.StoredBytes += ws.StoredBytes
	s.total.Packs += ws.Packs
	if s.err == nil {
		s.err = err
	}
}

// Receiver is the Decode callback set writing into the store.
func (s *Sink) Receiver() Receiver {
	return Receiver{
		Blob: func(t store.Type, id chunk.ID, data []byte) error {
			if _, err := s.w.Put(t, id, data); err != nil {
				return err
			}
			return s.added(len(data))
		},
		Frame: func(comp byte, payload []byte, ents []FrameEntry, raw []byte) error {
			pe := make([]store.PackEntry, len(ents))
			for i, e := range ents {
				pe[i] = store.PackEntry{ID: e.ID, Loc: store.Loc{Type: e.Type, Off: e.Off, Len: e.Len}}
			}
			if err := s.w.PutFrame(comp, payload, pe, raw); err != nil {
				return err
			}
			return s.added(len(raw))
		},
		Commit: func(id chunk.ID, b []byte) error {
			s.Commits[id] = append([]byte(nil), b...)
			return nil
		},
		Base: s.st.Get,
	}
}

// Close makes everything received durable and returns what was added.
func (s *Sink) Close() (store.WriterStats, error) {
	s.flushed(s.w.Flush())
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total, s.err
}
