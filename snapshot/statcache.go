package snapshot

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/systemimager/sim/store"
)

// StatCache remembers, per path, the content of a regular file as it was
// when the file had a given (device, inode, size, mtime, ctime). Commit
// uses it to skip reading unchanged files (like git's index); Checkout
// uses the same structure to know what it wrote into a directory. A stale
// entry can only cost a re-read: ctime changes on every write, chmod,
// rename or xattr change, and cannot be set by user space.
type StatCache struct {
	m map[string]statEntry
}

type statEntry struct {
	dev, ino, size uint64
	mtime, ctime   int64 // nanoseconds
	content        []Extent
	// meta, in a checkout record, is metaHash of the node the entry was
	// made from: while ctime holds, the entry still has that metadata.
	meta uint64
}

// NewStatCache returns an empty cache.
func NewStatCache() *StatCache { return &StatCache{m: map[string]statEntry{}} }

// Len is the number of entries.
func (c *StatCache) Len() int {
	if c == nil {
		return 0
	}
	return len(c.m)
}

func keyOf(st *unix.Stat_t) statEntry {
	return statEntry{dev: st.Dev, ino: st.Ino, size: uint64(st.Size),
		mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano()}
}

// lookup returns the cached content of path if st matches.
func (c *StatCache) lookup(path string, st *unix.Stat_t) ([]Extent, bool) {
	e, ok := c.entry(path, st)
	return e.content, ok
}

// entry returns the entry of path if st still matches it.
func (c *StatCache) entry(path string, st *unix.Stat_t) (statEntry, bool) {
	if c == nil {
		return statEntry{}, false
	}
	e, ok := c.m[path]
	if !ok {
		return e, false
	}
	k := keyOf(st)
	if e.dev != k.dev || e.ino != k.ino || e.size != k.size || e.mtime != k.mtime || e.ctime != k.ctime {
		return e, false
	}
	return e, true
}

func (c *StatCache) add(path string, st *unix.Stat_t, content []Extent) {
	c.addMeta(path, st, content, 0)
}

func (c *StatCache) addMeta(path string, st *unix.Stat_t, content []Extent, meta uint64) {
	e := keyOf(st)
	e.content, e.meta = content, meta
	c.m[path] = e
}

const statCacheMagic = "SIMSTAT2"

// Save writes the cache to name atomically (zstd-compressed).
func (c *StatCache) Save(name string) error {
	var raw bytes.Buffer
	raw.WriteString(statCacheMagic)
	var b []byte
	for p, e := range c.m {
		b = b[:0]
		b = binary.AppendUvarint(b, uint64(len(p)))
		b = append(b, p...)
		for _, v := range []uint64{e.dev, e.ino, e.size, uint64(e.mtime), uint64(e.ctime), e.meta, uint64(len(e.content))} {
			b = binary.AppendUvarint(b, v)
		}
		for _, x := range e.content {
			b = binary.AppendUvarint(b, x.Len)
			b = append(b, x.ID[:]...)
		}
		raw.Write(b)
	}
	return store.WriteFileAtomic(name, 0o644, func(w io.Writer) error {
		zw, err := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest))
		if err != nil {
			return err
		}
		if _, err := zw.Write(raw.Bytes()); err != nil {
			zw.Close()
			return err
		}
		return zw.Close()
	})
}

// LoadStatCache reads a cache written by Save. A missing file is an empty
// cache; a damaged one is an error (callers may ignore it: it is a cache).
func LoadStatCache(name string) (*StatCache, error) {
	c := NewStatCache()
	f, err := os.Open(name)
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, err
	}
	defer f.Close()
	zr, err := zstd.NewReader(f, zstd.WithDecoderConcurrency(1))
	if err != nil {
		return c, err
	}
	defer zr.Close()
	r := bufio.NewReaderSize(zr, 1<<16)
	magic := make([]byte, len(statCacheMagic))
	if _, err := io.ReadFull(r, magic); err != nil || string(magic) != statCacheMagic {
		return NewStatCache(), fmt.Errorf("stat cache %s: bad header", name)
	}
	for {
		n, err := binary.ReadUvarint(r)
		if err == io.EOF {
			return c, nil
		}
		if err != nil || n > 1<<16 {
			return NewStatCache(), fmt.Errorf("stat cache %s: corrupt", name)
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(r, p); err != nil {
			return NewStatCache(), fmt.Errorf("stat cache %s: %w", name, err)
		}
		var v [7]uint64
		for i := range v {
			if v[i], err = binary.ReadUvarint(r); err != nil {
				return NewStatCache(), fmt.Errorf("stat cache %s: %w", name, err)
			}
		}
		if v[6] > 1<<24 {
			return NewStatCache(), fmt.Errorf("stat cache %s: corrupt", name)
		}
		e := statEntry{dev: v[0], ino: v[1], size: v[2], mtime: int64(v[3]), ctime: int64(v[4]), meta: v[5], content: make([]Extent, v[6])}
		if len(e.content) == 0 {
			e.content = nil
		}
		for i := range e.content {
			if e.content[i].Len, err = binary.ReadUvarint(r); err != nil {
				return NewStatCache(), fmt.Errorf("stat cache %s: %w", name, err)
			}
			if _, err := io.ReadFull(r, e.content[i].ID[:]); err != nil {
				return NewStatCache(), fmt.Errorf("stat cache %s: %w", name, err)
			}
		}
		c.m[string(p)] = e
	}
}
