package install

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/store/sign"
)

// EffectiveRef is the image a node store keeps its effective commit in
// (its reflog holds the ones before), so a gc keeps them.
const EffectiveRef = "sim@effective"

// Effective returns the commit a node checks out for image commit id: the
// image's tree with the overrides laid over it in order (snapshot.Overlay,
// SystemImager's override semantics) and, when hostname is set and the
// image has an /etc/hosts, that file with the node's 127.0.1.1 line
// (HostsWith). Every commit must be in st. With nothing to change it is id
// itself; otherwise a shallow commit in st whose parents are id and the
// overrides, made deterministically (the same inputs give the same
// commit), and EffectiveRef is moved to it.
func Effective(st *store.Store, id chunk.ID, overrides []Doc, hostname string) (chunk.ID, error) {
	img, err := st.Commit(id)
	if err != nil {
		return chunk.ID{}, fmt.Errorf("effective tree: %w", err)
	}
	ovs := make([]chunk.ID, len(overrides))
	names := make([]string, len(overrides))
	for i, o := range overrides {
		ovs[i], names[i] = o.Commit, o.Name
	}
	tree, err := effectiveTree(st, img, ovs, names, hostname)
	if err != nil {
		return chunk.ID{}, err
	}
	if tree == img.Tree {
		return id, nil
	}
	msg := fmt.Sprintf("%s %s", img.Image, id.Short())
	if len(names) > 0 {
		msg += " + overrides " + strings.Join(names, ", ")
	}
	if hostname != "" {
		msg += " for " + hostname
	}
	c := &store.Commit{Tree: tree, Parents: append([]chunk.ID{id}, ovs...), Time: img.Time, Author: effectiveAuthor, Host: hostname,
		Message: msg, Image: img.Image, Stats: img.Stats}
	eid, err := st.PutCommitShallow(c)
	if err != nil {
		return chunk.ID{}, fmt.Errorf("effective commit: %w", err)
	}
	old, err := st.ImageHead(EffectiveRef)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return chunk.ID{}, err
	}
	if old != eid {
		if err := st.SetImage(EffectiveRef, old, eid, "effective", msg); err != nil {
			return chunk.ID{}, err
		}
	}
	return eid, nil
}

// effectiveAuthor is the author of every effective commit.
const effectiveAuthor = "sim"

// effectiveTree lays the override commits (names for errors) over img's
// tree in order and then the hostname's /etc/hosts line, storing what is
// new in st.
func effectiveTree(st *store.Store, img *store.Commit, overrides []chunk.ID, names []string, hostname string) (chunk.ID, error) {
	w := st.NewWriter()
	src := &pending{w: w, st: st}
	tree := img.Tree
	for i, o := range overrides {
		oc, err := st.Commit(o)
		if err != nil {
			w.Abort()
			return chunk.ID{}, fmt.Errorf("override %s: %w", names[i], err)
		}
		if tree, err = snapshot.Overlay(src, src, tree, oc.Tree); err != nil {
			w.Abort()
			return chunk.ID{}, fmt.Errorf("override %s: %w", names[i], err)
		}
	}
	if hostname != "" {
		var err error
		if tree, err = withHosts(src, st.Config().Chunker, tree, hostname, img.Time); err != nil {
			w.Abort()
			return chunk.ID{}, err
		}
	}
	if _, err := w.Flush(); err != nil {
		return chunk.ID{}, fmt.Errorf("effective tree: %w", err)
	}
	return tree, nil
}

// CheckSigned is the trust check for what a node checks out (client.
// CheckoutOptions.Verify): st.CheckSigned, except that an unsigned
// effective commit passes when every commit it was made from (its
// parents: the image, then the overrides) passes and laying them over
// each other again gives its tree. The node makes that commit itself
// from what it verified, so no one can sign it; recomputing the tree
// means a commit merely dressed as one (pushed by a server) still fails.
func CheckSigned(st *store.Store, id chunk.ID, require bool) error {
	_, err := st.CheckSigned(id, require)
	if err == nil || !errors.Is(err, sign.ErrUnsigned) {
		return err
	}
	c, cerr := st.Commit(id)
	if cerr != nil || c.Author != effectiveAuthor || len(c.Parents) == 0 {
		return err
	}
	for _, p := range c.Parents {
		if _, perr := st.CheckSigned(p, require); perr != nil {
			return fmt.Errorf("effective commit %s: made from %s: %w", id.Short(), p.Short(), perr)
		}
	}
	img, ierr := st.Commit(c.Parents[0])
	if ierr != nil {
		return fmt.Errorf("effective commit %s: %w", id.Short(), ierr)
	}
	names := make([]string, len(c.Parents)-1)
	for i, p := range c.Parents[1:] {
		names[i] = p.Short()
	}
	tree, terr := effectiveTree(st, img, c.Parents[1:], names, c.Host)
	if terr != nil {
		return fmt.Errorf("effective commit %s: %w", id.Short(), terr)
	}
	if tree != c.Tree {
		return fmt.Errorf("%w (and its tree is not what its signed parents give)", err)
	}
	return nil
}

// pending stores through a writer and reads from its store, and the trees
// the writer holds but may not have flushed yet from memory.
type pending struct {
	w   *store.Writer
	st  *store.Store
	mem snapshot.MemSaver
}

func (p *pending) Put(t store.Type, id chunk.ID, b []byte) (bool, error) {
	if t == store.TypeTree {
		p.mem.Put(t, id, b)
	}
	return p.w.Put(t, id, b)
}

func (p *pending) Get(id chunk.ID) ([]byte, error) {
	if b, ok := p.mem.Trees[id]; ok {
		return b, nil
	}
	return p.st.Get(id)
}

// withHosts lays /etc/hosts with hostname's line over tree, keeping the
// image's file metadata; one the image lacks is made as the installer
// makes it (HostsWith of nothing: localhost and the line), root's, 0644,
// with the image's time. A tree whose file has the line already, or that
// has something else than a file there, is returned as it is.
func withHosts(src *pending, p chunk.Params, tree chunk.ID, hostname string, t time.Time) (chunk.ID, error) {
	var old bytes.Buffer
	n, err := snapshot.Lookup(src, tree, "/"+HostsFile)
	switch {
	case err != nil:
		if _, derr := snapshot.Lookup(src, tree, "/etc"); derr != nil {
			return tree, nil // no /etc: nothing to name the host in
		}
		n = &snapshot.Node{Kind: snapshot.KindFile, Mode: 0o644, MtimeSec: t.Unix(), MtimeNsec: uint32(t.Nanosecond())}
	case n.Kind != snapshot.KindFile:
		return tree, nil
	default:
		if err := snapshot.WriteContent(src, n, &old); err != nil {
			return tree, fmt.Errorf("/%s: %w", HostsFile, err)
		}
	}
	content := HostsWith(old.Bytes(), hostname)
	if bytes.Equal(content, old.Bytes()) {
		return tree, nil
	}
	f := *n
	f.Size, f.Content = uint64(len(content)), nil
	ck := chunk.NewChunker(p)
	ck.Reset(bytes.NewReader(content))
	for {
		c, err := ck.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return tree, err
		}
		id := chunk.Sum(c)
		if _, err := src.Put(store.TypeData, id, c); err != nil {
			return tree, err
		}
		f.Content = append(f.Content, snapshot.Extent{ID: id, Len: uint64(len(c))})
	}
	layer, err := snapshot.FileLayer(src, HostsFile, f)
	if err != nil {
		return tree, err
	}
	return snapshot.Overlay(src, src, tree, layer)
}
