package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/store/sign"
)

// CommitOptions tune Commit.
type CommitOptions struct {
	Image         string
	Message       string
	Author        string // default user@host
	Exclude       []string
	OneFileSystem bool
	Progress      *snapshot.Progress
	Warn          func(error)
	// Sign, if set, signs the commit before the image moves to it.
	Sign *sign.PrivateKey
}

// Commit snapshots src as the new head of opts.Image (created if new).
func Commit(ctx context.Context, st *store.Store, src string, opts CommitOptions) (chunk.ID, *store.Commit, error) {
	if err := store.CheckName("image", opts.Image); err != nil {
		return chunk.ID{}, nil, err
	}
	m, err := snapshot.NewMatcher(opts.Exclude)
	if err != nil {
		return chunk.ID{}, nil, err
	}
	head, err := st.ImageHead(opts.Image)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return chunk.ID{}, nil, err
	}
	cachePath := statCachePath(st, opts.Image)
	cache, err := snapshot.LoadStatCache(cachePath)
	if err != nil && opts.Warn != nil {
		opts.Warn(fmt.Errorf("ignoring stat cache: %w", err))
	}
	if head.IsZero() {
		cache = nil // a cache without its image proves nothing
	}
	start := time.Now()
	w := st.NewWriter()
	res, err := snapshot.Commit(ctx, w, st.Config().Chunker, src, snapshot.CommitOptions{
		Exclude: m, OneFileSystem: opts.OneFileSystem, Cache: cache, Progress: opts.Progress, Warn: opts.Warn,
		Workers: envInt("SIM_WORKERS")})
	if err != nil {
		w.Abort()
		return chunk.ID{}, nil, err
	}
	ws, err := w.Flush()
	if err != nil {
		return chunk.ID{}, nil, fmt.Errorf("commit %s: %w", src, err)
	}
	c := &store.Commit{Tree: res.Root, Time: start.UTC(), Author: opts.Author, Message: opts.Message, Image: opts.Image}
	if c.Author == "" {
		c.Author = store.DefaultAuthor()
	}
	c.Host, _ = os.Hostname()
	if !head.IsZero() {
		c.Parents = []chunk.ID{head}
	}
	c.Stats = res.Stats
	c.Stats.NewBlobs, c.Stats.NewBytes, c.Stats.StoredBytes = ws.Blobs, ws.Bytes, ws.StoredBytes
	id, err := st.PutCommit(c)
	if err != nil {
		return id, nil, err
	}
	if opts.Sign != nil {
		if err := SignCommit(st, id, *opts.Sign); err != nil {
			return id, nil, err
		}
	}
	op := "commit"
	if head.IsZero() {
		op = "create"
	}
	if err := st.SetImage(opts.Image, head, id, op, opts.Message); err != nil {
		return id, nil, err
	}
	// The cache is written after the ref moved: it describes the head.
	// When every file came from it, it is unchanged.
	if res.Stats.ReadFiles == 0 && res.Cache.Len() == cache.Len() {
		return id, c, nil
	}
	if err := res.Cache.Save(cachePath); err != nil && opts.Warn != nil {
		opts.Warn(fmt.Errorf("save stat cache: %w", err))
	}
	return id, c, nil
}

func statCachePath(st *store.Store, image string) string {
	return filepath.Join(st.Dir(), "cache", "stat-"+image)
}

// ForgetImage drops the caches of an image (it was removed or renamed).
func ForgetImage(st *store.Store, image string) {
	os.Remove(statCachePath(st, image))
}

// CheckoutOptions tune Checkout.
type CheckoutOptions struct {
	Exclude  []string
	Force    bool // overwrite a non-empty directory sim did not check out
	Progress *snapshot.Progress
	NoSync   bool
	// Trace is snapshot.CheckoutOptions.Trace: called after each change
	// to the directory.
	Trace func(op, rel string)
	// Source, if set, is where the trees and chunks are read (the store
	// through a snapshot.Cache); default the store.
	Source snapshot.Source
	// RequireSignature refuses a commit without a valid signature by a
	// key the store trusts, as the store's own policy does when set
	// (sim trust require on; ARCHITECTURE.md "Signatures").
	RequireSignature bool
	// Verify, when set, replaces the store's signature check
	// (st.CheckSigned with RequireSignature): the installer, sim update
	// and a node's checkout accept the node's own effective commit,
	// unsigned but made from signed ones (install.CheckSigned).
	Verify func(id chunk.ID) error
	// Commit, when set, is the commit to check out while the store does
	// not hold it yet: a fetch running beside the checkout brings its
	// objects through Source (node.Checkout). Complete must then be set.
	Commit *store.Commit
	// Complete, when set, is called once the tree is written, before the
	// record names the commit: it waits for the fetch and fails the
	// checkout if the commit is not whole in the store (the directory
	// stays Pending, as after an interruption).
	Complete func() error
}

