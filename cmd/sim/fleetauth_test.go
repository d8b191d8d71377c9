package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/systemimager/sim/client/install"
	"github.com/systemimager/sim/store"
)

// nodeToken makes node's own token on the server store srv (sim token add
// NODE --role node --node NODE) and puts it where the node's installer
// would have, nodeStore/token (mode 0600): what a node command and its
// agent then use.
func nodeToken(t testing.TB, srv, node, nodeStore string) string {
	t.Helper()
	tok := lastLine(ok(t, srv, "token", "add", node, "--role", "node", "--node", node))
	if err := os.MkdirAll(nodeStore, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(nodeStore, install.TokenName), []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return tok
}

// httpCall makes one request to the server at url with token (none if
// "") and returns the status, the body and the Cache-Control header.
func httpCall(t *testing.T, method, url, token, body string) (int, string, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b), resp.Header.Get("Cache-Control")
}

// runFor runs c until it exits, failing the test if it has not within
// limit (a guard: the commands run here end by themselves).
func runFor(t *testing.T, c *exec.Cmd, limit time.Duration) (string, error) {
	t.Helper()
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	select {
	case err := <-done:
		return out.String(), err
	case <-time.After(limit):
		c.Process.Kill()
		<-done
		t.Fatalf("%s still running after %v:\n%s", strings.Join(c.Args, " "), limit, out.String())
		return "", nil
	}
}

// tinyImage commits a small tree as image name on the server store srv.
func tinyImage(t *testing.T, srv, name string) string {
	t.Helper()
	src := t.TempDir()
	writeFiles(t, src, map[string]string{"etc/motd": "tiny\n", "etc/hosts": "127.0.0.1\tlocalhost\n", "usr/bin/tool": "v1\n"})
	ok(t, srv, "commit", src, "--image", name, "-m", name)
	return head(t, srv, name)
}

