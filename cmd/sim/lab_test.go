package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	gosync "sync"
	"syscall"
	"testing"
	"time"

	"github.com/systemimager/sim/snapshot/snapshottest"
)

// lab is a network lab (testdata/lab.sh) of network namespaces.
type lab struct {
	t    *testing.T
	name string
	sh   string
}

func newLab(t *testing.T, nodes int, extra ...string) *lab {
	t.Helper()
	return newNamedLab(t, "simt", nodes, extra...)
}

// newNamedLab is newLab named prefix<pid>, so that labs of different
// tests (or test binaries) on the machine never collide.
func newNamedLab(t *testing.T, prefix string, nodes int, extra ...string) *lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network lab: needs root (network namespaces)")
	}
	sh, _ := filepath.Abs("../../testdata/lab.sh")
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("network lab: no ip command (iproute2)")
	}
	l := &lab{t: t, name: fmt.Sprintf("%s%d", prefix, os.Getpid()%100000), sh: sh}
	args := append([]string{"up", "--name", l.name, "--nodes", fmt.Sprint(nodes)}, extra...)
	if out, err := exec.Command("bash", append([]string{sh}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("lab up: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("bash", sh, "down", "--name", l.name).Run() })
	return l
}

// sim returns a command running this test binary as sim inside host.
func (l *lab) sim(host string, args ...string) *exec.Cmd {
	c := exec.Command("bash", append([]string{l.sh, "exec", "--name", l.name, host, "--", os.Args[0]}, args...)...)
	c.Env = append(os.Environ(), "SIM_TEST_AS_SIM=1")
	return c
}

func (l *lab) run(host string, args ...string) string {
	l.t.Helper()
	var o, e bytes.Buffer
	c := l.sim(host, args...)
	c.Stdout, c.Stderr = &o, &e
	if err := c.Run(); err != nil {
		l.t.Fatalf("%s: sim %s: %v\n%s%s", host, strings.Join(args, " "), err, o.String(), e.String())
	}
	return o.String()
}

func (l *lab) bytes(host string) (rx, tx int64) {
	out, err := exec.Command("bash", l.sh, "bytes", "--name", l.name, host).Output()
	if err != nil {
		l.t.Fatal(err)
	}
	fmt.Sscan(string(out), &rx, &tx)
	return
}

// serve starts `sim serve` in the server namespace on port. Its log is
// kept, and shown when the test fails or runs with -v.
func (l *lab) serve(store string, port int, extra ...string) string {
	l.t.Helper()
	logf, err := os.CreateTemp("", "sim-lab-serve-*.log")
	if err != nil {
		l.t.Fatal(err)
	}
	os.Remove(logf.Name())
	addr := fmt.Sprintf("198.18.0.1:%d", port)
	c := l.sim("srv", append([]string{"--store", store, "serve", "--listen", addr}, extra...)...)
	c.Stderr = logf
	if err := c.Start(); err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() {
		c.Process.Signal(syscall.SIGTERM)
		c.Wait()
		if l.t.Failed() || testing.Verbose() {
			b, _ := os.ReadFile("/proc/self/fd/" + fmt.Sprint(logf.Fd()))
			l.t.Logf("sim serve log (%s):\n%s", addr, b)
		}
		logf.Close()
	})
	probe := fmt.Sprintf("exec 3<>/dev/tcp/198.18.0.1/%d", port)
	for i := 0; i < 100; i++ {
		if exec.Command("bash", l.sh, "exec", "--name", l.name, "n1", "--", "bash", "-c", probe).Run() == nil {
			return "http://" + addr
		}
		time.Sleep(100 * time.Millisecond)
	}
	l.t.Fatal("sim serve did not come up in the lab")
	return ""
}

type checkoutOut struct {
	Written  int `json:"written"`
	Removed  int `json:"removed"`
	Transfer struct {
		WireBytes int64 `json:"wire_bytes"`
		NewBlobs  int64 `json:"new_blobs"`
	} `json:"transfer"`
}

// TestLabHTTP: a server and 4 nodes in network namespaces. Each node
// installs v1 into an empty directory, updates to v2 and v3 and rolls
// back to v2, over HTTP, every result compared exactly with the source.
// Then: a golden-client capture sends only what changed, an interrupted
// install resumes, a corrupt server object is refused, a push without
// the token is refused.
func TestLabHTTP(t *testing.T) {
	c := corpus(t)
	// n3's link is slow so that its install can be cut mid-way.
	l := newLab(t, 4, "--node-rate", "1gbit", "--server-rate", "1gbit", "--slow-node", "3", "--slow-rate", "100mbit")
	base := t.TempDir()
	srvStore := filepath.Join(base, "server")
	ok(t, srvStore, "init")
	for _, v := range []string{"v1", "v2", "v3"} {
		ok(t, srvStore, "commit", filepath.Join(c, v), "--image", "deb", "-m", v)
		ok(t, srvStore, "tag", v, "deb")
	}
	tokens := filepath.Join(base, "tokens")
	os.WriteFile(tokens, []byte("labtoken\n"), 0o600)
	url := l.serve(srvStore, 7480, "--token-file", tokens)

	var wg gosync.WaitGroup
	var mu gosync.Mutex
	wire := map[string]int64{}
	for i := 1; i <= 4; i++ {
		wg.Add(1)
		go func(n string) {
			defer wg.Done()
			st := filepath.Join(base, n+"-store")
			root := filepath.Join(base, n+"-root")
			for _, v := range []string{"v1", "v2", "v3", "v2"} {
				var out checkoutOut
				if err := json.Unmarshal([]byte(l.run(n, "--store", st, "checkout", "--from", url, v, root, "--json")), &out); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				wire[n+" "+v] += out.Transfer.WireBytes
				mu.Unlock()
				if d, err := snapshottest.Diff(filepath.Join(c, v), root); err != nil || len(d) > 0 {
					t.Errorf("%s after %s: %v %v", n, v, err, d[:min(len(d), 5)])
				}
			}
		}(fmt.Sprintf("n%d", i))
	}
	wg.Wait()
	t.Logf("wire bytes per node step: %v", wire)
	if w := wire["n1 v3"]; w == 0 || w > 20000 {
		t.Errorf("update v2→v3 moved %d bytes; want ≤ 20 kB", w)
	}
	if w := wire["n1 v2"]; w != 0 && w > 30<<20 {
		t.Errorf("v1→v2 and back moved %d bytes", w)
	}

	// Golden-client capture from a node: edit one file, only it moves.
	golden := filepath.Join(base, "n1-root")
	os.WriteFile(filepath.Join(golden, "etc/motd"), []byte("captured\n"), 0o644)
	_, tx0 := l.bytes("n2")
	out := l.run("n2", "commit", golden, "--image", "golden", "--remote", url, "--token-file", tokens)
	_, tx1 := l.bytes("n2")
	if got := ok(t, srvStore, "cat", "golden", "/etc/motd"); got != "captured\n" {
		t.Errorf("captured motd: %q (%s)", got, out)
	}
	t.Logf("first capture of a tree the server mostly has: %d bytes sent", tx1-tx0)
	os.WriteFile(filepath.Join(golden, "etc/issue"), []byte("edited again\n"), 0o644)
	_, tx0 = l.bytes("n2")
	l.run("n2", "commit", golden, "--image", "golden", "--remote", url, "--token-file", tokens)
	_, tx1 = l.bytes("n2")
	if tx1-tx0 > 60000 {
		t.Errorf("re-capture after one edit sent %d bytes", tx1-tx0)
	}
	t.Logf("re-capture after one edit: %d bytes sent", tx1-tx0)

	// An interrupted install (killed mid-transfer on n3's 100 Mbit link)
	// resumes with only what is missing.
	st := filepath.Join(base, "n3-fresh")
	root := filepath.Join(base, "n3-fresh-root")
	cmd := l.sim("n3", "--store", st, "checkout", "--from", url, "v2", root)
	rx0, _ := l.bytes("n3")
	cmd.Start()
	time.Sleep(2500 * time.Millisecond)
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	rx1, _ := l.bytes("n3")
	var res checkoutOut
	json.Unmarshal([]byte(l.run("n3", "--store", st, "checkout", "--from", url, "v2", root, "--json", "--force")), &res)
	rx2, _ := l.bytes("n3")
	snapshottest.Equal(t, filepath.Join(c, "v2"), root)
	t.Logf("install cut after %d bytes; the resumed one moved %d bytes (%d on the link)", rx1-rx0, res.Transfer.WireBytes, rx2-rx1)
	if rx1-rx0 < 10<<20 || res.Transfer.WireBytes > 70<<20-(rx1-rx0)+(8<<20) {
		t.Errorf("resume: first try %d bytes, second %d: what arrived was not kept", rx1-rx0, res.Transfer.WireBytes)
	}

	// A corrupt object on a server is detected by the node and refused.
	bad := filepath.Join(base, "bad-server")
	ok(t, bad, "init")
	src := filepath.Join(base, "small")
	writeFiles(t, src, map[string]string{"data": strings.Repeat("sim lab corrupt test\n", 20000)})
	ok(t, bad, "commit", src, "--image", "small")
	packs, _ := filepath.Glob(filepath.Join(bad, "packs", "*", "*.pack"))
	b, _ := os.ReadFile(packs[0])
	b[200] ^= 0x10
	os.WriteFile(packs[0], b, 0o644)
	badURL := l.serve(bad, 7481)
	e := l.sim("n4", "--store", filepath.Join(base, "n4-bad"), "checkout", "--from", badURL, "small", filepath.Join(base, "n4-bad-root"))
	if out, err := e.CombinedOutput(); err == nil {
		t.Errorf("a node accepted a corrupt object: %s", out)
	} else {
		t.Logf("corrupt object refused: %s", bytes.TrimSpace(out))
	}
	l.run("n4", "--store", filepath.Join(base, "n4-bad"), "fsck", "--read-data")

	// A push without the token is refused.
	e = l.sim("n4", "--store", filepath.Join(base, "n4-store"), "push", url, "v2")
	if out, err := e.CombinedOutput(); err == nil || !strings.Contains(string(out), "401") {
		t.Errorf("push without token: %v %s", err, out)
	}
}
