package main

import (
	"bytes"
	"context"
	"encoding/json"
	"github.com/systemimager/sim/store/s3/s3test"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
)

// TestMain lets the test binary act as sim itself, for tests that need a
// separate process (kill -9, another user).
func TestMain(m *testing.M) {
	if os.Getenv("SIM_TEST_AS_SIM") == "1" {
		// The crash tests' seams: kill this process with SIGKILL right
		// after the Nth change an apply makes, or count the changes.
		var ops atomic.Int64
		killAt, _ := strconv.ParseInt(os.Getenv("SIM_TEST_KILL_AFTER"), 10, 64)
		countTo := os.Getenv("SIM_TEST_COUNT_OPS")
		if killAt > 0 || countTo != "" {
			opTrace = func(op, path string) {
				if ops.Add(1) == killAt {
					syscall.Kill(os.Getpid(), syscall.SIGKILL)
					select {}
				}
			}
		}
		code := runProcess(os.Args[1:])
		if countTo != "" {
			os.WriteFile(countTo, []byte(strconv.FormatInt(ops.Load(), 10)), 0o644)
		}
		os.Exit(code)
	}
	code := m.Run()
	s3test.StopShared() // the Ceph cluster, if a test started it
	os.Exit(code)
}

type result struct {
	code           int
	stdout, stderr string
}

// sim runs one command line in-process against store.
func sim(t testing.TB, store string, args ...string) result {
	t.Helper()
	var o, e bytes.Buffer
	code := run(context.Background(), append([]string{"--store", store}, args...), &env{stdout: &o, stderr: &e})
	return result{code, o.String(), e.String()}
}

// ok runs sim and fails the test unless it exits 0.
func ok(t testing.TB, store string, args ...string) string {
	t.Helper()
	r := sim(t, store, args...)
	if r.code != 0 {
		t.Fatalf("sim %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// lastLine is the last non-empty line of s.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// simProcess runs the test binary as sim in a child process.
func simProcess(args ...string) *exec.Cmd {
	c := exec.Command(os.Args[0], args...)
	c.Env = append(os.Environ(), "SIM_TEST_AS_SIM=1")
	return c
}

func writeFiles(t testing.TB, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func newStore(t testing.TB) string {
	t.Helper()
	s := filepath.Join(t.TempDir(), "store")
	ok(t, s, "init")
	return s
}

func decodeJSON(t testing.TB, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("bad JSON %q: %v", s, err)
	}
}
