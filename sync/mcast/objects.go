package mcast

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"sort"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
)

// Manifest (object 0 of a session; its BLAKE3 is announced):
//
//	manifest = "SIMMANI1" want:[32] uvarint(n) object{n}
//	object   = uvarint(size) uvarint(nblobs) (type:u8 id:[32]){nblobs}
//
// Object i (1..n) is entry i-1: a wire stream of size bytes holding
// exactly those blobs. A receiver skips objects whose blobs it all has.
const manifestMagic = "SIMMANI1"

// ObjectInfo is one manifest entry.
type ObjectInfo struct {
	Size  uint32
	Blobs []Blob
}

// Blob is a blob of an object.
type Blob struct {
	Type store.Type
	ID   chunk.ID
}

// Manifest is a decoded manifest.
type Manifest struct {
	Want    chunk.ID
	Objects []ObjectInfo
}

// Encode gives the manifest's canonical bytes.
func (m *Manifest) Encode() []byte {
	b := append([]byte(manifestMagic), m.Want[:]...)
	b = binary.AppendUvarint(b, uint64(len(m.Objects)))
	for _, o := range m.Objects {
		b = binary.AppendUvarint(b, uint64(o.Size))
		b = binary.AppendUvarint(b, uint64(len(o.Blobs)))
		for _, x := range o.Blobs {
			b = append(b, byte(x.Type))
			b = append(b, x.ID[:]...)
		}
	}
	return b
}

// DecodeManifest parses a manifest, rejecting anything out of bounds or
// trailing bytes.
func DecodeManifest(b []byte) (*Manifest, error) {
	if !bytes.HasPrefix(b, []byte(manifestMagic)) {
		return nil, fmt.Errorf("mcast: not a manifest")
	}
	b = b[len(manifestMagic):]
	if len(b) < 32 {
		return nil, fmt.Errorf("mcast: manifest truncated")
	}
	m := &Manifest{}
	copy(m.Want[:], b)
	b = b[32:]
	uv := func(max uint64, what string) (uint64, error) {
		v, n := binary.Uvarint(b)
		if n <= 0 || n != len(binary.AppendUvarint(nil, v)) {
			// non-canonical varints would give one manifest two encodings
			return 0, fmt.Errorf("mcast: manifest: bad %s", what)
		}
		if v > max {
			return 0, fmt.Errorf("mcast: manifest: %s %d exceeds %d", what, v, max)
		}
		b = b[n:]
		return v, nil
	}
	n, err := uv(maxObjects-1, "object count")
	if err != nil {
		return nil, err
	}
	// Each entry takes at least 2 bytes: a count beyond that is a lie
	// and must not make us allocate.
	if n > uint64(len(b)/2) {
		return nil, fmt.Errorf("mcast: manifest: %d objects in %d bytes", n, len(b))
	}
	m.Objects = make([]ObjectInfo, n)
	for i := range m.Objects {
		size, err := uv(maxObject, "object size")
		if err != nil {
			return nil, err
		}
		nb, err := uv(uint64(len(b)/33), "blob count")
		if err != nil {
			return nil, err
		}
		o := ObjectInfo{Size: uint32(size), Blobs: make([]Blob, nb)}
		for j := range o.Blobs {
			if len(b) < 33 {
				return nil, fmt.Errorf("mcast: manifest: object %d truncated", i+1)
			}
			t := store.Type(b[0])
			if t != store.TypeData && t != store.TypeTree {
				return nil, fmt.Errorf("mcast: manifest: object %d: blob type %d", i+1, t)
			}
			o.Blobs[j].Type = t
			copy(o.Blobs[j].ID[:], b[1:33])
			b = b[33:]
		}
		m.Objects[i] = o
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("mcast: manifest: %d trailing bytes", len(b))
	}
	return m, nil
}

// Content is what a session sends: the manifest and the objects, kept in
// an unlinked temporary file (not the heap: a sim serve is a long-lived
// daemon with a memory limit).
type Content struct {
	Manifest   Manifest
	ManifestB  []byte
	ManifestID chunk.ID
	Bytes      int64 // all objects' bytes, manifest included
	Blobs      int   // distinct blobs sent
	f          *os.File
	off        []int64 // per object 1..n: offset in f (index i-1)
}

// objectTarget is how many uncompressed bytes of stored frames go into
// one object: like the HTTP stream's frames, and big enough that the
// per-object header is noise.
const objectTarget = 4 << 20

