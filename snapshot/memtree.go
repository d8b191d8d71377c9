package snapshot

import (
	"bytes"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store"
)

// FileMeta is the metadata FilesTree gives every entry.
type FileMeta struct {
	FileMode, DirMode uint32 // permission bits
	UID, GID          uint32
	MtimeSec          int64
}

// DocMeta is what the catalog's documents get: root-owned, 0644 files in
// 0755 directories, all at time 0, so that the same documents always
// make the same tree.
var DocMeta = FileMeta{FileMode: 0o644, DirMode: 0o755}

// FilesTree stores a tree of regular files given in memory (slash-
// separated relative path → content) through sv, every entry with meta,
// and returns its root and counts. It touches no filesystem: the same
// files and meta always give the same root id. Content is cut with p, as
// a commit of the same files from disk would be.
func FilesTree(sv Saver, p chunk.Params, files map[string][]byte, meta FileMeta) (chunk.ID, store.CommitStats, error) {
	var stats store.CommitStats
	type dir struct {
		files map[string][]byte
		dirs  map[string]*dir
	}
	newDir := func() *dir { return &dir{files: map[string][]byte{}, dirs: map[string]*dir{}} }
	root := newDir()
	for p, b := range files {
		if p == "" || path.Clean(p) != p || strings.HasPrefix(p, "/") || p == "." || p == ".." || strings.HasPrefix(p, "../") {
			return chunk.ID{}, stats, fmt.Errorf("bad path %q", p)
		}
		parts := strings.Split(p, "/")
		d := root
		for _, c := range parts[:len(parts)-1] {
			if _, clash := d.files[c]; clash {
				return chunk.ID{}, stats, fmt.Errorf("%q: %s is a file", p, c)
			}
			if d.dirs[c] == nil {
				d.dirs[c] = newDir()
			}
			d = d.dirs[c]
		}
		name := parts[len(parts)-1]
		if d.dirs[name] != nil {
			return chunk.ID{}, stats, fmt.Errorf("%q is a directory", p)
		}
		d.files[name] = b
	}
	ck := chunk.NewChunker(p)
	base := Node{UID: meta.UID, GID: meta.GID, MtimeSec: meta.MtimeSec}
	var store1 func(d *dir) (chunk.ID, error)
	store1 = func(d *dir) (chunk.ID, error) {
		t := &Tree{Self: base}
		t.Self.Kind, t.Self.Mode = KindDir, meta.DirMode
		for name, b := range d.files {
			n := base
			n.Name, n.Kind, n.Mode, n.Size = name, KindFile, meta.FileMode, uint64(len(b))
			ck.Reset(bytes.NewReader(b))
			for {
				c, err := ck.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					return chunk.ID{}, err
				}
				id := chunk.Sum(c)
				if _, err := sv.Put(store.TypeData, id, c); err != nil {
					return chunk.ID{}, err
				}
				n.Content = append(n.Content, Extent{ID: id, Len: uint64(len(c))})
				stats.Chunks++
			}
			stats.Files++
			stats.Bytes += int64(len(b))
			t.Entries = append(t.Entries, n)
		}
		for name, sub := range d.dirs {
			id, err := store1(sub)
			if err != nil {
				return chunk.ID{}, err
			}
			t.Entries = append(t.Entries, Node{Name: name, Kind: KindDir, Subtree: id})
		}
		sort.Slice(t.Entries, func(i, j int) bool { return t.Entries[i].Name < t.Entries[j].Name })
		stats.Dirs++
		b := t.Encode()
		id := chunk.Sum(b)
		_, err := sv.Put(store.TypeTree, id, b)
		return id, err
	}
	id, err := store1(root)
	return id, stats, err
}
