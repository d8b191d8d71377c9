package main

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/systemimager/sim/snapshot/snapshottest"
)

// TestSignedCommits drives signing and the trust policy the way an admin
// and a node would: keys, signed commits and tags, sim verify, a node and
// a mirror that require signatures (unsigned commits refused with the
// commit and the key named, before anything is written), a server that
// refuses unsigned pushes, and the signatures travelling with push,
// clone, pull and checkout --from.
func TestSignedCommits(t *testing.T) {
	keys := t.TempDir()
	pubLine := lastLine(ok(t, newStore(t), "key", "gen", "admin", "--dir", keys))
	if !strings.HasPrefix(pubLine, "sim-ed25519 ") || !strings.HasSuffix(pubLine, " admin") {
		t.Fatalf("key gen printed %q", pubLine)
	}
	ok(t, newStore(t), "key", "gen", "eve", "--dir", keys)
	adminKey, adminPub := filepath.Join(keys, "admin.key"), filepath.Join(keys, "admin.pub")
	eveKey := filepath.Join(keys, "eve.key")
	if fi, _ := os.Stat(adminKey); fi.Mode().Perm() != 0o600 {
		t.Errorf("private key mode %04o", fi.Mode().Perm())
	}
	if r := sim(t, newStore(t), "key", "gen", "admin", "--dir", keys); r.code != 1 || !strings.Contains(r.stderr, "not replacing") {
		t.Errorf("key gen over an existing key: %+v", r)
	}

	st := newStore(t)
	src := filepath.Join(t.TempDir(), "src")
	writeFiles(t, src, map[string]string{"etc/motd": "v1\n", "usr/bin/tool": strings.Repeat("x", 70000)})
	v1 := lastLine(ok(t, st, "commit", src, "--image", "hpc", "--sign", adminKey, "-m", "v1"))
	writeFiles(t, src, map[string]string{"etc/motd": "v2\n"})
	v2 := lastLine(ok(t, st, "commit", src, "--image", "hpc", "-m", "v2 unsigned"))
	ok(t, st, "tag", "--sign", eveKey, "hpc-eve", "hpc")

	// Nothing trusted yet: verify says so, and fails.
	if r := sim(t, st, "verify", "hpc~1"); r.code != 1 || !strings.Contains(r.stderr, "trusts no key") || !strings.Contains(r.stdout, "untrusted") {
		t.Errorf("verify without trusted keys: %+v", r)
	}
	ok(t, st, "trust", "add", adminPub)
	if s := ok(t, st, "verify", v1); !strings.Contains(s, "good signature by admin") {
		t.Errorf("verify v1: %s", s)
	}
	var vj struct {
		TrustedBy  string `json:"trusted_by"`
		Signatures []struct {
			Name    string
			Trusted bool
			Valid   bool
		}
	}
	r := sim(t, st, "verify", "hpc", "--json")
	decodeJSON(t, r.stdout, &vj)
	if r.code != 1 || vj.TrustedBy != "" || len(vj.Signatures) != 1 || vj.Signatures[0].Name != "eve" || vj.Signatures[0].Trusted || !vj.Signatures[0].Valid {
		t.Errorf("verify --json of the eve-signed head: %+v %+v", r, vj)
	}
	if s := ok(t, st, "trust", "list"); !strings.Contains(s, "admin") || !strings.Contains(s, "require-signature off") {
		t.Errorf("trust list: %s", s)
	}

	// A local checkout under the policy.
	dst := filepath.Join(t.TempDir(), "co")
	if r := sim(t, st, "checkout", "--require-signature", "hpc", dst); r.code != 1 ||
		!strings.Contains(r.stderr, "refusing to check out") || !strings.Contains(r.stderr, v2[:12]) ||
		!strings.Contains(r.stderr, "trusted: admin (ed25519:") || !strings.Contains(r.stderr, "(says eve)") {
		t.Errorf("checkout of a commit signed by an untrusted key: %+v", r)
	}
	if _, err := os.Stat(dst); err == nil {
		t.Error("a refused checkout created its target")
	}
	ok(t, st, "checkout", "--require-signature", "hpc~1", dst)
	ok(t, st, "trust", "require", "on")
	if r := sim(t, st, "checkout", "hpc", dst); r.code != 1 || !strings.Contains(r.stderr, "refusing to check out") {
		t.Errorf("store policy ignored: %+v", r)
	}
	if r := sim(t, st, "commit", src, "--image", "other"); r.code != 0 || !strings.Contains(r.stderr, "is not signed, and this store requires signatures") {
		t.Errorf("unsigned commit on a store requiring signatures: %+v", r)
	}
	ok(t, st, "trust", "require", "off")

	// The server: a node that trusts admin and requires signatures.
	tokens := filepath.Join(t.TempDir(), "tokens")
	os.WriteFile(tokens, []byte("s3cret\n"), 0o600)
	url := startServer(t, st, "--token-file", tokens)
	node := newStore(t)
	ok(t, node, "trust", "add", adminPub)
	ok(t, node, "trust", "require", "on")
	root := filepath.Join(t.TempDir(), "root")
	r = sim(t, node, "checkout", "--from", url, "hpc", root)
	if r.code != 1 || !strings.Contains(r.stderr, "refusing commit from "+url) || !strings.Contains(r.stderr, v2[:12]) {
		t.Fatalf("node took an unsigned image: %+v", r)
	}
	if _, err := os.Stat(root); err == nil {
		t.Error("a refused node checkout created its target")
	}
	if s := ok(t, node, "fsck"); !strings.Contains(s, "0 blobs") {
		t.Errorf("a refused fetch stored objects: %s", s)
	}
	// The admin signs v2 on the server (forwarded to sim serve): the node
	// takes it, with its signature.
	ok(t, st, "sign", "hpc", "--key", adminKey)
	ok(t, node, "checkout", "--from", url, "hpc", root)
	snapshottest.Equal(t, src, root)
	if s := ok(t, node, "verify", "hpc"); !strings.Contains(s, "good signature by admin") {
		t.Errorf("node lacks the signature: %s", s)
	}
	// Offline rollback from the node's store is checked too: v1 is
	// signed, the node only lacks it.
	ok(t, node, "checkout", "--from", url, v1, root)

	// A mirror requiring signatures clones only what is signed.
	mirror := filepath.Join(t.TempDir(), "mirror")
	ok(t, st, "clone", url, mirror)
	ok(t, mirror, "trust", "add", adminPub)
	if s := ok(t, mirror, "verify", v1); !strings.Contains(s, "good signature by admin") {
		t.Errorf("clone lost the signature of v1: %s", s)
	}
	if r := sim(t, mirror, "pull", "--require-signature", url, "hpc-eve"); r.code != 0 {
		t.Errorf("pull of a signed tag: %+v", r) // hpc-eve is v2, now signed by admin too
	}

	// Pushing to a server that requires signatures.
	ok(t, st, "trust", "require", "on")
	writeFiles(t, src, map[string]string{"etc/motd": "v3\n"})
	ok(t, mirror, "commit", src, "--image", "hpc", "-m", "v3 from the mirror")
	r = sim(t, mirror, "push", "--token-file", tokens, url, "hpc")
	if r.code != 1 || !strings.Contains(r.stderr, "403") || !strings.Contains(r.stderr, "refusing to move image hpc") {
		t.Errorf("unsigned push accepted: %+v", r)
	}
	if s := ok(t, st, "show", "hpc"); !strings.Contains(s, v2) {
		t.Errorf("server head moved by a refused push: %s", s)
	}
	ok(t, mirror, "sign", "hpc", "--key", adminKey)
	ok(t, mirror, "push", "--token-file", tokens, url, "hpc")
	if s := ok(t, st, "verify", "hpc"); !strings.Contains(s, "good signature by admin") {
		t.Errorf("pushed signature: %s", s)
	}
	// A capture straight into the server, signed.
	out := ok(t, st, "commit", src, "--image", "golden", "--remote", url, "--token-file", tokens, "--sign", adminKey)
	if s := ok(t, st, "verify", "golden"); !strings.Contains(s, "good signature by admin") {
		t.Errorf("captured commit %s: %s", out, s)
	}
	if r := sim(t, st, "commit", src, "--image", "golden2", "--remote", url, "--token-file", tokens); r.code != 1 || !strings.Contains(r.stderr, "refusing to move image golden2") {
		t.Errorf("unsigned capture accepted: %+v", r)
	}
	ok(t, st, "fsck", "--read-data")
	ok(t, node, "fsck", "--read-data")
	ok(t, mirror, "fsck", "--read-data")
}

