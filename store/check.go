package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/zeebo/blake3"

	"github.com/systemimager/sim/chunk"
)

// Problem is one inconsistency found by Check.
type Problem struct {
	Pack    chunk.ID // zero if not about a pack
	Blob    chunk.ID // zero if not about a blob
	Warning bool     // harmless (e.g. a pack left by an interrupted write)
	// Follows marks a blob lost to a problem already reported for its
	// pack (missing, unreadable): not worth a line of its own, but what
	// it breaks must be named.
	Follows bool
	Msg     string
}

func (p Problem) String() string {
	s := ""
	if !p.Blob.IsZero() {
		s += "blob " + p.Blob.String() + ": "
	}
	if !p.Pack.IsZero() {
		s += "pack " + p.Pack.Short() + ": "
	}
	return s + p.Msg
}

// CheckStats counts what Check looked at.
type CheckStats struct {
	Packs, Blobs int
	Bytes        int64
}

// PackSizes returns the indexed packs and their sizes.
func (s *Store) PackSizes() (map[chunk.ID]int64, error) {
	out := map[chunk.ID]int64{}
	err := s.scan(kPack, true, func(k, v []byte) error {
		var id chunk.ID
		copy(id[:], k)
		if len(v) == 8 {
			out[id] = int64(binary.BigEndian.Uint64(v))
		}
		return nil
	})
	return out, err
}

// packFilesOnDisk lists pack files under packs/ (a local store).
func (s *Store) packFilesOnDisk() (map[chunk.ID]string, error) {
	out := map[chunk.ID]string{}
	dirs, err := os.ReadDir(filepath.Join(s.dir, "packs"))
	if err != nil {
		return nil, err
	}
	for _, d := range dirs {
		ents, err := os.ReadDir(filepath.Join(s.dir, "packs", d.Name()))
		if err != nil {
			continue
		}
		for _, e := range ents {
			name := strings.TrimSuffix(e.Name(), ".pack")
			id, err := chunk.Parse(name)
			if err != nil {
				continue
			}
			out[id] = filepath.Join(s.dir, "packs", d.Name(), e.Name())
		}
	}
	return out, nil
}

