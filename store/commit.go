package store

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/user"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store/s3"
)

// Commit is one snapshot of an image: its root tree and its history.
// Its id is the BLAKE3 of its JSON encoding (fields in this order).
type Commit struct {
	Tree    chunk.ID    `json:"tree"`
	Parents []chunk.ID  `json:"parents,omitempty"`
	Time    time.Time   `json:"time"`
	Author  string      `json:"author"`
	Host    string      `json:"host,omitempty"`
	Message string      `json:"message"`
	Image   string      `json:"image"`
	Stats   CommitStats `json:"stats"`
}

// CommitStats describe the snapshot and what committing it added.
type CommitStats struct {
	Files       int64 `json:"files"`        // non-directory entries
	Dirs        int64 `json:"dirs"`         // directories
	Bytes       int64 `json:"bytes"`        // apparent size of regular files
	Chunks      int64 `json:"chunks"`       // data chunks referenced (with repeats)
	NewBlobs    int64 `json:"new_blobs"`    // blobs this commit added to the store
	NewBytes    int64 `json:"new_bytes"`    // their uncompressed size
	StoredBytes int64 `json:"stored_bytes"` // their size in packs
	ReadFiles   int64 `json:"read_files"`   // files read (the rest came from the stat cache)
}

// DefaultAuthor is who a commit is by when nobody says: user@host.
func DefaultAuthor() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return name + "@" + host
}

// Encode returns the canonical encoding of c and its id.
func (c *Commit) Encode() ([]byte, chunk.ID) {
	b, err := json.Marshal(c)
	if err != nil {
		panic(err) // a Commit always encodes
	}
	return b, chunk.Sum(b)
}

// DecodeCommit parses an encoded commit and checks it against id.
func DecodeCommit(id chunk.ID, b []byte) (*Commit, error) {
	if err := chunk.Verify(id, b); err != nil {
		return nil, err
	}
	var c Commit
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("commit %s: %w", id.Short(), err)
	}
	return &c, nil
}

// PutCommit stores c after checking that its tree and parents are in the
// store: no commit may name missing data.
func (s *Store) PutCommit(c *Commit) (chunk.ID, error) { return s.putCommit(c, false) }

// PutCommitShallow stores c without its history: a node keeps the commits
// it checked out, not their ancestors. The commit is marked shallow, and
// history walks (log, fsck, gc) stop at it.
func (s *Store) PutCommitShallow(c *Commit) (chunk.ID, error) { return s.putCommit(c, true) }

// IsShallow reports whether commit id was stored without its parents.
func (s *Store) IsShallow(id chunk.ID) bool {
	err := s.db.View(func(txn *badger.Txn) error {
		_, err := txn.Get(append([]byte(kShallow), id[:]...))
		return err
	})
	return err == nil
}

func (s *Store) putCommit(c *Commit, shallow bool) (chunk.ID, error) {
	b, id := c.Encode()
	if s.rem != nil {
		// What another writer stored may not be in this cache yet.
		if _, err := s.Lookup(c.Tree); err != nil && !errors.Is(err, ErrNotFound) {
			return id, err
		}
		for _, p := range c.Parents {
			if shallow {
				break
			}
			if _, err := s.CommitRaw(p); err != nil && !errors.Is(err, ErrNotFound) {
				return id, err
			}
		}
	}
	// Indexed is enough, even in a pack a gc mark dooms: the sweep walks
	// from every commit made since its mark and keeps what they name.
	if _, err := s.lookupLocal(c.Tree); errors.Is(err, ErrNotFound) {
		return id, fmt.Errorf("commit names tree %s, which the store lacks", c.Tree.Short())
	} else if err != nil {
		return id, err
	}
	err := s.db.Update(func(txn *badger.Txn) error {
		_, err := txn.Get(append([]byte(kCommit), id[:]...))
		exists := err == nil
		if exists && shallow {
			return nil
		}
		for _, p := range c.Parents {
			if shallow {
				break
			}
			if _, err := txn.Get(append([]byte(kCommit), p[:]...)); err != nil {
				return fmt.Errorf("commit names parent %s: %w", p.Short(), err)
			}
		}
		if exists {
			// Its history has arrived since it was stored shallow.
			return txn.Delete(append([]byte(kShallow), id[:]...))
		}
		if shallow && len(c.Parents) > 0 {
			if err := txn.Set(append([]byte(kShallow), id[:]...), nil); err != nil {
				return err
			}
		}
		return txn.Set(append([]byte(kCommit), id[:]...), b)
	})
	if err != nil {
		return id, err
	}
	if s.rem != nil {
		if err := s.uploadCommit(id, b); err != nil {
			return id, err
		}
	}
	return id, s.db.Sync()
}

