package catalog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/store"
)

// Image names of the catalog's documents.
const (
	NodesImage     = "sim@nodes"
	layoutSuffix   = "@layout"
	overrideSuffix = "@override"
	scriptSuffix   = "@script"
	LayoutFile     = "layout"
	ScriptFile     = "script"
)

// LayoutImage is where IMAGE's layout lives.
func LayoutImage(image string) string { return image + layoutSuffix }

// GroupLayoutImage and NodeLayoutImage are where the layout of group G
// and of node N live (sim layout set --group G / --node N): a node's own
// layout wins over its groups' (the first of its groups that has one),
// which win over its image's.
func GroupLayoutImage(g string) string { return "sim@group+" + g + layoutSuffix }
func NodeLayoutImage(n string) string  { return "sim@node+" + n + layoutSuffix }

// OverrideImage is where override NAME lives.
func OverrideImage(name string) string { return name + overrideSuffix }

// ScriptImage is where script NAME lives.
func ScriptImage(name string) string { return name + scriptSuffix }

// IsSpecial says whether an image name is a catalog document rather than
// a system image.
func IsSpecial(image string) bool {
	return image == NodesImage || strings.HasSuffix(image, layoutSuffix) ||
		strings.HasSuffix(image, overrideSuffix) || strings.HasSuffix(image, scriptSuffix)
}

// CommitFiles makes files (slash-separated relative path → content) the
// whole tree of the next commit on image. The tree is built in memory
// (snapshot.FilesTree with snapshot.DocMeta: files 0644, directories
// 0755, owned by root, time 0), so the same documents always give the
// same tree; when it is the tree the image already has, no commit is
// made and the head is returned.
func CommitFiles(ctx context.Context, st *store.Store, image string, files map[string][]byte, msg string) (chunk.ID, error) {
	if err := store.CheckName("image", image); err != nil {
		return chunk.ID{}, err
	}
	if err := ctx.Err(); err != nil {
		return chunk.ID{}, err
	}
	old, err := head(st, image)
	if err != nil {
		return chunk.ID{}, err
	}
	w := st.NewWriter()
	root, stats, err := snapshot.FilesTree(w, st.Config().Chunker, files, snapshot.DocMeta)
	if err != nil {
		w.Abort()
		return chunk.ID{}, fmt.Errorf("catalog %s: %w", image, err)
	}
	ws, err := w.Flush()
	if err != nil {
		return chunk.ID{}, fmt.Errorf("commit %s: %w", image, err)
	}
	if !old.IsZero() {
		if oc, err := st.Commit(old); err == nil && oc.Tree == root {
			return old, nil
		}
	}
	c := &store.Commit{Tree: root, Time: time.Now().UTC(), Author: store.DefaultAuthor(), Message: msg, Image: image, Stats: stats}
	c.Host, _ = os.Hostname()
	c.Stats.NewBlobs, c.Stats.NewBytes, c.Stats.StoredBytes = ws.Blobs, ws.Bytes, ws.StoredBytes
	op := "create"
	if !old.IsZero() {
		c.Parents, op = []chunk.ID{old}, "commit"
	}
	id, err := st.PutCommit(c)
	if err != nil {
		return id, err
	}
	if err := st.SetImage(image, old, id, op, msg); err != nil {
		return id, fmt.Errorf("commit %s: %w", image, err)
	}
	return id, nil
}

// ReadFile reads one regular file of commit id's tree.
func ReadFile(st *store.Store, id chunk.ID, p string) ([]byte, error) {
	c, err := st.Commit(id)
	if err != nil {
		return nil, err
	}
	n, err := snapshot.Lookup(st, c.Tree, p)
	if err != nil {
		return nil, fmt.Errorf("%s in %s: %w", p, id.Short(), err)
	}
	var b bytes.Buffer
	if err := snapshot.WriteContent(st, n, &b); err != nil {
		return nil, fmt.Errorf("%s in %s: %w", p, id.Short(), err)
	}
	return b.Bytes(), nil
}