// Record describes the last checkout into a directory.
type Record struct {
	Dir string `json:"dir"`
	// Commit is what the directory last became exactly (zero before its
	// first complete checkout).
	Commit chunk.ID  `json:"commit"`
	Time   time.Time `json:"time"`
	// Pending, when set, is a checkout that started and did not finish
	// (interrupted, or failed): the directory is partly Commit, partly
	// Pending, and ours to continue.
	Pending chunk.ID `json:"pending,omitzero"`
}

// ErrNotOurs is returned when checking out into a non-empty directory
// that no checkout from this store wrote.
var ErrNotOurs = errors.New("directory is not empty and was not checked out from this store")

func recordPaths(st *store.Store, dir string) (string, string) {
	h := chunk.Sum([]byte(dir)).String()[:24]
	base := filepath.Join(st.Dir(), "cache", "checkout-"+h)
	return base + ".json", base + ".stat"
}

// LastCheckout returns the record of the last checkout into dir, if any.
func LastCheckout(st *store.Store, dir string) (*Record, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	j, _ := recordPaths(st, abs)
	b, err := os.ReadFile(j)
	if err != nil {
		return nil, err
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// RecordCache is what the last checkout into dir wrote, as a stat cache
// (path → stat → content): a drift scan's fast path. A missing or damaged
// record is an empty cache (every file is then hashed).
func RecordCache(st *store.Store, dir string) *snapshot.StatCache {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return snapshot.NewStatCache()
	}
	_, spath := recordPaths(st, abs)
	c, err := snapshot.LoadStatCache(spath)
	if err != nil || c == nil {
		return snapshot.NewStatCache()
	}
	return c
}

// Checkout makes dir exactly the commit id's tree, in place.
func Checkout(ctx context.Context, st *store.Store, id chunk.ID, dir string, opts CheckoutOptions) (*snapshot.CheckoutStats, error) {
	c := opts.Commit
	if c == nil {
		var err error
		if c, err = st.Commit(id); err != nil {
			return nil, err
		}
	} else if opts.Complete == nil || opts.Source == nil {
		return nil, fmt.Errorf("checkout %s: a commit the store does not hold needs a Source and Complete", id.Short())
	}
	// The trust policy first: nothing of an unsigned commit is written.
	verify := opts.Verify
	if verify == nil {
		verify = func(id chunk.ID) error { _, err := st.CheckSigned(id, opts.RequireSignature); return err }
	}
	if err := verify(id); err != nil {
		return nil, fmt.Errorf("refusing to check out: %w", err)
	}
	m, err := snapshot.NewMatcher(opts.Exclude)
	if err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	protect, err := storeInside(st, abs)
	if err != nil {
		return nil, err
	}
	jpath, spath := recordPaths(st, abs)
	var rec *snapshot.StatCache
	prev := Record{Dir: abs}
	if b, err := os.ReadFile(jpath); err == nil {
		json.Unmarshal(b, &prev)               // damaged: a record without a commit
		rec, _ = snapshot.LoadStatCache(spath) // damaged: files are re-hashed
		if rec == nil {
			rec = snapshot.NewStatCache()
		}
	} else if !opts.Force {
		if empty, err := holdsOnly(abs, protect); err != nil {
			return nil, err
		} else if !empty {
			return nil, fmt.Errorf("%s: %w (use --force to make it the image anyway)", abs, ErrNotOurs)
		}
	}
	// Claim the directory before touching it: an interrupted checkout
	// leaves a directory this store continues, not a foreign one. The
	// old stat record stays valid for what was not rewritten (a
	// rewritten file has a new inode and times: it does not match and is
	// re-hashed).
	prev.Dir, prev.Pending, prev.Time = abs, id, time.Now().UTC()
	if err := writeRecord(jpath, prev); err != nil {
		return nil, err
	}
	var src snapshot.Source = st
	if opts.Source != nil {
		src = opts.Source
	}
	stats, newRec, err := snapshot.Checkout(ctx, src, c.Tree, abs, snapshot.CheckoutOptions{
		Exclude: m, Protect: protect, Record: rec, Params: st.Config().Chunker, Progress: opts.Progress, NoSync: opts.NoSync,
		Trace: opts.Trace})
	if err != nil {
		return nil, err
	}
	if opts.Complete != nil {
		if err := opts.Complete(); err != nil {
			return nil, err
		}
	}
	if err := newRec.Save(spath); err != nil {
		return stats, fmt.Errorf("save checkout record: %w", err)
	}
	if err := writeRecord(jpath, Record{Dir: abs, Commit: id, Time: time.Now().UTC()}); err != nil {
		return stats, err
	}
	return stats, nil
}

func writeRecord(path string, r Record) error {
	b, _ := json.Marshal(r)
	if err := store.WriteFileAtomic(path, 0o644, func(w io.Writer) error { _, err := w.Write(b); return err }); err != nil {
		return fmt.Errorf("save checkout record: %w", err)
	}
	return nil
}

// storeInside returns the store's path relative to dir when the store
// lies inside dir (a node's /var/lib/sim inside its root): a checkout must
// leave it alone, or it would remove the objects it is reading. The store
// itself, or a dir inside what the store keeps (its config, packs, index,
// tmp and cache), is refused; other directories beside those are not the
// store's (the installer stages overrides there).
func storeInside(st *store.Store, dir string) ([]string, error) {
	sd, err := realPath(st.Dir())
	if err != nil {
		return nil, err
	}
	d, err := realPath(dir)
	if err != nil {
		return nil, err
	}
	if d == sd {
		return nil, fmt.Errorf("%s is the store: check out somewhere else", dir)
	}
	for _, own := range store.Owned {
		if o := filepath.Join(sd, own); d == o || strings.HasPrefix(d, o+"/") {
			return nil, fmt.Errorf("%s is inside the store %s: check out somewhere else", dir, st.Dir())
		}
	}
	if d == "/" {
		return []string{strings.TrimPrefix(sd, "/")}, nil
	}
	if rel, ok := strings.CutPrefix(sd, d+"/"); ok {
		return []string{rel}, nil
	}
	return nil, nil
}

// realPath is p absolute with symlinks resolved, as far as p exists (a
// checkout target may not exist yet).
func realPath(p string) (string, error) {
	p, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	rest := ""
	for cur := p; ; {
		if r, err := filepath.EvalSymlinks(cur); err == nil {
			return filepath.Join(r, rest), nil
		}
		parent := filepath.Dir(cur)
		if parent == cur {
			return p, nil
		}
		rest = filepath.Join(filepath.Base(cur), rest)
		cur = parent
	}
}

// holdsOnly says whether dir is missing, empty, or holds nothing but the
// directories leading to the protected paths (a new node's root, whose
// store at var/lib/sim was created first).
func holdsOnly(dir string, protect []string) (bool, error) {
	for _, p := range protect {
		first, rest, _ := strings.Cut(p, "/")
		f, err := os.Open(dir)
		if errors.Is(err, os.ErrNotExist) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
		names, err := f.Readdirnames(3)
		f.Close()
		if err != nil && err != io.EOF {
			return false, err
		}
		if len(names) == 1 && names[0] == first {
			if rest == "" {
				return true, nil
			}
			return holdsOnly(filepath.Join(dir, first), []string{rest})
		}
	}
	return isEmptyOrMissing(dir)
}

func isEmptyOrMissing(dir string) (bool, error) {
	f, err := os.Open(dir)
	if errors.Is(err, os.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	_, err = f.Readdirnames(1)
	if err == io.EOF {
		return true, nil
	}
	return false, err
}

func dropStatCaches(st *store.Store) {
	ents, _ := os.ReadDir(filepath.Join(st.Dir(), "cache"))
	for _, e := range ents {
		if len(e.Name()) > 5 && e.Name()[:5] == "stat-" {
			os.Remove(filepath.Join(st.Dir(), "cache", e.Name()))
		}
	}
}

// envInt reads a tuning knob from the environment (0 when unset).
func envInt(name string) int {
	n, _ := strconv.Atoi(os.Getenv(name))
	return n
}

// MoveRecord re-keys the checkout record of directory from as directory
// to: an installer checks a root out under a mount point, and the node
// then sees it as "/". The record is a cache, so a mismatch later only
// costs re-hashing.
func MoveRecord(st *store.Store, from, to string) error {
	var err error
	if from, err = filepath.Abs(from); err != nil {
		return err
	}
	if to, err = filepath.Abs(to); err != nil {
		return err
	}
	if from == to {
		return nil
	}
	fj, fs := recordPaths(st, from)
	tj, ts := recordPaths(st, to)
	b, err := os.ReadFile(fj)
	if err != nil {
		return fmt.Errorf("checkout record of %s: %w", from, err)
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return fmt.Errorf("checkout record of %s: %w", from, err)
	}
	r.Dir = to
	nb, _ := json.Marshal(r)
	if err := os.Rename(fs, ts); err != nil {
		return fmt.Errorf("checkout record of %s: %w", from, err)
	}
	if err := store.WriteFileAtomic(tj, 0o644, func(w io.Writer) error { _, err := w.Write(nb); return err }); err != nil {
		return err
	}
	return os.Remove(fj)
}

// SignCommit signs commit id with k and stores the signature beside it.
func SignCommit(st *store.Store, id chunk.ID, k sign.PrivateKey) error {
	raw, err := st.CommitRaw(id)
	if err != nil {
		return err
	}
	return st.PutSignature(id, k.Sign(raw))
}