// Check verifies the packs and the index against each other: every pack
// the index names exists with its recorded size and a well-formed header
// that agrees with the index; every indexed blob's pack is indexed. With
// readData it also hashes every pack file and every blob.
//
// On an S3 store the plain check reads no pack: the index comes from the
// index files (checksummed, each pack's header as written), sizes and
// presence from the bucket's listing. readData downloads every pack.
func (s *Store) Check(readData bool, report func(Problem)) (CheckStats, error) {
	var cs CheckStats
	if err := s.Refresh(); err != nil {
		return cs, err
	}
	sizes, err := s.PackSizes()
	if err != nil {
		return cs, err
	}
	var onDisk map[chunk.ID]string
	var listed map[chunk.ID]int64 // S3: the bucket's packs and sizes
	if s.rem != nil {
		if listed, err = s.remotePacks(); err != nil {
			return cs, err
		}
		onDisk = make(map[chunk.ID]string, len(listed))
		for id := range listed {
			onDisk[id] = s.packPath(id)
		}
	} else if onDisk, err = s.packFilesOnDisk(); err != nil {
		return cs, err
	}
	for id := range onDisk {
		if _, ok := sizes[id]; !ok {
			if s.rem != nil && s.rem.isDoomed(id) {
				continue // an orphan a pending gc mark already dooms
			}
			report(Problem{Pack: id, Warning: true, Msg: "not in the index (left by an interrupted write; gc removes it)"})
		}
	}
	headers := map[chunk.ID]map[chunk.ID]Loc{}
	lost := map[chunk.ID]bool{} // packs whose blobs cannot be read at all
	for id, size := range sizes {
		cs.Packs++
		cs.Bytes += size
		path, ok := onDisk[id]
		if !ok {
			report(Problem{Pack: id, Msg: "missing: the index names it but there is no pack file"})
			lost[id] = true
			continue
		}
		if listed != nil {
			if listed[id] != size {
				report(Problem{Pack: id, Msg: fmt.Sprintf("is %d bytes in the bucket, the index says %d", listed[id], size)})
			}
			if !readData {
				continue
			}
			if err := s.fetchPack(id); err != nil {
				if errors.Is(err, ErrUnavailable) {
					return cs, unreadable(s, err)
				}
				report(Problem{Pack: id, Msg: err.Error()})
				lost[id] = true
				continue
			}
		}
		f, err := os.Open(path)
		if err != nil {
			report(Problem{Pack: id, Msg: err.Error()})
			lost[id] = true
			continue
		}
		fi, err := f.Stat()
		if err == nil && fi.Size() != size {
			report(Problem{Pack: id, Msg: fmt.Sprintf("is %d bytes, the index says %d", fi.Size(), size)})
		}
		ents, err := readPackHeader(f, fi.Size(), id)
		if err != nil {
			report(Problem{Pack: id, Msg: "header: " + err.Error()})
			lost[id] = !readData // with readData, each blob is tried
		} else {
			m := make(map[chunk.ID]Loc, len(ents))
			for _, e := range ents {
				m[e.ID] = e.Loc
			}
			headers[id] = m
		}
		if readData {
			h := blake3.New()
			if _, err := io.Copy(h, f); err != nil {
				report(Problem{Pack: id, Msg: "read: " + err.Error()})
			} else {
				var got chunk.ID
				h.Sum(got[:0])
				if got != id {
					report(Problem{Pack: id, Msg: fmt.Sprintf("content hashes to %s: the file is damaged", got.Short())})
				}
			}
		}
		f.Close()
	}
	err = s.forEachBlob(func(id chunk.ID, loc Loc) error {
		cs.Blobs++
		if _, ok := sizes[loc.Pack]; !ok {
			report(Problem{Blob: id, Pack: loc.Pack, Msg: "indexed in a pack the index does not list"})
			return nil
		}
		if lost[loc.Pack] {
			report(Problem{Blob: id, Pack: loc.Pack, Follows: true, Msg: "its pack is missing or unreadable"})
			return nil
		}
		if h, ok := headers[loc.Pack]; ok {
			if hl, ok := h[id]; !ok || hl != loc {
				report(Problem{Blob: id, Pack: loc.Pack, Msg: "index entry disagrees with the pack header"})
				return nil
			}
		}
		if readData {
			if _, err := s.GetAt(id, loc); err != nil {
				if errors.Is(err, ErrUnavailable) {
					return unreadable(s, err)
				}
				report(Problem{Blob: id, Pack: loc.Pack, Msg: err.Error()})
			}
		}
		return nil
	})
	if err != nil {
		return cs, err
	}
	return cs, s.checkSignatures(report)
}

// checkSignatures verifies every stored signature against its commit: a
// signature whose commit is gone is harmless (an interrupted gc; the
// next removes it), one that does not verify cannot have been stored by
// PutSignature and is an error.
func (s *Store) checkSignatures(report func(Problem)) error {
	ids, err := s.Signed()
	if err != nil {
		return err
	}
	for _, id := range ids {
		raw, err := s.CommitRaw(id)
		if errors.Is(err, ErrNotFound) {
			report(Problem{Warning: true, Msg: fmt.Sprintf("signatures of commit %s, which the store lacks (gc removes them)", id.Short())})
			continue
		}
		if err != nil {
			return err
		}
		sigs, err := s.Signatures(id)
		if err != nil {
			report(Problem{Msg: err.Error()})
			continue
		}
		for _, sig := range sigs {
			if err := sig.Verify(id, raw); err != nil {
				report(Problem{Msg: fmt.Sprintf("stored signature: %v", err)})
			}
		}
	}
	return nil
}

// ---- garbage collection ----

// GCStats says what Repack did.
type GCStats struct {
	PacksRemoved   int
	PacksRewritten int
	BlobsRemoved   int
	BytesFreed     int64
	CommitsRemoved int
}