// ReadAll reads every regular file of commit id's tree.
func ReadAll(st *store.Store, id chunk.ID) (map[string][]byte, error) {
	c, err := st.Commit(id)
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	err = snapshot.Walk(st, c.Tree, func(p string, n *snapshot.Node) error {
		if n.Kind != snapshot.KindFile {
			return nil
		}
		var b bytes.Buffer
		if err := snapshot.WriteContent(st, n, &b); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		out[strings.TrimPrefix(p, "/")] = b.Bytes()
		return nil
	})
	return out, err
}

// head returns an image's head, or the zero id when it does not exist.
func head(st *store.Store, image string) (chunk.ID, error) {
	id, err := st.ImageHead(image)
	if errors.Is(err, store.ErrNotFound) {
		return chunk.ID{}, nil
	}
	return id, err
}

// ErrNoLayout says an image has no layout yet.
var ErrNoLayout = errors.New("no layout set (sim layout set IMAGE FILE)")

// LayoutFor finds the layout commit for ref: ref itself when it is a
// commit of an IMAGE@layout image, else the layout of the image ref's
// commit belongs to that was current while that commit was the image's
// head (the layout's head for the image's head: see layoutAt).
func LayoutFor(st *store.Store, ref string) (chunk.ID, error) {
	id, err := st.Resolve(ref)
	if err != nil {
		return id, err
	}
	c, err := st.Commit(id)
	if err != nil {
		return id, err
	}
	if strings.HasSuffix(c.Image, layoutSuffix) {
		return id, nil
	}
	image := c.Image
	if image == "" {
		image = ref
	}
	lid, err := head(st, LayoutImage(image))
	if err != nil {
		return lid, err
	}
	if lid.IsZero() {
		return lid, fmt.Errorf("image %s: %w", image, ErrNoLayout)
	}
	return layoutAt(st, image, id, lid)
}

// maxWalk bounds the history walks of layoutAt.
const maxWalk = 100000

// layoutAt is the layout commit that was current while commit id was
// image's head: the newest commit of the layout history (from lid) made
// no later than id's successor on the image's first-parent chain; the
// layout's first commit when all are later (the layout was set after);
// lid itself when id is the head, or not on the chain (a rolled-back
// head: its time says nothing).
func layoutAt(st *store.Store, image string, id, lid chunk.ID) (chunk.ID, error) {
	h, err := head(st, image)
	if err != nil || h.IsZero() || h == id {
		return lid, err
	}
	var until time.Time
	found := false
	for cur, n := h, 0; !cur.IsZero() && n < maxWalk; n++ {
		c, err := st.Commit(cur)
		if err != nil {
			return lid, err
		}
		if len(c.Parents) == 0 {
			break
		}
		if c.Parents[0] == id {
			until, found = c.Time, true
			break
		}
		cur = c.Parents[0]
	}
	if !found {
		return lid, nil
	}
	for cur, n := lid, 0; n < maxWalk; n++ {
		c, err := st.Commit(cur)
		if err != nil {
			return lid, err
		}
		if !c.Time.After(until) || len(c.Parents) == 0 {
			return cur, nil
		}
		cur = c.Parents[0]
	}
	return lid, nil
}

// LayoutForNode is the layout commit node n installs image ref with:
// the head of n's own layout image, else of the first of its groups'
// that exists, else LayoutFor(ref). from says which it was ("node N",
// "group G" or "image I").
func LayoutForNode(st *store.Store, n *Node, ref string) (id chunk.ID, from string, err error) {
	if n != nil {
		if id, err = head(st, NodeLayoutImage(n.Name)); err != nil || !id.IsZero() {
			return id, "node " + n.Name, err
		}
		for _, g := range n.Groups {
			if id, err = head(st, GroupLayoutImage(g)); err != nil || !id.IsZero() {
				return id, "group " + g, err
			}
		}
	}
	id, err = LayoutFor(st, ref)
	return id, "image " + ref, err
}

// sortedKeys is used for stable listings.
func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
