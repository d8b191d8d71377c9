package mcast

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"math/rand"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store/storetest"
	simsync "github.com/systemimager/sim/sync"
)

// textFiles writes pseudo-text files (compressible like text and code)
// of about size bytes each, named by names, drawn from seed.
func textFiles(t *testing.T, dir string, seed int64, names []string, size int) {
	t.Helper()
	rng := rand.New(rand.NewSource(seed))
	words := make([]string, 300)
	for i := range words {
		w := make([]byte, 2+rng.Intn(9))
		for j := range w {
			w[j] = byte('a' + rng.Intn(26))
		}
		words[i] = string(w)
	}
	var b bytes.Buffer
	for _, n := range names {
		b.Reset()
		for target := size/2 + rng.Intn(size); b.Len() < target; {
			b.WriteString(words[int(float64(len(words))*math.Pow(rng.Float64(), 3))])
			b.WriteByte(" \n"[rng.Intn(8)/7])
		}
		p := filepath.Join(dir, n)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// httpFill is a transport whose session delivered nothing (a member the
// sender dropped, a session that never came): FetchCommit fills
// everything over HTTP.
type httpFill struct{}

func (httpFill) Deliver(context.Context, chunk.ID, []chunk.ID, *simsync.Sink) (simsync.Delivery, error) {
	return simsync.Delivery{}, nil
}
func (httpFill) Finish(context.Context) error { return nil }
func (httpFill) String() string               { return "nothing" }

// TestFallbackCostsWhatIsMissing (issue #11): what a node still lacks
// after a multicast session comes over HTTP, and costs what is missing,
// not more: the same bytes as one stream of it, each blob once. The
// tree puts files of two depths in each stored frame (as any real tree
// does), so the level-by-level requests of the fill want part of a
// frame; sending a stored frame whole as soon as half of it was wanted
// brought the other part a second time (1.3× the image here).
func TestFallbackCostsWhatIsMissing(t *testing.T) {
	src := t.TempDir()
	var names, shallow []string
	for d := 0; d < 60; d++ {
		for f := 0; f < 4; f++ {
			n := fmt.Sprintf("d%02d/f%d", d, f)
			names, shallow = append(names, n), append(shallow, n)
		}
		if d%6 == 0 {
			// not every directory has a subdirectory: FetchCommit takes
			// two tree levels with as many objects missing as no
			// progress (sync/pull.go)
			continue
		}
		for f := 0; f < 7; f++ {
			names = append(names, fmt.Sprintf("d%02d/z/g%d", d, f))
		}
	}
	textFiles(t, src, 1, names, 16<<10)
	srv := storetest.New(t)
	all := commitDir(t, srv, src)
	// part: the shallow files only (about 40% of each frame), committed after
	// the whole tree so that its blobs are spread over the same frames
	part := t.TempDir()
	for _, n := range shallow {
		b, err := os.ReadFile(filepath.Join(src, n))
		if err != nil {
			t.Fatal(err)
		}
		os.MkdirAll(filepath.Dir(filepath.Join(part, n)), 0o755)
		os.WriteFile(filepath.Join(part, n), b, 0o644)
	}
	partID := commitDir(t, srv, part)
	hs := httptest.NewServer(&simsync.Server{Store: srv})
	defer hs.Close()
	r, err := simsync.NewRemote(hs.URL, "")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// What the whole tree costs in one stream to an empty node, and the
	// share of its bytes the shallow files are.
	full, err := simsync.FetchCommit(ctx, storetest.New(t), r, nil, all, true)
	if err != nil {
		t.Fatal(err)
	}
	var total, partBytes int64
	for _, n := range names {
		fi, err := os.Stat(filepath.Join(src, n))
		if err != nil {
			t.Fatal(err)
		}
		total += fi.Size()
		if _, err := os.Stat(filepath.Join(part, n)); err == nil {
			partBytes += fi.Size()
		}
	}
	for _, c := range []struct {
		name string
		has  chunk.ID // what the node holds before
		lack float64  // the share of the tree's bytes it lacks
	}{
		{"nothing", chunk.ID{}, 1},
		{"every shallow file", partID, float64(total-partBytes) / float64(total)},
	} {
		t.Run(c.name, func(t *testing.T) {
			fill := storetest.New(t)
			if !c.has.IsZero() {
				if _, err := simsync.FetchCommit(ctx, fill, r, nil, c.has, true); err != nil {
					t.Fatal(err)
				}
			}
			got, err := simsync.FetchCommit(ctx, fill, r, httpFill{}, all, true)
			if err != nil {
				t.Fatal(err)
			}
			if k := missing(t, fill, srv, all); k != 0 {
				t.Fatalf("fill left %d objects missing", k)
			}
			want := int64(float64(full.WireBytes) * c.lack)
			t.Logf("lacking %.0f%% of the tree: the fill moved %d bytes in %d requests (%.2f× the share of one stream of everything), %d blobs for %d new",
				100*c.lack, got.WireBytes, got.Rounds, float64(got.WireBytes)/float64(want), got.Blobs, got.NewBlobs)
			if got.WireBytes > want*11/10 {
				t.Errorf("the fill moved %d bytes for %d bytes' worth missing", got.WireBytes, want)
			}
			if dup := got.Blobs - got.NewBlobs; dup*50 > got.NewBlobs {
				t.Errorf("the fill received %d blobs for %d missing: %d twice", got.Blobs, got.NewBlobs, dup)
			}
		})
	}
}
