package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/systemimager/sim/snapshot/snapshottest"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/store/s3/s3test"
)

// cephStore returns the location of a new, empty prefix of the test
// cluster's bucket, with the credentials in the environment and
// $SIM_S3_CACHE set to a fresh cache; it skips where Ceph cannot run.
func cephStore(t *testing.T) string {
	t.Helper()
	c, skip, err := s3test.Shared()
	if skip != "" {
		t.Skip(skip)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("AWS_ACCESS_KEY_ID", c.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", c.SecretKey)
	t.Setenv("SIM_S3_CACHE", t.TempDir())
	b := make([]byte, 4)
	rand.Read(b)
	return c.Location(strings.NewReplacer("/", "-", "#", "-").Replace(t.Name()) + "-" + hex.EncodeToString(b))
}

// storeBackends are the two kinds of store the CLI matrix runs on.
var storeBackends = []struct {
	name string
	loc  func(t *testing.T) string
}{
	{"local", func(t *testing.T) string { return filepath.Join(t.TempDir(), "store") }},
	{"s3", cephStore},
}

// TestStoreMatrix: the same CLI session on the embedded store and on the
// store on Ceph: init, commit v1 of the corpus, log, images, tag, checkout
// exact, fsck --read-data, serve it and clone into a second store.
func TestStoreMatrix(t *testing.T) {
	c := corpus(t)
	for _, be := range storeBackends {
		t.Run(be.name, func(t *testing.T) {
			st := be.loc(t)
			if s := ok(t, st, "init"); !strings.Contains(s, "initialized empty sim store") {
				t.Errorf("init: %s", s)
			}
			if r := sim(t, st, "init"); r.code != 1 || !strings.Contains(r.stderr, "a store already exists") {
				t.Errorf("init twice: %+v", r)
			}
			v1 := lastLine(ok(t, st, "commit", filepath.Join(c, "v1"), "--image", "deb", "-m", "v1"))
			ok(t, st, "tag", "deb-v1", "deb")
			if s := ok(t, st, "log", "deb"); !strings.Contains(s, v1) {
				t.Errorf("log: %s", s)
			}
			if s := ok(t, st, "images"); !strings.Contains(s, "deb") || !strings.Contains(s, v1[:12]) {
				t.Errorf("images: %s", s)
			}
			if s := ok(t, st, "tag"); !strings.Contains(s, "deb-v1") {
				t.Errorf("tag: %s", s)
			}
			if be.name == "s3" {
				// Every later command starts from an empty cache: the
				// bucket alone must be enough.
				t.Setenv("SIM_S3_CACHE", t.TempDir())
			}
			root := filepath.Join(t.TempDir(), "root")
			ok(t, st, "checkout", "deb-v1", root)
			snapshottest.Equal(t, filepath.Join(c, "v1"), root)
			ok(t, st, "fsck", "--read-data")

			url := startServer(t, st)
			if be.name == "s3" {
				t.Setenv("SIM_S3_CACHE", t.TempDir()) // not the server's
			}
			// A commit beside the running server shows at once through it.
			v2 := lastLine(ok(t, st, "commit", filepath.Join(c, "v2"), "--image", "deb", "-m", "v2"))
			mirror := filepath.Join(t.TempDir(), "mirror")
			ok(t, st, "clone", url, mirror)
			if s := ok(t, mirror, "log", "deb"); !strings.Contains(s, v1) || !strings.Contains(s, v2) {
				t.Errorf("clone's log: %s", s)
			}
			root2 := filepath.Join(t.TempDir(), "root2")
			ok(t, mirror, "checkout", "deb", root2)
			snapshottest.Equal(t, filepath.Join(c, "v2"), root2)
			ok(t, mirror, "fsck", "--read-data")
		})
	}
}

// TestS3TwoWriters: two stores on one bucket (two frontends), one image.
// Both commit on the same head: one wins, the other is told
// non-fast-forward; then 100 rounds of concurrent moves: exactly one
// winner per round; nothing lost, fsck clean.
func TestS3TwoWriters(t *testing.T) {
	loc := cephStore(t)
	if err := store.Init(loc); err != nil {
		t.Fatal(err)
	}
	a, err := store.OpenCache(loc, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := store.OpenCache(loc, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	src := t.TempDir()
	writeFiles(t, src, map[string]string{"etc/motd": "base\n"})
	base := lastLine(ok(t, loc, "commit", src, "--image", "img"))

	// Two commits on the same head through the CLI, one per cache.
	t.Setenv("SIM_S3_CACHE", t.TempDir())
	writeFiles(t, src, map[string]string{"etc/motd": "one\n"})
	one := lastLine(ok(t, loc, "commit", src, "--image", "img"))
	t.Setenv("SIM_S3_CACHE", t.TempDir())
	if s := ok(t, loc, "log", "img"); !strings.Contains(s, one) || !strings.Contains(s, base) {
		t.Fatalf("second frontend's log: %s", s)
	}

	// Every round's commits share the base's tree (the CLI stored it
	// through another cache: each store finds it in the bucket).
	tree := func(s *store.Store, i int) (*store.Commit, error) {
		bc, err := s.Commit(mustParse(base))
		if err != nil {
			return nil, err
		}
		return &store.Commit{Tree: bc.Tree, Image: "img", Message: fmt.Sprint(i), Time: time.Now().UTC()}, nil
	}
	head, err := a.ImageHead("img")
	if err != nil {
		t.Fatal(err)
	}
	wins := map[string]int{}
	for round := 0; round < 100; round++ {
		var wg sync.WaitGroup
		errs := make([]error, 2)
		ids := make([]string, 2)
		for i, s := range []*store.Store{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := tree(s, round*2+i)
				if err != nil {
					errs[i] = err
					return
				}
				c.Parents = append(c.Parents, head)
				id, err := s.PutCommit(c)
				if err != nil {
					errs[i] = err
					return
				}
				ids[i] = id.String()
				errs[i] = s.SetImage("img", head, id, "commit", "")
			}()
		}
		wg.Wait()
		winner := -1
		for i, err := range errs {
			if err == nil {
				if winner >= 0 {
					t.Fatalf("round %d: both writers won", round)
				}
				winner = i
			} else if !strings.Contains(err.Error(), "ref changed concurrently") {
				t.Fatalf("round %d writer %d: %v", round, i, err)
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: nobody won: %v", round, errs)
		}
		wins[[]string{"a", "b"}[winner]]++
		got, err := b.ImageHead("img")
		if err != nil || got.String() != ids[winner] {
			t.Fatalf("round %d: head %s, %v; want the winner's %s", round, got.Short(), err, ids[winner][:12])
		}
		head = got
	}
	t.Logf("wins: %v", wins)
	log, err := a.Reflog("img")
	if err != nil || len(log) != 102 {
		t.Fatalf("reflog has %d entries (%v), want 102", len(log), err)
	}
	// The loser of a CLI race is told.
	t.Setenv("SIM_S3_CACHE", t.TempDir())
	if r := sim(t, loc, "log", "img"); r.code != 0 {
		t.Fatalf("log: %+v", r)
	}
	if err := a.SetImage("img", log[0].New, log[1].New, "commit", ""); err == nil || !strings.Contains(err.Error(), "ref changed concurrently") {
		t.Errorf("a stale move: %v", err)
	}
	ok(t, loc, "fsck", "--read-data")
}

// TestS3MissingCredentials: an S3 store without credentials is refused
// naming what is missing, and credentials in the location are refused.
func TestS3MissingCredentials(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	t.Setenv("SIM_S3_CREDENTIALS", "")
	loc := "s3://bkt/p?endpoint=http://127.0.0.1:1"
	for _, args := range [][]string{{"init"}, {"log", "img"}} {
		r := sim(t, loc, args...)
		if r.code != 1 || !strings.Contains(r.stderr, "no credentials: $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY not set") {
			t.Errorf("%v: %+v", args, r)
		}
	}
	t.Setenv("SIM_S3_CREDENTIALS", filepath.Join(t.TempDir(), "nokeys"))
	if r := sim(t, loc, "init"); r.code != 1 || !strings.Contains(r.stderr, "s3 credentials file") || !strings.Contains(r.stderr, "nokeys") {
		t.Errorf("missing credentials file: %+v", r)
	}
	if r := sim(t, "s3://AKEY:hunter2@bkt?endpoint=http://127.0.0.1:1", "init"); r.code != 2 || !strings.Contains(r.stderr, "credentials do not belong in the location") || strings.Contains(r.stderr, "hunter2") {
		t.Errorf("credentials in the location: %+v", r)
	}
}