// TestNodeTokenFromStore: the node commands speak for their node with
// the token in its store when no --token-file or $SIM_TOKEN says
// otherwise, and trust the CA in its store (ca.pem) for an https server,
// and the server wants exactly that node's token: without one sim update
// is refused (401, naming the node and the fix) and sim agent stops at
// once saying it needs a node token; with the store's token both work
// (the agent's reports reach the server); another node's token given
// explicitly wins over the store's and is refused (403).
func TestNodeTokenFromStore(t *testing.T) {
	srv := newStore(t)
	commit := tinyImage(t, srv, "tiny")
	ok(t, srv, "node", "add", "n1", "--image", "tiny")
	ok(t, srv, "node", "add", "n2", "--image", "tiny")
	cert, key := selfSigned(t, t.TempDir())
	url := strings.Replace(startServer(t, srv, "--tls-cert", cert, "--tls-key", key), "http://", "https://", 1)

	root := filepath.Join(t.TempDir(), "n1")
	nodeStore := filepath.Join(root, install.StoreDir)
	ok(t, nodeStore, "checkout", "--from", url, "--ca", cert, "tiny", root, "--no-sync")
	in := map[string]any{"node": "n1", "image": "tiny", "commit": commit, "server": url, "hostname": "n1",
		"time": time.Now().UTC(), "disk": "/dev/null", "layout_commit": strings.Repeat("0", 64)}
	b, _ := json.Marshal(in)
	if err := os.WriteFile(install.InstalledPath(nodeStore), b, 0o644); err != nil {
		t.Fatal(err)
	}
	update := []string{"--store", nodeStore, "update", "--root", root, "--dry-run"}

	// No CA: the server is not trusted; then the store's ca.pem.
	out, err := runFor(t, simProcess(update...), time.Minute)
	if err == nil || !strings.Contains(out, "certificate") {
		t.Errorf("update without the server's CA: %v\n%s\nwant a certificate error", err, out)
	}
	if err := os.WriteFile(filepath.Join(nodeStore, install.CAName), []byte(readFile(t, cert)), 0o644); err != nil {
		t.Fatal(err)
	}

	// No token anywhere.
	out, err = runFor(t, simProcess(update...), time.Minute)
	if err == nil || !strings.Contains(out, "401") || !strings.Contains(out, "needs the node token of n1") || !strings.Contains(out, "sim token add node-n1 --role node --node n1") {
		t.Errorf("update without a token: %v\n%s\nwant a 401 naming n1 and the fix", err, out)
	}
	agent := []string{"--store", nodeStore, "agent", "--root", root, "--poll", "1s"}
	out, err = runFor(t, simProcess(agent...), time.Minute)
	if err == nil || !strings.Contains(out, "node n1 has no node token, and needs one") || !strings.Contains(out, "sim token add node-n1 --role node --node n1") {
		t.Errorf("agent without a token: %v\n%s\nwant it to stop saying it needs a node token", err, out)
	}

	// n1's token in its store, n2's in a file.
	nodeToken(t, srv, "n1", nodeStore)
	n2 := filepath.Join(t.TempDir(), "n2.token")
	os.WriteFile(n2, []byte(lastLine(ok(t, srv, "token", "add", "n2", "--role", "node"))+"\n"), 0o600)
	if out, err := runFor(t, simProcess(update...), time.Minute); err != nil || !strings.Contains(out, "n1 ") {
		t.Errorf("update --dry-run with the store's token: %v\n%s", err, out)
	}
	out, err = runFor(t, simProcess(append(update, "--token-file", n2)...), time.Minute)
	if err == nil || !strings.Contains(out, "403") || !strings.Contains(out, "token n2 (role node, node n2) may not") {
		t.Errorf("update with n2's token by --token-file: %v\n%s\nwant the flag to win, and a 403", err, out)
	}
	c := simProcess(update...)
	c.Env = append(c.Env, "SIM_TOKEN="+strings.TrimSpace(readFile(t, n2)))
	if out, err := runFor(t, c, time.Minute); err == nil || !strings.Contains(out, "403") {
		t.Errorf("update with n2's token in $SIM_TOKEN: %v\n%s\nwant $SIM_TOKEN to win, and a 403", err, out)
	}

	// The agent with the store's token reports.
	a := simProcess(agent...)
	var alog bytes.Buffer
	a.Stdout, a.Stderr = &alog, &alog
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { a.Wait(); close(exited) }()
	defer func() { a.Process.Signal(syscall.SIGTERM); <-exited }()
	waitFor(t, "n1's agent reports", time.Minute, func() (bool, string) {
		select {
		case <-exited:
			t.Fatalf("the agent exited:\n%s", alog.String())
		default:
		}
		var nodes nodesOut
		decodeJSON(t, ok(t, srv, "nodes", "--json"), &nodes)
		for _, n := range nodes.Nodes {
			if n.Name == "n1" && n.LastSeen != nil && n.Current == commit {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%+v", nodes.Nodes)
	})
}

// TestEnrollInstall: sim install onto a loop device with an enroll boot
// token (the one a kernel command line shares) leaves the node a token
// of its own, node-NAME, minted by the server with its config: in the
// node's store (mode 0600), working as that node's, while the boot
// token is nowhere on the disk; the install's reports went with it. An
// anonymous config request mints nothing; an enroll token's config
// answer is no-store, and a later enrolment revokes the token before.
// The enroll token itself reports nothing and pushes nothing.
func TestEnrollInstall(t *testing.T) {
	if testing.Short() {
		t.Skip("loop-device install: skipped in -short mode")
	}
	if os.Geteuid() != 0 {
		t.Skip("loop-device install: needs root (losetup, mkfs, mount)")
	}
	for _, tool := range []string{"losetup", "mkfs.ext4", "blkid"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("loop-device install: no %s", tool)
		}
	}
	dir := t.TempDir()
	srv := filepath.Join(dir, "store")
	ok(t, srv, "init")
	tinyImage(t, srv, "tiny")
	writeFiles(t, dir, map[string]string{"layout": "sim-layout 1\nbootloader none\npart root rest ext4 / label=root\n"})
	ok(t, srv, "layout", "set", "tiny", filepath.Join(dir, "layout"))
	ok(t, srv, "node", "add", "n5", "--mac", "52:54:00:5e:02:05", "--image", "tiny")
	boot := lastLine(ok(t, srv, "token", "add", "boot", "--role", "enroll"))
	bootFile := filepath.Join(dir, "boot.token")
	os.WriteFile(bootFile, []byte(boot+"\n"), 0o600)
	url := startServer(t, srv)

	tokens := func() map[string]store.Token {
		var list []store.Token
		decodeJSON(t, ok(t, srv, "token", "list", "--json"), &list)
		m := map[string]store.Token{}
		for _, tk := range list {
			m[tk.Name] = tk
		}
		return m
	}
	var cfg install.Config
	// Anonymous: the config, no token.
	code, body, cache := httpCall(t, "GET", url+"/v1/install/config?node=n5", "", "")
	if err := json.Unmarshal([]byte(body), &cfg); code != 200 || err != nil || cfg.Node != "n5" || cfg.Token != "" || cache != "no-cache" {
		t.Errorf("anonymous config: %d %q (Cache-Control %q); want n5's, without a token", code, body, cache)
	}
	if _, ok := tokens()["node-n5"]; ok {
		t.Error("an anonymous config request minted a token")
	}
	// The enroll token: the config with a new node token, not cached.
	code, body, cache = httpCall(t, "GET", url+"/v1/install/config?mac=52-54-00-5e-02-05", boot, "")
	cfg = install.Config{}
	if err := json.Unmarshal([]byte(body), &cfg); code != 200 || err != nil || cfg.Node != "n5" || !strings.HasPrefix(cfg.Token, "sim_") || cache != "no-store" {
		t.Fatalf("config with the enroll token: %d %q (Cache-Control %q); want n5's with a token, no-store", code, body, cache)
	}
	first := cfg.Token
	if code, body, _ := httpCall(t, "GET", url+"/v1/whoami", first, ""); code != 200 || !strings.Contains(body, `"name":"node-n5","role":"node","node":"n5"`) {
		t.Errorf("whoami with the minted token: %d %s", code, body)
	}
	// The enroll token reads, and nothing else.
	for _, c := range []struct{ method, path, body, want string }{
		{"POST", "/v1/install/status", `{"node":"n5","step":"fetch","state":"running"}`, "token boot (role enroll) may not"},
		{"POST", "/v1/refs", `{"commits":[],"updates":[]}`, "needs an admin token"},
		{"GET", "/v1/agent/assignment?node=n5", "", "needs the node token of n5"},
	} {
		if code, body, _ := httpCall(t, c.method, url+c.path, boot, c.body); code != 403 || !strings.Contains(body, c.want) {
			t.Errorf("%s %s with the enroll token: %d %q; want 403 %q", c.method, c.path, code, body, c.want)
		}
	}
	if r := sim(t, srv, "push", "--token-file", bootFile, url, "tiny"); r.code == 0 || !strings.Contains(r.stderr, "403") {
		t.Errorf("push with the enroll token: %+v; want a 403", r)
	}

	// The install.
	img := filepath.Join(dir, "disk.raw")
	if out, err := exec.Command("truncate", "-s", "96M", img).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	out, err := exec.Command("losetup", "-f", "--show", "-P", img).Output()
	if err != nil {
		t.Skipf("losetup: %v (no loop devices here?)", err)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	r := sim(t, filepath.Join(dir, "unused"), "install", "--from", url, "--node", "n5", "--disk", dev, "--target", filepath.Join(dir, "target"), "--token-file", bootFile)
	if r.code != 0 {
		t.Fatalf("install: %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	mnt := filepath.Join(dir, "inspect")
	os.MkdirAll(mnt, 0o755)
	// Another mount namespace (a parallel lab test) may hold the just
	// unmounted filesystem a moment: EBUSY is retried, briefly.
	for i := 0; ; i++ {
		err = unix.Mount(dev+"p1", mnt, "ext4", unix.MS_RDONLY, "")
		if err != unix.EBUSY || i == 40 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("mount %sp1: %v", dev, err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, 0) })

	tf := filepath.Join(mnt, install.StoreDir, install.TokenName)
	b, err := os.ReadFile(tf)
	mine := strings.TrimSpace(string(b))
	if err != nil || !strings.HasPrefix(mine, "sim_") || mine == boot || mine == first {
		t.Fatalf("the node's token %s: %q %v; want a new token, not the boot token", tf, b, err)
	}
	if fi, err := os.Stat(tf); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the node's token file mode: %v %v; want 0600", fi, err)
	}
	if code, body, _ := httpCall(t, "GET", url+"/v1/whoami", mine, ""); code != 200 || !strings.Contains(body, `"name":"node-n5","role":"node","node":"n5"`) {
		t.Errorf("whoami with the node's token: %d %s", code, body)
	}
	if code, body, _ := httpCall(t, "GET", url+"/v1/whoami", first, ""); code != 401 || !strings.Contains(body, "unknown or revoked") {
		t.Errorf("the token minted before, after the install: %d %s; want it revoked", code, body)
	}
	// The boot token is nowhere on the disk.
	filepath.WalkDir(mnt, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if b, _ := os.ReadFile(p); bytes.Contains(b, []byte(boot)) {
				t.Errorf("the boot token is in %s", p)
			}
		}
		return nil
	})
	toks := tokens()
	if tk := toks["node-n5"]; tk.Role != "node" || tk.Node != "n5" {
		t.Errorf("sim token list: node-n5 is %+v; want role node, node n5 (all: %+v)", tk, toks)
	}
	if s := ok(t, srv, "token", "list"); !strings.Contains(s, "node-n5") || strings.Contains(s, mine) {
		t.Errorf("sim token list:\n%s", s)
	}
	// Its reports (which the enroll token may not make) reached the
	// server: they went with the node's new token.
	_, body, _ = httpCall(t, "GET", url+"/v1/install/status", "", "")
	var last map[string]install.Status
	if err := json.Unmarshal([]byte(body), &last); err != nil || last["n5"].State != install.Done {
		t.Errorf("install statuses: %s; want n5 done", body)
	}
	// Installed, n5 is nobody's to enroll: the shared boot token mints
	// no token for it (it would let anyone on the boot network speak as
	// the running node), an admin's still does; after sim node reinstall
	// the boot token enrols it again.
	if code, body, _ := httpCall(t, "GET", url+"/v1/install/config?node=n5", boot, ""); code != 403 || !strings.Contains(body, "node n5 was installed") || !strings.Contains(body, "sim node reinstall n5") {
		t.Errorf("config with the enroll token for the installed n5: %d %q; want 403 naming the install and the way out", code, body)
	}
	if code, body, _ := httpCall(t, "GET", url+"/v1/whoami", mine, ""); code != 200 {
		t.Errorf("the refused enrolment revoked n5's own token: %d %s", code, body)
	}
	ok(t, srv, "node", "reinstall", "n5")
	if code, body, _ := httpCall(t, "GET", url+"/v1/install/config?node=n5", boot, ""); code != 200 || !strings.Contains(body, `"token":"sim_`) {
		t.Errorf("config with the enroll token after sim node reinstall n5: %d %q; want a token minted", code, body)
	}
}
