package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/systemimager/sim/snapshot/snapshottest"
)

// corpus returns the directory holding v1, v2, v3 (testdata/mkcorpus.sh),
// or skips.
func corpus(t *testing.T) string {
	dir := os.Getenv("SIM_CORPUS")
	if dir == "" {
		dir = "/var/cache/sim/corpus"
	}
	for _, v := range []string{"v1", "v2", "v3"} {
		if _, err := os.Stat(filepath.Join(dir, v+".stamp")); err != nil {
			t.Skipf("no corpus at %s (%v): run `make corpus` as root (debootstrap) or set SIM_CORPUS", dir, err)
		}
	}
	return dir
}

// TestCorpus is the foundation scenario on real Debian root filesystems:
// commit v1, v2, v3 as one image, tag, check out exactly, roll back in
// place rewriting only the two changed files, re-commit from the stat
// cache, and fsck every byte.
func TestCorpus(t *testing.T) {
	c := corpus(t)
	st := newStore(t)
	for _, v := range []string{"v1", "v2", "v3"} {
		ok(t, st, "commit", filepath.Join(c, v), "--image", "deb", "-m", v)
		ok(t, st, "tag", "deb-"+v, "deb")
	}
	var show struct {
		Stats struct {
			ReadFiles int `json:"read_files"`
			NewBlobs  int `json:"new_blobs"`
		} `json:"stats"`
	}
	ok(t, st, "commit", filepath.Join(c, "v3"), "--image", "deb", "-m", "v3 again")
	decodeJSON(t, ok(t, st, "show", "deb", "--json"), &show)
	if show.Stats.ReadFiles != 0 || show.Stats.NewBlobs != 0 {
		t.Errorf("unchanged re-commit read %d files and added %d blobs; want 0, 0", show.Stats.ReadFiles, show.Stats.NewBlobs)
	}
	d := ok(t, st, "diff", "deb-v2", "deb-v3")
	if d != "M /etc/motd (content, mtime)\nM /etc/ssh/sshd_config (content, mtime)\n" {
		t.Errorf("diff v2 v3:\n%s", d)
	}

	fresh := filepath.Join(t.TempDir(), "fresh")
	ok(t, st, "checkout", "deb-v2", fresh, "--no-sync")
	snapshottest.Equal(t, filepath.Join(c, "v2"), fresh)

	node := filepath.Join(t.TempDir(), "node")
	ok(t, st, "checkout", "deb-v3", node, "--no-sync")
	snapshottest.Equal(t, filepath.Join(c, "v3"), node)
	var co struct{ Written, Removed int }
	decodeJSON(t, ok(t, st, "checkout", "deb-v2", node, "--json"), &co)
	if co.Written != 2 || co.Removed != 0 {
		t.Errorf("rollback v3→v2: %+v; want 2 written, 0 removed", co)
	}
	snapshottest.Equal(t, filepath.Join(c, "v2"), node)
	// And v1, where packages disappear: the extraneous ones are removed.
	decodeJSON(t, ok(t, st, "checkout", "deb-v1", node, "--json"), &co)
	if co.Removed == 0 {
		t.Errorf("rollback to v1 removed nothing")
	}
	snapshottest.Equal(t, filepath.Join(c, "v1"), node)
	if s := ok(t, st, "fsck", "--read-data"); !strings.Contains(s, "no errors") {
		t.Errorf("fsck: %s", s)
	}
}