// TestTokens: roles on a running server. Read tokens read a closed
// server, node tokens report only for their node, admin tokens push;
// revoked tokens stop working at once; --token-file keeps working.
func TestTokens(t *testing.T) {
	st := newStore(t)
	src := t.TempDir()
	writeFiles(t, src, map[string]string{"etc/motd": "v1\n"})
	ok(t, st, "commit", src, "--image", "hpc")
	tok := func(args ...string) string {
		t.Helper()
		return lastLine(ok(t, st, append([]string{"token", "add"}, args...)...))
	}
	read := tok("reader", "--role", "read")
	n01 := tok("n01", "--role", "node")
	admin := tok("ops", "--role", "admin")
	if r := sim(t, st, "token", "add", "x", "--role", "root"); r.code != 2 || !strings.Contains(r.stderr, "unknown role") {
		t.Errorf("bad role: %+v", r)
	}
	if r := sim(t, st, "token", "add", "n01", "--role", "read"); r.code != 1 || !strings.Contains(r.stderr, "already exists") {
		t.Errorf("duplicate name: %+v", r)
	}
	if s := ok(t, st, "token", "list"); !strings.Contains(s, "n01") || !strings.Contains(s, "node") || strings.Contains(s, n01) {
		t.Errorf("token list: %s", s)
	}
	files := filepath.Join(t.TempDir(), "tokens")
	os.WriteFile(files, []byte("legacy-admin\n"), 0o600)
	url := startServer(t, st, "--read-token", "--token-file", files)
	call := func(method, path, token, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, url+path, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		buf := make([]byte, 4096)
		n, _ := resp.Body.Read(buf)
		b.Write(buf[:n])
		return resp.StatusCode, b.String()
	}
	status := func(node string) string { return `{"node":"` + node + `","step":"fetch","state":"running"}` }
	for _, tc := range []struct {
		method, path, token, body string
		code                      int
		want                      string
	}{
		{"GET", "/v1/refs", "", "", 401, "needs a read token"},
		{"GET", "/v1/refs", "wrong", "", 401, "unknown or revoked token"},
		{"GET", "/v1/refs", read, "", 200, "hpc"},
		{"GET", "/v1/refs", n01, "", 200, "hpc"},
		{"GET", "/v1/whoami", n01, "", 200, `"role":"node","node":"n01"`},
		{"GET", "/v1/whoami", "legacy-admin", "", 200, `"role":"admin"`},
		{"POST", "/v1/install/status", read, status("n01"), 403, "needs a node token; token reader (role read) may not"},
		{"POST", "/v1/install/status", n01, status("n02"), 403, "token n01 (role node, node n01) may not"},
		{"POST", "/v1/install/status", n01, status("n01"), 204, ""},
		{"POST", "/v1/install/status", n01, `{"step":"config","state":"failed","mac":"52:54:00:00:00:01"}`, 204, ""},
		{"POST", "/v1/install/status", admin, status("n09"), 204, ""},
		{"POST", "/v1/refs", n01, `{}`, 403, "needs an admin token"},
		{"POST", "/v1/refs", read, `{}`, 403, "needs an admin token"},
		{"POST", "/v1/refs", admin, `{"commits":[],"updates":[]}`, 204, ""},
		{"POST", "/v1/refs", "legacy-admin", `{"commits":[],"updates":[],"bogus":1}`, 400, "unknown field"},
	} {
		code, body := call(tc.method, tc.path, tc.token, tc.body)
		if code != tc.code || !strings.Contains(body, tc.want) {
			t.Errorf("%s %s (token %.8s): %d %q; want %d %q", tc.method, tc.path, tc.token, code, body, tc.code, tc.want)
		}
	}
	_, body := call("GET", "/v1/install/status", read, "")
	var last map[string]struct{ Step string }
	json.Unmarshal([]byte(body), &last)
	if last["n01"].Step != "config" || last["n09"].Step != "fetch" {
		t.Errorf("statuses: %s (a report naming no node belongs to the token's node)", body)
	}
	// A node with the read token installs from the closed server; push
	// needs admin.
	node := newStore(t)
	tf := filepath.Join(t.TempDir(), "tok")
	os.WriteFile(tf, []byte(read+"\n"), 0o600)
	ok(t, node, "checkout", "--from", url, "--token-file", tf, "hpc", filepath.Join(t.TempDir(), "root"))
	writeFiles(t, src, map[string]string{"etc/motd": "v2\n"})
	ok(t, node, "commit", src, "--image", "hpc")
	if r := sim(t, node, "push", "--token-file", tf, url, "hpc"); r.code != 1 || !strings.Contains(r.stderr, "403") {
		t.Errorf("push with a read token: %+v", r)
	}
	os.WriteFile(tf, []byte(admin+"\n"), 0o600)
	ok(t, node, "push", "--token-file", tf, url, "hpc")
	ok(t, st, "token", "revoke", "ops") // forwarded to the running server
	if code, body := call("GET", "/v1/refs", admin, ""); code != 401 || !strings.Contains(body, "revoked") {
		t.Errorf("revoked token: %d %s", code, body)
	}
}
