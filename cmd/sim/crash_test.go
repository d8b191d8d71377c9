package main

import (
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/systemimager/sim/snapshot/snapshottest"
)

// TestCrash kills sim with SIGKILL at many points of a commit and of a gc
// and checks after each that fsck finds no error, every ref points at a
// complete commit, and the store keeps working.
func TestCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test: -short")
	}
	st := newStore(t)
	src := filepath.Join(t.TempDir(), "src")
	rng := rand.New(rand.NewSource(1))
	buf := make([]byte, 400<<10)
	for i := 0; i < 120; i++ {
		rng.Read(buf)
		writeFiles(t, src, map[string]string{fmt.Sprintf("d%d/f%d", i%10, i): string(buf[:rng.Intn(len(buf))])})
	}
	ok(t, st, "commit", src, "--image", "img", "-m", "base")
	killed, moved := 0, 0
	for round, delay := range []time.Duration{0, 2, 5, 10, 20, 40, 60, 90, 120, 160, 200, 250, 300, 400, 600} {
		// Change a tenth of the files so each commit has work to do.
		for i := round % 10; i < 120; i += 10 {
			rng.Read(buf)
			writeFiles(t, src, map[string]string{fmt.Sprintf("d%d/f%d", i%10, i): string(buf[:rng.Intn(len(buf))])})
		}
		before := head(t, st, "img")
		c := simProcess("--store", st, "commit", src, "--image", "img", "-m", fmt.Sprint("round ", round))
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(delay * time.Millisecond)
		if c.Process.Signal(syscall.SIGKILL) == nil {
			killed++
		}
		c.Wait()
		r := sim(t, st, "fsck")
		if r.code != 0 {
			t.Fatalf("round %d (kill after %v): fsck failed:\n%s%s", round, delay, r.stdout, r.stderr)
		}
		// The head is the old commit or a complete new one, whose
		// tree checks out.
		after := head(t, st, "img")
		dst := filepath.Join(t.TempDir(), "co")
		ok(t, st, "checkout", "img", dst, "--no-sync")
		if after != before {
			moved++
			snapshottest.Equal(t, src, dst)
		}
	}
	t.Logf("%d commits signalled, %d completed before the signal", killed, moved)
	if killed == 0 {
		t.Fatal("no commit was killed: the test proves nothing")
	}
	// gc killed mid-way. The tag keeps a commit from the middle of the
	// history that actually landed (how many commits finished before
	// their kill depends on the machine's load): gc must keep it and
	// may drop the rest.
	ok(t, st, "tag", "keep", fmt.Sprintf("img~%d", moved/2))
	ok(t, st, "image", "rm", "img")
	for _, delay := range []time.Duration{0, 5, 20, 50, 100} {
		c := simProcess("--store", st, "gc")
		c.Start()
		time.Sleep(delay * time.Millisecond)
		c.Process.Signal(syscall.SIGKILL)
		c.Wait()
		if r := sim(t, st, "fsck", "--read-data"); r.code != 0 {
			t.Fatalf("gc killed after %v: fsck failed:\n%s%s", delay, r.stdout, r.stderr)
		}
	}
	ok(t, st, "gc")
	r := sim(t, st, "fsck", "--read-data")
	if r.code != 0 || strings.Contains(r.stdout, "warning") {
		t.Fatalf("after a clean gc: %+v", r)
	}
	ok(t, st, "checkout", "keep", filepath.Join(t.TempDir(), "keep"), "--no-sync")
	ok(t, st, "commit", src, "--image", "again")
	os.RemoveAll(src)
}

func head(t testing.TB, st, image string) string {
	var c struct {
		ID string `json:"id"`
	}
	decodeJSON(t, ok(t, st, "show", image, "--json"), &c)
	return c.ID
}
