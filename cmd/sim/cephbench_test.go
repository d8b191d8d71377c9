package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/systemimager/sim/snapshot/snapshottest"
	"github.com/systemimager/sim/store/s3"
)

// TestCephBench (bench/cephbench.sh, SIM_CEPH_BENCH=1): commit v1, commit
// v2 on top, and check v2 out from a cold cache (what a new frontend or a
// wiped host does), on the embedded store and on the store on Ceph: wall
// time, S3 requests, bytes up and down. Prints a markdown table.
func TestCephBench(t *testing.T) {
	if os.Getenv("SIM_CEPH_BENCH") != "1" {
		t.Skip("a benchmark: run bench/cephbench.sh (SIM_CEPH_BENCH=1)")
	}
	c := corpus(t)
	var rows []string
	for _, be := range storeBackends {
		st := be.loc(t)
		ok(t, st, "init")
		step := func(name string, fn func()) {
			s0, t0 := s3.Totals(), time.Now()
			fn()
			d, s1 := time.Since(t0), s3.Totals()
			rows = append(rows, fmt.Sprintf("| %s | %s | %.2f | %d | %.1f | %.1f |", be.name, name, d.Seconds(),
				s1.Requests-s0.Requests, float64(s1.BytesUp-s0.BytesUp)/1e6, float64(s1.BytesDown-s0.BytesDown)/1e6))
		}
		step("commit v1", func() { ok(t, st, "commit", filepath.Join(c, "v1"), "--image", "deb") })
		step("commit v2", func() { ok(t, st, "commit", filepath.Join(c, "v2"), "--image", "deb") })
		if be.name == "s3" {
			t.Setenv("SIM_S3_CACHE", t.TempDir())
		}
		root := filepath.Join(t.TempDir(), "root")
		step("checkout v2 (cold cache)", func() { ok(t, st, "checkout", "deb", root) })
		snapshottest.Equal(t, filepath.Join(c, "v2"), root)
	}
	fmt.Printf("| store | step | seconds | S3 requests | MB up | MB down |\n|---|---|---|---|---|---|\n%s\n", strings.Join(rows, "\n"))
}
