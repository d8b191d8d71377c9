package store

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/systemimager/sim/store/s3"
)

// Per-node documents in the bucket (ARCHITECTURE.md "Fleet on S3"): what
// the frontends of an S3 store tell each other of the nodes they hear
// from, so any frontend shows the whole fleet. One object per report,
// keyed by the report's time so that a LIST alone tells which is newest:
//
//	fleet/<kind>/<node, path-escaped>/<^time ns, 16 hex>-<writer id>
//
// kind is "nodes" (a fleet.NodeState per agent) or "installs" (an
// installer's last status). The newest of a node wins; a writer deletes
// its own older entry of a node once its newer one is in, and any reader
// deletes entries older than a node's newest by more than
// NodeDocLeftover (left by a frontend that died between the two).

// NodeDocLeftover is how much older than a node's newest entry another
// writer's entry must be before any frontend deletes it (its own writer
// normally has, at once).
const NodeDocLeftover = 10 * time.Minute

// NodeDoc is one node's newest document in the bucket.
type NodeDoc struct {
	Node string
	Time time.Time // the time in its key
	Data []byte
}

// NodeDocs is one kind of per-node documents of an S3 store, with the
// newest of each node as last loaded (so a Load GETs only what changed).
// It is safe for concurrent use.
type NodeDocs struct {
	st   *Store
	kind string

	mu       sync.Mutex
	docs     map[string]NodeDoc // node → its newest document loaded or written
	keys     map[string]string  // node → that document's key
	mine     map[string]string  // node → key of this writer's last entry
	lastList time.Time
}

// NodeDocs is the per-node documents of kind ("nodes", "installs") of an
// S3 store (one value per Store and kind), or nil for a local store, whose
// one server is the only one to hear its nodes.
func (s *Store) NodeDocs(kind string) *NodeDocs {
	if s.rem == nil {
		return nil
	}
	s.docsMu.Lock()
	defer s.docsMu.Unlock()
	if d := s.nodeDocs[kind]; d != nil {
		return d
	}
	if s.nodeDocs == nil {
		s.nodeDocs = map[string]*NodeDocs{}
	}
	d := &NodeDocs{st: s, kind: kind, docs: map[string]NodeDoc{}, keys: map[string]string{}, mine: map[string]string{}}
	s.nodeDocs[kind] = d
	return d
}

func (d *NodeDocs) prefix() string { return "fleet/" + d.kind + "/" }

func (d *NodeDocs) key(node string, t time.Time) string {
	return fmt.Sprintf("%s%s/%016x-%s", d.prefix(), url.PathEscape(node), ^uint64(t.UnixNano()), d.st.rem.writer)
}

// nodeEntry is one listed entry.
type nodeEntry struct {
	key, node, writer string
	time              time.Time
}

func (d *NodeDocs) parse(key string) (nodeEntry, error) {
	rest := strings.TrimPrefix(key, d.prefix())
	esc, leaf, ok := strings.Cut(rest, "/")
	if !ok || esc == "" {
		return nodeEntry{}, fmt.Errorf("%s: not fleet/%s/NODE/TIME-WRITER", key, d.kind)
	}
	node, err := url.PathUnescape(esc)
	if err != nil {
		return nodeEntry{}, fmt.Errorf("%s: node: %w", key, err)
	}
	ts, writer, ok := strings.Cut(leaf, "-")
	inv, err := strconv.ParseUint(ts, 16, 64)
	if !ok || err != nil || len(ts) != 16 || writer == "" {
		return nodeEntry{}, fmt.Errorf("%s: want <16 hex>-<writer> after the node", key)
	}
	return nodeEntry{key: key, node: node, writer: writer, time: time.Unix(0, int64(^inv)).UTC()}, nil
}

// Put writes node's document stamped t (the time the newest-wins merge
// goes by) and then deletes this writer's previous entry of the node, so
// that the node has an entry at every moment.
func (d *NodeDocs) Put(node string, t time.Time, data []byte) error {
	if node == "" {
		return errors.New("fleet document: no node name")
	}
	k := d.key(node, t)
	ctx, cancel := remoteCtx()
	defer cancel()
	if err := d.st.rem.c.Put(ctx, k, data); err != nil {
		return fmt.Errorf("fleet %s of %s: %w", d.kind, node, err)
	}
	d.mu.Lock()
	old := d.mine[node]
	d.mine[node] = k
	if cur, ok := d.docs[node]; !ok || !cur.Time.After(t) {
		d.docs[node], d.keys[node] = NodeDoc{Node: node, Time: t, Data: data}, k
	}
	d.mu.Unlock()
	if old != "" && old != k {
		if err := d.st.rem.c.Delete(ctx, old); err != nil {
			return fmt.Errorf("fleet %s of %s: delete the previous entry: %w", d.kind, node, err)
		}
	}
	return nil
}

// Load is the newest document of every node: one LIST (none when the
// last was less than maxAge ago) and a GET of each node whose newest
// entry is not the one loaded already. A node's entry deleted between the
// LIST and its GET (a newer one replaced it) keeps the document loaded
// before, until the next Load.
func (d *NodeDocs) Load(maxAge time.Duration) ([]NodeDoc, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if maxAge <= 0 || time.Since(d.lastList) >= maxAge {
		if err := d.list(); err != nil {
			return d.all(), err
		}
	}
	return d.all(), nil
}

func (d *NodeDocs) all() []NodeDoc {
	out := make([]NodeDoc, 0, len(d.docs))
	for _, doc := range d.docs {
		out = append(out, doc)
	}
	return out
}

// list refreshes d.docs from the bucket; d.mu is held.
func (d *NodeDocs) list() error {
	ctx, cancel := remoteCtx()
	defer cancel()
	objs, err := d.st.rem.c.List(ctx, d.prefix(), 0)
	if err != nil {
		return fmt.Errorf("fleet %s: %w", d.kind, err)
	}
	newest := map[string]nodeEntry{}
	var stale []nodeEntry
	for _, o := range objs {
		e, err := d.parse(o.Key)
		if err != nil {
			continue // not one of ours: sim writes nothing else here
		}
		n, ok := newest[e.node]
		switch {
		case !ok:
			newest[e.node] = e
		case e.time.After(n.time) || (e.time.Equal(n.time) && e.key > n.key):
			stale = append(stale, n)
			newest[e.node] = e
		default:
			stale = append(stale, e)
		}
	}
	for node, e := range newest {
		if d.keys[node] == e.key {
			continue
		}
		if cur, ok := d.docs[node]; ok && cur.Time.After(e.time) {
			continue // this writer's newer one is not listed yet
		}
		b, err := d.st.rem.c.Get(ctx, e.key)
		if errors.Is(err, s3.ErrNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("fleet %s of %s: %w", d.kind, node, err)
		}
		d.docs[node], d.keys[node] = NodeDoc{Node: node, Time: e.time, Data: b}, e.key
	}
	d.lastList = time.Now()
	// Leftovers: this writer's own older entries (its Put deletes them,
	// unless it failed there), and anyone's long superseded.
	for _, e := range stale {
		if e.writer == d.st.rem.writer || newest[e.node].time.Sub(e.time) > NodeDocLeftover {
			if err := d.st.rem.c.Delete(ctx, e.key); err != nil {
				return fmt.Errorf("fleet %s of %s: delete a superseded entry: %w", d.kind, e.node, err)
			}
		}
	}
	return nil
}