// Prepare computes what receivers holding haveSets (one list of have
// commits per receiver; duplicates are fine) lack of commit want, takes
// the union, and encodes it as objects: trees first, then chunks in
// storage order, whole stored frames going out as stored. Trees are sent
// whole (no deltas): a receiver's base may not be every receiver's.
func Prepare(ctx context.Context, st *store.Store, pl *simsync.Planner, want chunk.ID, haveSets [][]chunk.ID) (*Content, error) {
	seenSet := map[string]bool{}
	// needers[id] has bit k set when distinct have set k lacks id (sets
	// beyond 64 share bit 63): objects are cut so that each holds blobs
	// of one class, and a receiver that has a class skips whole objects.
	needers := map[chunk.ID]uint64{}
	var trees, chunks []chunk.ID
	k := 0
	for _, hs := range haveSets {
		key := fmt.Sprint(hs)
		if seenSet[key] {
			continue
		}
		seenSet[key] = true
		bit := uint64(1) << min(k, 63)
		k++
		p, err := pl.Plan(want, hs)
		if err != nil {
			return nil, fmt.Errorf("plan %s: %w", want.Short(), err)
		}
		for _, t := range p.Trees {
			if needers[t.ID] == 0 {
				trees = append(trees, t.ID)
			}
			needers[t.ID] |= bit
		}
		for _, c := range p.Chunks {
			if needers[c] == 0 {
				chunks = append(chunks, c)
			}
			needers[c] |= bit
		}
	}
	f, err := os.CreateTemp("", "sim-mcast-*")
	if err != nil {
		return nil, err
	}
	os.Remove(f.Name()) // kept open; gone when closed
	c := &Content{Manifest: Manifest{Want: want}, f: f}
	var pos int64
	for _, ids := range [][]chunk.ID{trees, chunks} {
		classes := map[uint64][]chunk.ID{}
		var order []uint64
		for _, id := range ids {
			m := needers[id]
			if classes[m] == nil {
				order = append(order, m)
			}
			classes[m] = append(classes[m], id)
		}
		for _, m := range order {
			if err := c.encodeObjects(ctx, st, pl, classes[m], &pos); err != nil {
				f.Close()
				return nil, err
			}
		}
	}
	c.ManifestB = c.Manifest.Encode()
	c.ManifestID = chunk.Sum(c.ManifestB)
	if len(c.ManifestB) > maxObject {
		f.Close()
		return nil, fmt.Errorf("mcast: manifest of %d bytes exceeds %d: too many objects", len(c.ManifestB), maxObject)
	}
	c.Bytes = pos + int64(len(c.ManifestB))
	return c, nil
}

type located struct {
	id  chunk.ID
	loc store.Loc
}

// encodeObjects cuts ids (sorted by where they are stored) into objects
// at stored-frame boundaries, each about objectTarget bytes.
func (c *Content) encodeObjects(ctx context.Context, st *store.Store, pl *simsync.Planner, ids []chunk.ID, pos *int64) error {
	locs := make([]located, 0, len(ids))
	for _, id := range ids {
		loc, err := st.Lookup(id)
		if err != nil {
			return fmt.Errorf("blob %s: %w", id.Short(), err)
		}
		locs = append(locs, located{id, loc})
	}
	sort.SliceStable(locs, func(i, j int) bool {
		a, b := locs[i].loc, locs[j].loc
		if a.Pack != b.Pack {
			return bytes.Compare(a.Pack[:], b.Pack[:]) < 0
		}
		if a.FrameOff != b.FrameOff {
			return a.FrameOff < b.FrameOff
		}
		return a.Off < b.Off
	})
	var buf bytes.Buffer
	for i := 0; i < len(locs); {
		if err := ctx.Err(); err != nil {
			return err
		}
		j, size := i, 0
		for j < len(locs) && size < objectTarget {
			// a whole stored frame's blobs at a time
			k := j
			for k < len(locs) && locs[k].loc.Pack == locs[j].loc.Pack && locs[k].loc.FrameOff == locs[j].loc.FrameOff {
				size += int(locs[k].loc.Len)
				k++
			}
			j = k
		}
		batch := make([]chunk.ID, 0, j-i)
		info := ObjectInfo{}
		for _, l := range locs[i:j] {
			batch = append(batch, l.id)
			info.Blobs = append(info.Blobs, Blob{l.loc.Type, l.id})
		}
		i = j
		buf.Reset()
		enc, err := simsync.NewEncoder(&buf)
		if err != nil {
			return err
		}
		if err := pl.SendObjects(ctx, enc, batch); err != nil {
			return fmt.Errorf("encode object %d: %w", len(c.Manifest.Objects)+1, err)
		}
		if err := enc.Close(); err != nil {
			return err
		}
		if buf.Len() > maxObject {
			return fmt.Errorf("mcast: object %d of %d bytes exceeds %d", len(c.Manifest.Objects)+1, buf.Len(), maxObject)
		}
		if _, err := c.f.WriteAt(buf.Bytes(), *pos); err != nil {
			return fmt.Errorf("mcast spool: %w", err)
		}
		info.Size = uint32(buf.Len())
		c.off = append(c.off, *pos)
		*pos += int64(buf.Len())
		c.Manifest.Objects = append(c.Manifest.Objects, info)
		c.Blobs += len(info.Blobs)
	}
	return nil
}

// NumObjects counts objects, the manifest included.
func (c *Content) NumObjects() int { return len(c.Manifest.Objects) + 1 }

// Size is object i's length.
func (c *Content) Size(i int) int {
	if i == 0 {
		return len(c.ManifestB)
	}
	return int(c.Manifest.Objects[i-1].Size)
}

// Read returns object i's bytes into buf.
func (c *Content) Read(i int, buf []byte) ([]byte, error) {
	if i == 0 {
		return c.ManifestB, nil
	}
	n := c.Size(i)
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := c.f.ReadAt(buf, c.off[i-1]); err != nil {
		return nil, fmt.Errorf("mcast spool: object %d: %w", i, err)
	}
	return buf, nil
}

// Close releases the spool file.
func (c *Content) Close() error { return c.f.Close() }