// PutCommitRaw stores an encoded commit received from elsewhere, verified.
func (s *Store) PutCommitRaw(id chunk.ID, b []byte) error {
	c, err := DecodeCommit(id, b)
	if err != nil {
		return err
	}
	_, err = s.PutCommit(c)
	return err
}

// CommitRaw returns the stored encoding of commit id.
func (s *Store) CommitRaw(id chunk.ID) ([]byte, error) {
	var b []byte
	err := s.db.View(func(txn *badger.Txn) error {
		it, err := txn.Get(append([]byte(kCommit), id[:]...))
		if err != nil {
			return err
		}
		b, err = it.ValueCopy(nil)
		return err
	})
	if errors.Is(err, badger.ErrKeyNotFound) && s.rem != nil {
		b, err = s.fetchCommit(id)
		if errors.Is(err, s3.ErrNotFound) {
			err = badger.ErrKeyNotFound
		}
	}
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, fmt.Errorf("commit %s: %w", id.Short(), ErrNotFound)
	}
	return b, err
}

// Commit returns commit id.
func (s *Store) Commit(id chunk.ID) (*Commit, error) {
	b, err := s.CommitRaw(id)
	if err != nil {
		return nil, err
	}
	return DecodeCommit(id, b)
}

// HasCommit reports whether the store holds commit id.
func (s *Store) HasCommit(id chunk.ID) (bool, error) {
	_, err := s.CommitRaw(id)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// Commits returns the ids of all commits.
func (s *Store) Commits() ([]chunk.ID, error) {
	var out []chunk.ID
	err := s.scan(kCommit, false, func(k, _ []byte) error {
		var id chunk.ID
		copy(id[:], k)
		out = append(out, id)
		return nil
	})
	return out, err
}

func (s *Store) scan(prefix string, values bool, fn func(k, v []byte) error) error {
	return s.db.View(func(txn *badger.Txn) error {
		opt := badger.DefaultIteratorOptions
		opt.Prefix = []byte(prefix)
		opt.PrefetchValues = values
		it := txn.NewIterator(opt)
		defer it.Close()
		for it.Seek(opt.Prefix); it.ValidForPrefix(opt.Prefix); it.Next() {
			k := it.Item().KeyCopy(nil)[len(prefix):]
			var v []byte
			if values {
				var err error
				if v, err = it.Item().ValueCopy(nil); err != nil {
					return err
				}
			}
			if err := fn(k, v); err != nil {
				return err
			}
		}
		return nil
	})
}

// ---- refs ----

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+@-]{0,127}$`)

// CheckName validates an image or tag name.
func CheckName(kind, name string) error {
	if !nameRE.MatchString(name) || strings.Contains(name, "..") {
		return fmt.Errorf("invalid %s name %q: use letters, digits and . _ + @ - (not first), at most 128", kind, name)
	}
	return nil
}

// RefLogEntry records one move of an image's head.
type RefLogEntry struct {
	Time    time.Time `json:"time"`
	Old     chunk.ID  `json:"old"`
	New     chunk.ID  `json:"new"`
	Op      string    `json:"op"`
	Message string    `json:"message,omitempty"`
}

// Image is one image (branch) and its head.
type Image struct {
	Name string   `json:"name"`
	Head chunk.ID `json:"head"`
}

// Tag is an immutable name for a commit.
type Tag struct {
	Name   string    `json:"name"`
	Commit chunk.ID  `json:"commit"`
	Time   time.Time `json:"time"`
}

// ErrExists is returned when creating a ref that exists.
var ErrExists = errors.New("already exists")

// ErrConflict is returned when a ref moved under a compare-and-swap.
var ErrConflict = errors.New("ref changed concurrently")

func getID(txn *badger.Txn, key []byte) (chunk.ID, bool, error) {
	var id chunk.ID
	it, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return id, false, nil
	}
	if err != nil {
		return id, false, err
	}
	err = it.Value(func(v []byte) error {
		if len(v) != 32 {
			return fmt.Errorf("ref %q holds %d bytes", key, len(v))
		}
		copy(id[:], v)
		return nil
	})
	return id, err == nil, err
}

func reflogKey(name string, t time.Time) []byte {
	k := append([]byte(kReflog+name), 0)
	return binary.BigEndian.AppendUint64(k, uint64(t.UnixNano()))
}

// SetImage moves image name from old (zero: the image must not exist) to
// new, atomically with its reflog entry.
func (s *Store) SetImage(name string, old, new chunk.ID, op, msg string) error {
	if err := CheckName("image", name); err != nil {
		return err
	}
	if ok, err := s.HasCommit(new); err != nil {
		return err
	} else if !ok {
		return fmt.Errorf("image %s cannot point at commit %s, which the store lacks", name, new.Short())
	}
	if s.rem != nil {
		return s.remoteSetImage(name, old, new, op, msg)
	}
	err := s.db.Update(func(txn *badger.Txn) error {
		key := []byte(kImage + name)
		cur, ok, err := getID(txn, key)
		if err != nil {
			return err
		}
		if ok != !old.IsZero() || cur != old {
			if old.IsZero() {
				return fmt.Errorf("image %s: %w", name, ErrExists)
			}
			return fmt.Errorf("image %s: %w (head is %s, expected %s)", name, ErrConflict, cur.Short(), old.Short())
		}
		e, _ := json.Marshal(RefLogEntry{Time: time.Now().UTC(), Old: old, New: new, Op: op, Message: msg})
		if err := txn.Set(reflogKey(name, time.Now()), e); err != nil {
			return err
		}
		return txn.Set(key, new[:])
	})
	if err != nil {
		return err
	}
	return s.db.Sync()
}

// ImageHead returns the head of image name.
func (s *Store) ImageHead(name string) (chunk.ID, error) {
	if s.rem != nil {
		return s.remoteHead("images", name)
	}
	var id chunk.ID
	var ok bool
	err := s.db.View(func(txn *badger.Txn) (err error) {
		id, ok, err = getID(txn, []byte(kImage+name))
		return err
	})
	if err == nil && !ok {
		err = fmt.Errorf("image %s: %w", name, ErrNotFound)
	}
	return id, err
}

// Images lists all images, sorted by name.
func (s *Store) Images() ([]Image, error) {
	if s.rem != nil {
		return s.remoteImages()
	}
	var out []Image
	err := s.scan(kImage, true, func(k, v []byte) error {
		im := Image{Name: string(k)}
		copy(im.Head[:], v)
		out = append(out, im)
		return nil
	})
	return out, err
}

// Reflog returns the reflog of image name, oldest first.
func (s *Store) Reflog(name string) ([]RefLogEntry, error) {
	if s.rem != nil {
		return s.remoteReflog(name)
	}
	var out []RefLogEntry
	err := s.scan(kReflog+name+"\x00", true, func(k, v []byte) error {
		var e RefLogEntry
		if err := json.Unmarshal(v, &e); err != nil {
			return fmt.Errorf("reflog of %s: %w", name, err)
		}
		out = append(out, e)
		return nil
	})
	return out, err
}

// CopyImage creates image dst at src's head.
func (s *Store) CopyImage(src, dst string) error {
	head, err := s.ImageHead(src)
	if err != nil {
		return err
	}
	return s.SetImage(dst, chunk.ID{}, head, "copy", "copied from "+src)
}

// RenameImage renames an image with its reflog, in one transaction.
func (s *Store) RenameImage(src, dst string) error {
	if err := CheckName("image", dst); err != nil {
		return err
	}
	if s.rem != nil {
		return s.remoteRenameImage(src, dst)
	}
	err := s.db.Update(func(txn *badger.Txn) error {
		head, ok, err := getID(txn, []byte(kImage+src))
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("image %s: %w", src, ErrNotFound)
		}
		if _, ok, _ := getID(txn, []byte(kImage+dst)); ok {
			return fmt.Errorf("image %s: %w", dst, ErrExists)
		}
		if err := moveKeys(txn, kReflog+src+"\x00", kReflog+dst+"\x00"); err != nil {
			return err
		}
		e, _ := json.Marshal(RefLogEntry{Time: time.Now().UTC(), Old: head, New: head, Op: "rename", Message: "renamed from " + src})
		if err := txn.Set(reflogKey(dst, time.Now()), e); err != nil {
			return err
		}
		if err := txn.Delete([]byte(kImage + src)); err != nil {
			return err
		}
		return txn.Set([]byte(kImage+dst), head[:])
	})
	if err != nil {
		return err
	}
	return s.db.Sync()
}

// DeleteImage removes an image and its reflog. Its commits stay until gc
// finds nothing else reaching them.
func (s *Store) DeleteImage(name string) error {
	if s.rem != nil {
		return s.remoteDeleteImage(name)
	}
	err := s.db.Update(func(txn *badger.Txn) error {
		if _, ok, err := getID(txn, []byte(kImage+name)); err != nil {
			return err
		} else if !ok {
			return fmt.Errorf("image %s: %w", name, ErrNotFound)
		}
		if err := moveKeys(txn, kReflog+name+"\x00", ""); err != nil {
			return err
		}
		return txn.Delete([]byte(kImage + name))
	})
	if err != nil {
		return err
	}
	return s.db.Sync()
}

// moveKeys renames every key with prefix from to prefix to, or deletes
// them when to is "".
func moveKeys(txn *badger.Txn, from, to string) error {
	opt := badger.DefaultIteratorOptions
	opt.Prefix = []byte(from)
	it := txn.NewIterator(opt)
	type kv struct{ k, v []byte }
	var all []kv
	for it.Seek(opt.Prefix); it.ValidForPrefix(opt.Prefix); it.Next() {
		v, err := it.Item().ValueCopy(nil)
		if err != nil {
			it.Close()
			return err
		}
		all = append(all, kv{it.Item().KeyCopy(nil), v})
	}
	it.Close()
	for _, e := range all {
		if err := txn.Delete(e.k); err != nil {
			return err
		}
		if to != "" {
			if err := txn.Set(append([]byte(to), e.k[len(from):]...), e.v); err != nil {
				return err
			}
		}
	}
	return nil
}

// CreateTag names commit id; tags are immutable.
func (s *Store) CreateTag(name string, id chunk.ID) error {
	if err := CheckName("tag", name); err != nil {
		return err
	}
	if ok, err := s.HasCommit(id); err != nil {
		return err
	} else if !ok {
		return fmt.Errorf("tag %s: commit %s: %w", name, id.Short(), ErrNotFound)
	}
	if s.rem != nil {
		return s.remoteCreateTag(name, id)
	}
	err := s.db.Update(func(txn *badger.Txn) error {
		if _, err := txn.Get([]byte(kTag + name)); err == nil {
			return fmt.Errorf("tag %s: %w (tags are immutable: delete it first with `sim tag -d %s`)", name, ErrExists, name)
		}
		b, _ := json.Marshal(Tag{Name: name, Commit: id, Time: time.Now().UTC()})
		return txn.Set([]byte(kTag+name), b)
	})
	if err != nil {
		return err
	}
	return s.db.Sync()
}

// DeleteTag removes a tag.
func (s *Store) DeleteTag(name string) error {
	if s.rem != nil {
		return s.remoteDeleteTag(name)
	}
	err := s.db.Update(func(txn *badger.Txn) error {
		if _, err := txn.Get([]byte(kTag + name)); err != nil {
			if errors.Is(err, badger.ErrKeyNotFound) {
				return fmt.Errorf("tag %s: %w", name, ErrNotFound)
			}
			return err
		}
		return txn.Delete([]byte(kTag + name))
	})
	if err != nil {
		return err
	}
	return s.db.Sync()
}

// Tags lists all tags sorted by name.
func (s *Store) Tags() ([]Tag, error) {
	if s.rem != nil {
		return s.remoteTags()
	}
	var out []Tag
	err := s.scan(kTag, true, func(k, v []byte) error {
		var t Tag
		if err := json.Unmarshal(v, &t); err != nil {
			return fmt.Errorf("tag %s: %w", k, err)
		}
		out = append(out, t)
		return nil
	})
	return out, err
}

// TagCommit returns the commit tag name points at.
func (s *Store) TagCommit(name string) (chunk.ID, error) {
	if s.rem != nil {
		return s.remoteHead("tags", name)
	}
	var t Tag
	err := s.db.View(func(txn *badger.Txn) error {
		it, err := txn.Get([]byte(kTag + name))
		if err != nil {
			return err
		}
		return it.Value(func(v []byte) error { return json.Unmarshal(v, &t) })
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return t.Commit, fmt.Errorf("tag %s: %w", name, ErrNotFound)
	}
	return t.Commit, err
}

// Resolve turns a REF into a commit id: an image name (its head), a tag, a
// full commit id or a unique prefix of at least 4 hex digits, each
// optionally followed by ~N (N first parents back) or ^ (one back).
func (s *Store) Resolve(ref string) (chunk.ID, error) {
	base, back, err := SplitAncestry(ref)
	if err != nil {
		return chunk.ID{}, err
	}
	id, err := s.resolveBase(base)
	if err != nil {
		return id, err
	}
	for i := 0; i < back; i++ {
		c, err := s.Commit(id)
		if err != nil {
			return id, err
		}
		if len(c.Parents) == 0 {
			return id, fmt.Errorf("%s: commit %s has no parent (history is %d deep)", ref, id.Short(), i)
		}
		id = c.Parents[0]
	}
	return id, nil
}

// SplitAncestry splits "name~2^" into "name" and 3.
func SplitAncestry(ref string) (string, int, error) {
	back := 0
	for {
		if strings.HasSuffix(ref, "^") {
			ref, back = ref[:len(ref)-1], back+1
			continue
		}
		i := strings.LastIndexByte(ref, '~')
		if i < 0 {
			break
		}
		n := 1
		if num := ref[i+1:]; num != "" {
			v, err := strconv.Atoi(num)
			if err != nil || v < 0 {
				return "", 0, fmt.Errorf("bad ref %q: ~ must be followed by a number", ref)
			}
			n = v
		}
		ref, back = ref[:i], back+n
	}
	if ref == "" {
		return "", 0, fmt.Errorf("empty ref")
	}
	return ref, back, nil
}

func (s *Store) resolveBase(ref string) (chunk.ID, error) {
	if id, err := s.ImageHead(ref); err == nil {
		return id, nil
	} else if !errors.Is(err, ErrNotFound) {
		return id, err
	}
	if id, err := s.TagCommit(ref); err == nil {
		return id, nil
	} else if !errors.Is(err, ErrNotFound) {
		return id, err
	}
	hexRef := strings.ToLower(strings.TrimPrefix(ref, chunk.Prefix))
	if len(hexRef) >= 4 && len(hexRef) <= 64 {
		if _, err := hex.DecodeString(hexRef[:len(hexRef)&^1]); err == nil {
			var matches []chunk.ID
			pfx, _ := hex.DecodeString(hexRef[:len(hexRef)&^1])
			err := s.scan(kCommit+string(pfx), false, func(k, _ []byte) error {
				var id chunk.ID
				copy(id[:], append(append([]byte(nil), pfx...), k...))
				if strings.HasPrefix(id.String(), hexRef) {
					matches = append(matches, id)
				}
				return nil
			})
			if err != nil {
				return chunk.ID{}, err
			}
			if len(matches) == 1 {
				return matches[0], nil
			}
			if len(matches) > 1 {
				sort.Slice(matches, func(i, j int) bool { return matches[i].String() < matches[j].String() })
				return chunk.ID{}, fmt.Errorf("ref %q is ambiguous: %d commits start with it (%s, %s, ...)", ref, len(matches), matches[0].Short(), matches[1].Short())
			}
		}
	}
	return chunk.ID{}, fmt.Errorf("unknown ref %q: no image, tag or commit of that name: %w", ref, ErrNotFound)
}

// ExpireReflogs drops reflog entries older than before, in every image,
// so gc can free the commits only they still reached. It returns how many
// were dropped.
func (s *Store) ExpireReflogs(before time.Time) (int, error) {
	if s.rem != nil {
		return s.remoteExpireReflogs(before)
	}
	var dead [][]byte
	err := s.scan(kReflog, false, func(k, _ []byte) error {
		if len(k) >= 9 && int64(binary.BigEndian.Uint64(k[len(k)-8:])) < before.UnixNano() {
			dead = append(dead, append([]byte(kReflog), k...))
		}
		return nil
	})
	if err != nil || len(dead) == 0 {
		return 0, err
	}
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, k := range dead {
		if err := wb.Delete(k); err != nil {
			return 0, err
		}
	}
	if err := wb.Flush(); err != nil {
		return 0, err
	}
	return len(dead), s.db.Sync()
}
