package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store/s3"
)

// Refs on S3: every image and tag is an append-only log of refEntry
// objects, refs/{images,tags}/<name>/<^seq> (seq from 1, the key holds its
// bitwise complement in 16 hex digits so LIST returns the newest first).
// Moving a ref is creating the next key once (`If-None-Match: *`): the
// only compare-and-swap radosgw 16 gets right. The log is the reflog; a
// deleted ref's newest entry is a tombstone (op "delete", zero commit).

type refEntry struct {
	Seq     uint64    `json:"seq"`
	Commit  chunk.ID  `json:"commit"` // zero: deleted
	Old     chunk.ID  `json:"old"`
	Op      string    `json:"op"`
	Message string    `json:"message,omitempty"`
	Time    time.Time `json:"time"`
	Nonce   string    `json:"nonce"` // who wrote it, to settle an unknown outcome
	// A rename is an entry "rename" From the old name in the new name's
	// log, then a tombstone To the new name in the old one's: the reflog
	// of the new name continues the old one's.
	From string `json:"from,omitempty"`
	To   string `json:"to,omitempty"`
}

func refLogPrefix(kind, name string) string { return "refs/" + kind + "/" + name + "/" }

func refKey(kind, name string, seq uint64) string {
	return fmt.Sprintf("%s%016x", refLogPrefix(kind, name), ^seq)
}

// refNewest returns the newest entry of a ref's log (ok false: no log).
func (s *Store) refNewest(ctx context.Context, kind, name string) (refEntry, bool, error) {
	var e refEntry
	for try := 0; try < 5; try++ {
		objs, err := s.rem.c.List(ctx, refLogPrefix(kind, name), 1)
		if err != nil || len(objs) == 0 {
			return e, false, err
		}
		b, err := s.rem.c.Get(ctx, objs[0].Key)
		if errors.Is(err, s3.ErrNotFound) {
			continue // expired under us: list again
		}
		if err != nil {
			return e, false, err
		}
		if err := json.Unmarshal(b, &e); err != nil {
			return e, false, fmt.Errorf("ref log entry %s: %w", objs[0].Key, err)
		}
		return e, true, nil
	}
	return e, false, fmt.Errorf("ref %s %s: its log keeps changing under a read", kind, name)
}

