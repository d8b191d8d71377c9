package snapshot

import (
	"container/list"
	gosync "sync"

	"github.com/systemimager/sim/chunk"
)

// Cache is a Source that keeps what it read from Src, up to Max bytes
// (the least recently used go first). A node's agent checks out trees
// that are nearly all the ones it checked out last time: through a Cache,
// an update reads from its store only what changed. Safe for concurrent
// use; the bytes it returns are shared and must not be modified (as
// Source says).
type Cache struct {
	Src Source
	Max int

	mu   gosync.Mutex
	m    map[chunk.ID]*list.Element
	ll   list.List
	size int
}

type cached struct {
	id chunk.ID
	b  []byte
}

// Get implements Source.
func (c *Cache) Get(id chunk.ID) ([]byte, error) {
	c.mu.Lock()
	if e, ok := c.m[id]; ok {
		c.ll.MoveToFront(e)
		b := e.Value.(*cached).b
		c.mu.Unlock()
		return b, nil
	}
	c.mu.Unlock()
	b, err := c.Src.Get(id)
	if err != nil || len(b) > c.Max/16 {
		return b, err // a big chunk would push out hundreds of trees
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[chunk.ID]*list.Element{}
	}
	if _, ok := c.m[id]; !ok {
		c.m[id] = c.ll.PushFront(&cached{id, b})
		c.size += len(b)
		for c.size > c.Max && c.ll.Len() > 0 {
			old := c.ll.Remove(c.ll.Back()).(*cached)
			delete(c.m, old.id)
			c.size -= len(old.b)
		}
	}
	return b, nil
}