// Repack keeps the blobs for which live returns true and removes the rest:
// packs with no live blob are deleted, packs with some are rewritten.
// Crash-safe: live blobs are copied into new durable packs and re-indexed
// before any index entry is dropped or any old pack deleted, so at every
// moment each index entry names an existing pack holding its blob. Leftover
// old packs from a crash are removed by the next run.
func (s *Store) Repack(live func(chunk.ID) bool, liveCommits func(chunk.ID) bool) (GCStats, error) {
	var gs GCStats
	if s.rem != nil {
		return gs, fmt.Errorf("gc on an S3 store (%s) is not implemented yet: its packs can be in use by other writers", s.rem.c.Loc)
	}
	sizes, err := s.PackSizes()
	if err != nil {
		return gs, err
	}
	type packUse struct {
		live, dead []PackEntry
	}
	use := map[chunk.ID]*packUse{}
	for id := range sizes {
		use[id] = &packUse{}
	}
	err = s.forEachBlob(func(id chunk.ID, loc Loc) error {
		u := use[loc.Pack]
		if u == nil {
			u = &packUse{}
			use[loc.Pack] = u
		}
		e := PackEntry{ID: id, Loc: loc}
		if live(id) {
			u.live = append(u.live, e)
		} else {
			u.dead = append(u.dead, e)
		}
		return nil
	})
	if err != nil {
		return gs, err
	}
	// 1. Copy the live blobs of partly dead packs into new packs.
	w := s.NewWriter()
	w.force = true
	var drop []chunk.ID
	for pid, u := range use {
		if len(u.dead) == 0 {
			continue
		}
		drop = append(drop, pid)
		if len(u.live) == 0 {
			gs.PacksRemoved++
		} else {
			gs.PacksRewritten++
		}
		for _, e := range u.live {
			b, err := s.GetAt(e.ID, e.Loc)
			if err != nil {
				w.Abort()
				return gs, fmt.Errorf("gc: cannot copy live blob %s: %w", e.ID, err)
			}
			if _, err := w.Put(e.Type, e.ID, b); err != nil {
				w.Abort()
				return gs, err
			}
		}
	}
	if _, err := w.Flush(); err != nil {
		return gs, fmt.Errorf("gc: %w", err)
	}
	// 2. Drop dead index entries and the old packs' keys.
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, pid := range drop {
		for _, e := range use[pid].dead {
			if err := wb.Delete(append([]byte(kBlob), e.ID[:]...)); err != nil {
				return gs, err
			}
			gs.BlobsRemoved++
		}
		if err := wb.Delete(append([]byte(kPack), pid[:]...)); err != nil {
			return gs, err
		}
		gs.BytesFreed += sizes[pid]
	}
	var deadCommits []chunk.ID
	if err := s.scan(kCommit, false, func(k, _ []byte) error {
		var id chunk.ID
		copy(id[:], k)
		if !liveCommits(id) {
			deadCommits = append(deadCommits, id)
		}
		return nil
	}); err != nil {
		return gs, err
	}
	for _, id := range deadCommits {
		if err := wb.Delete(append([]byte(kCommit), id[:]...)); err != nil {
			return gs, err
		}
	}
	gs.CommitsRemoved = len(deadCommits)
	// Signatures go with their commits (and any left by a gc killed
	// before it dropped them).
	if _, err := s.dropSignatures(wb, liveCommits); err != nil {
		return gs, err
	}
	if err := wb.Flush(); err != nil {
		return gs, err
	}
	if err := s.db.Sync(); err != nil {
		return gs, err
	}
	// 3. Only now delete old pack files, and any pack no index names.
	s.mu.Lock()
	for _, pid := range drop {
		if f := s.packs[pid]; f != nil {
			f.Close()
			delete(s.packs, pid)
		}
	}
	s.mu.Unlock()
	for _, pid := range drop {
		if err := os.Remove(s.packPath(pid)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return gs, err
		}
	}
	onDisk, err := s.packFilesOnDisk()
	if err != nil {
		return gs, err
	}
	now, err := s.PackSizes()
	if err != nil {
		return gs, err
	}
	for id, path := range onDisk {
		if _, ok := now[id]; !ok {
			if fi, err := os.Stat(path); err == nil {
				gs.BytesFreed += fi.Size()
			}
			os.Remove(path)
			gs.PacksRemoved++
		}
	}
	// Let badger reclaim the space of deleted keys.
	for s.db.RunValueLogGC(0.5) == nil {
	}
	return gs, nil
}

// PackEntries returns the header entries of a pack (cached).
func (s *Store) PackEntries(id chunk.ID) ([]PackEntry, error) {
	s.mu.Lock()
	if e, ok := s.headers[id]; ok {
		s.mu.Unlock()
		return e, nil
	}
	s.mu.Unlock()
	f, err := s.packFile(id)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	ents, err := readPackHeader(f, fi.Size(), id)
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w", id.Short(), err)
	}
	s.mu.Lock()
	if len(s.headers) > 1024 {
		s.headers = map[chunk.ID][]PackEntry{}
	}
	s.headers[id] = ents
	s.mu.Unlock()
	return ents, nil
}

// unreadable is the error of a check that could not reach the store.
func unreadable(s *Store, err error) error {
	return fmt.Errorf("could not read the store %s, so the check stopped (this says nothing about damage; try again): %w", s.Location(), err)
}
