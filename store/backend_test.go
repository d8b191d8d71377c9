package store

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/systemimager/sim/store/s3/s3test"
)

func TestMain(m *testing.M) {
	code := m.Run()
	s3test.StopShared()
	os.Exit(code)
}

// backend makes stores of one kind for the matrix tests: the embedded
// local store, or the store on a real Ceph through S3.
type backend struct {
	name string
	// make returns a new empty store's location, ready for Init.
	location func(t testing.TB) string
	// open opens loc with a fresh cache (an S3 store) or as it is.
	open func(t testing.TB, loc string) *Store
}

var nonName = regexp.MustCompile(`[^A-Za-z0-9-]+`)

func cephCluster(t testing.TB) *s3test.Cluster {
	t.Helper()
	c, skip, err := s3test.Shared()
	if skip != "" {
		t.Skip(skip)
	}
	if err != nil {
		t.Fatal(err)
	}
	c.Env()
	return c
}

var backends = []backend{
	{
		name:     "local",
		location: func(t testing.TB) string { return filepath.Join(t.TempDir(), "s") },
		open: func(t testing.TB, loc string) *Store {
			s, err := Open(loc)
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
	},
	{
		name: "s3",
		location: func(t testing.TB) string {
			c := cephCluster(t)
			b := make([]byte, 4)
			rand.Read(b)
			return c.Location(nonName.ReplaceAllString(t.Name(), "-") + "-" + hex.EncodeToString(b))
		},
		open: func(t testing.TB, loc string) *Store {
			s, err := OpenCache(loc, t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
	},
}

// matrix runs fn once per backend, as subtests local and s3.
func matrix(t *testing.T, fn func(t *testing.T, b backend)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) { fn(t, b) })
	}
}

// newStore makes and opens an empty store of backend b.
func (b backend) newStore(t testing.TB) *Store {
	t.Helper()
	loc := b.location(t)
	if err := Init(loc); err != nil {
		t.Fatal(err)
	}
	s := b.open(t, loc)
	t.Cleanup(func() { s.Close() })
	return s
}

// reopen closes s and opens its store again (an S3 store from a new,
// empty cache: everything must come from the bucket).
func (b backend) reopen(t testing.TB, s *Store) *Store {
	t.Helper()
	loc := s.Location()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = b.open(t, loc)
	t.Cleanup(func() { s.Close() })
	return s
}