func (s *Store) refLog(ctx context.Context, kind, name string) ([]refEntry, error) {
	objs, err := s.rem.c.List(ctx, refLogPrefix(kind, name), 0)
	if err != nil {
		return nil, err
	}
	var out []refEntry
	for _, o := range objs {
		b, err := s.rem.c.Get(ctx, o.Key)
		if errors.Is(err, s3.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		var e refEntry
		if err := json.Unmarshal(b, &e); err != nil {
			return nil, fmt.Errorf("ref log entry %s: %w", o.Key, err)
		}
		out = append(out, e)
	}
	return out, nil // newest first
}

// refAppend moves ref name from old to new (zero new: delete) by creating
// the log's next entry once. check decides whether the current head
// allows the move.
func (s *Store) refAppend(kind, name string, new chunk.ID, op, msg string, check func(cur chunk.ID, exists bool) error) error {
	return s.refAppendEntry(kind, name, refEntry{Commit: new, Op: op, Message: msg}, check)
}

func (s *Store) refAppendEntry(kind, name string, tmpl refEntry, check func(cur chunk.ID, exists bool) error) error {
	ctx, cancel := remoteCtx()
	defer cancel()
	var nb [12]byte
	rand.Read(nb[:])
	nonce := hex.EncodeToString(nb[:])
	for try := 0; try < 8; try++ {
		cur, ok, err := s.refNewest(ctx, kind, name)
		if err != nil {
			return err
		}
		exists := ok && !cur.Commit.IsZero()
		if err := check(cur.Commit, exists); err != nil {
			return err
		}
		e := tmpl
		e.Seq, e.Old, e.Time, e.Nonce = cur.Seq+1, cur.Commit, time.Now().UTC(), nonce
		b, _ := json.Marshal(e)
		key := refKey(kind, name, e.Seq)
		err = s.rem.c.PutCreateOnce(ctx, key, b)
		if err == nil {
			return nil
		}
		if errors.Is(err, s3.ErrUnknown) {
			// Did we write it? The entry says.
			got, gerr := s.rem.c.Get(ctx, key)
			if gerr == nil {
				var w refEntry
				if json.Unmarshal(got, &w) == nil && w.Nonce == nonce {
					return nil
				}
				err = s3.ErrExists // someone else's
			} else if errors.Is(gerr, s3.ErrNotFound) {
				continue // not written: try again from the top
			} else {
				return fmt.Errorf("%s %s: %w (and re-reading failed: %v)", kind, name, err, gerr)
			}
		}
		if errors.Is(err, s3.ErrExists) {
			// Lost the race: check again against the new head; unless the
			// winner happened to do exactly our move, that is a conflict.
			continue
		}
		return err
	}
	return fmt.Errorf("%s %s: %w (gave up after 8 tries)", kind, name, ErrConflict)
}

func (s *Store) remoteSetImage(name string, old, new chunk.ID, op, msg string) error {
	return s.casImage(name, old, refEntry{Commit: new, Op: op, Message: msg})
}

func (s *Store) casImage(name string, old chunk.ID, tmpl refEntry) error {
	return s.refAppendEntry("images", name, tmpl, func(cur chunk.ID, exists bool) error {
		if exists != !old.IsZero() || (exists && cur != old) {
			if old.IsZero() {
				return fmt.Errorf("image %s: %w", name, ErrExists)
			}
			if !exists {
				return fmt.Errorf("image %s: %w (it was deleted, expected head %s)", name, ErrConflict, old.Short())
			}
			return fmt.Errorf("image %s: %w: non-fast-forward (head is %s, expected %s: another writer moved it first)", name, ErrConflict, cur.Short(), old.Short())
		}
		return nil
	})
}

func (s *Store) remoteHead(kind, name string) (chunk.ID, error) {
	ctx, cancel := remoteCtx()
	defer cancel()
	e, ok, err := s.refNewest(ctx, kind, name)
	if err != nil {
		return chunk.ID{}, err
	}
	if !ok || e.Commit.IsZero() {
		return chunk.ID{}, fmt.Errorf("%s %s: %w", strings.TrimSuffix(kind, "s"), name, ErrNotFound)
	}
	return e.Commit, nil
}

// remoteRefs lists the live refs of kind with their newest entries.
func (s *Store) remoteRefs(kind string) (map[string]refEntry, []string, error) {
	ctx, cancel := remoteCtx()
	defer cancel()
	names, err := s.rem.c.ListDirs(ctx, "refs/"+kind+"/")
	if err != nil {
		return nil, nil, err
	}
	out := map[string]refEntry{}
	var live []string
	for _, n := range names {
		e, ok, err := s.refNewest(ctx, kind, n)
		if err != nil {
			return nil, nil, err
		}
		if ok && !e.Commit.IsZero() {
			out[n] = e
			live = append(live, n)
		}
	}
	sort.Strings(live)
	return out, live, nil
}

func (s *Store) remoteImages() ([]Image, error) {
	m, names, err := s.remoteRefs("images")
	var out []Image
	for _, n := range names {
		out = append(out, Image{Name: n, Head: m[n].Commit})
	}
	return out, err
}

func (s *Store) remoteReflog(name string) ([]RefLogEntry, error) {
	ctx, cancel := remoteCtx()
	defer cancel()
	return s.reflogUpTo(ctx, name, "", 0)
}

// reflogUpTo is the reflog of name, oldest first; with renamedTo, only
// what came before the tombstone that renamed it to renamedTo.
func (s *Store) reflogUpTo(ctx context.Context, name, renamedTo string, depth int) ([]RefLogEntry, error) {
	log, err := s.refLog(ctx, "images", name)
	if err != nil {
		return nil, err
	}
	var live []refEntry
	for i := len(log) - 1; i >= 0; i-- {
		e := log[i]
		if e.Commit.IsZero() {
			if renamedTo != "" && e.To == renamedTo {
				break
			}
			live = nil // deleted: what came before is another image's history
			continue
		}
		live = append(live, e)
	}
	var out []RefLogEntry
	if len(live) > 0 && live[0].Op == "rename" && live[0].From != "" && depth < 16 {
		prev, err := s.reflogUpTo(ctx, live[0].From, name, depth+1)
		if err != nil {
			return nil, err
		}
		out = prev
	}
	for _, e := range live {
		out = append(out, RefLogEntry{Time: e.Time, Old: e.Old, New: e.Commit, Op: e.Op, Message: e.Message})
	}
	return out, nil
}

func (s *Store) remoteDeleteImage(name string) error {
	return s.refAppend("images", name, chunk.ID{}, "delete", "", func(cur chunk.ID, exists bool) error {
		if !exists {
			return fmt.Errorf("image %s: %w", name, ErrNotFound)
		}
		return nil
	})
}

// remoteRenameImage creates dst at src's head, then deletes src (if src
// moved in between, the delete fails and both names remain: nothing lost).
func (s *Store) remoteRenameImage(src, dst string) error {
	head, err := s.remoteHead("images", src)
	if err != nil {
		return err
	}
	if err := s.casImage(dst, chunk.ID{}, refEntry{Commit: head, Op: "rename", Message: "renamed from " + src, From: src}); err != nil {
		return err
	}
	return s.refAppendEntry("images", src, refEntry{Op: "delete", Message: "renamed to " + dst, To: dst}, func(cur chunk.ID, exists bool) error {
		if !exists || cur != head {
			return fmt.Errorf("image %s: %w while renaming it to %s (both names remain)", src, ErrConflict, dst)
		}
		return nil
	})
}

func (s *Store) remoteCreateTag(name string, id chunk.ID) error {
	return s.refAppend("tags", name, id, "tag", "", func(cur chunk.ID, exists bool) error {
		if exists {
			return fmt.Errorf("tag %s: %w (tags are immutable: delete it first with `sim tag -d %s`)", name, ErrExists, name)
		}
		return nil
	})
}

func (s *Store) remoteDeleteTag(name string) error {
	return s.refAppend("tags", name, chunk.ID{}, "delete", "", func(cur chunk.ID, exists bool) error {
		if !exists {
			return fmt.Errorf("tag %s: %w", name, ErrNotFound)
		}
		return nil
	})
}

func (s *Store) remoteTags() ([]Tag, error) {
	m, names, err := s.remoteRefs("tags")
	var out []Tag
	for _, n := range names {
		out = append(out, Tag{Name: n, Commit: m[n].Commit, Time: m[n].Time})
	}
	return out, err
}

// remoteExpireReflogs deletes image log entries older than before, never
// an image's newest entry (its head, or its tombstone).
func (s *Store) remoteExpireReflogs(before time.Time) (int, error) {
	ctx, cancel := remoteCtx()
	defer cancel()
	names, err := s.rem.c.ListDirs(ctx, "refs/images/")
	if err != nil {
		return 0, err
	}
	n := 0
	for _, name := range names {
		objs, err := s.rem.c.List(ctx, refLogPrefix("images", name), 0)
		if err != nil {
			return n, err
		}
		for i, o := range objs {
			if i == 0 {
				continue
			}
			b, err := s.rem.c.Get(ctx, o.Key)
			if err != nil {
				continue
			}
			var e refEntry
			if json.Unmarshal(b, &e) != nil || !e.Time.Before(before) {
				continue
			}
			if err := s.rem.c.Delete(ctx, o.Key); err != nil {
				return n, err
			}
			n++
		}
	}
	return n, nil
}
