package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/systemimager/sim/snapshot/snapshottest"
)

type showTree struct {
	Tree    string `json:"tree"`
	Message string `json:"message"`
}

// TestImportExportCLI: sim export and sim import oci from the command
// line: outputs, a round trip, the same bytes twice, usage errors.
func TestImportExportCLI(t *testing.T) {
	st := newStore(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	writeFiles(t, src, map[string]string{"etc/motd": "hello\n", "bin/sh": "#!"})
	ok(t, st, "commit", src, "--image", "img")
	var orig showTree
	decodeJSON(t, ok(t, st, "show", "img", "--json"), &orig)

	layout := filepath.Join(dir, "layout")
	r := sim(t, st, "export", "img", "--format", "oci", "-o", layout)
	if r.code != 0 || !strings.Contains(r.stderr, "as img:") {
		t.Fatalf("export oci: %+v", r)
	}
	id := lastLine(ok(t, st, "import", "oci", layout, "--image", "back", "-m", "round trip"))
	var back showTree
	decodeJSON(t, ok(t, st, "show", id, "--json"), &back)
	if back.Tree != orig.Tree || !strings.HasPrefix(back.Message, "round trip\n\nOCI-Source: oci-layout img\n") {
		t.Errorf("import of the export: %+v; want tree %s", back, orig.Tree)
	}
	var res struct {
		Commit string `json:"commit"`
		Kind   string `json:"kind"`
		Layers int    `json:"layers"`
		Config struct{ Cmd []string }
	}
	decodeJSON(t, ok(t, st, "import", "oci", layout, "--image", "back", "--tag", "img", "--json"), &res)
	if res.Kind != "oci-layout" || res.Layers != 1 || strings.Join(res.Config.Cmd, " ") != "/bin/sh" {
		t.Errorf("import --json: %+v", res)
	}

	file := filepath.Join(dir, "img.tar")
	ok(t, st, "export", "img", "-o", file)
	stdout := ok(t, st, "export", "img", "--format", "tar", "-o", "-")
	b, err := os.ReadFile(file)
	if err != nil || !bytes.Equal(b, []byte(stdout)) || len(b) < 1024 {
		t.Errorf("export to a file (%d bytes, %v) and to stdout (%d bytes) differ", len(b), err, len(stdout))
	}
	if out, err := exec.Command("tar", "-tvf", file).CombinedOutput(); err != nil || !strings.Contains(string(out), "etc/motd") {
		t.Errorf("tar -t of the export: %v\n%s", err, out)
	}

	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"export", "img"}, 2, "-o OUT is required"},
		{[]string{"export", "img", "--format", "zip", "-o", "x"}, 2, `--format is tar or oci, not "zip"`},
		{[]string{"export", "nosuch", "-o", filepath.Join(dir, "x.tar")}, 1, `unknown ref "nosuch"`},
		{[]string{"export", "img", "--format", "oci", "-o", src}, 1, "neither empty nor an OCI image layout"},
		{[]string{"export", "img", "--format", "oci", "--tag", "bad tag", "-o", layout}, 1, "cannot name an image"},
		{[]string{"import", "oci", layout}, 2, "--image NAME is required"},
		{[]string{"import", "oci", filepath.Join(dir, "nope"), "--image", "x"}, 1, "no such file or directory"},
		{[]string{"import", "oci", file, "--image", "x"}, 1, "neither a docker save archive"},
	} {
		r := sim(t, st, tc.args...)
		if r.code != tc.code || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("sim %s: exit %d, %q; want %d and %q", strings.Join(tc.args, " "), r.code, r.stderr, tc.code, tc.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "x.tar")); !os.IsNotExist(err) {
		t.Errorf("a failed export left its file: %v", err)
	}
	if s := ok(t, st, "fsck"); !strings.Contains(s, "no errors") {
		t.Errorf("fsck: %s", s)
	}
}

// TestCorpusOCI takes a real Debian tree (the corpus' v1, 203 MB) through
// OCI: commit, export as an OCI layout, import it back (the very same
// tree), skopeo's docker-archive of it (the same tree again), and umoci
// unpack of the export, which must be v1 exactly; podman runs it. It logs
// the times.
func TestCorpusOCI(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the corpus through OCI takes a minute")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (the corpus' owners and devices)")
	}
	c := corpus(t)
	st := newStore(t)
	v1 := filepath.Join(c, "v1")
	timed := func(what string, args ...string) string {
		t.Helper()
		start := time.Now()
		out := ok(t, st, args...)
		t.Logf("%s: %.2f s", what, time.Since(start).Seconds())
		return out
	}
	timed("commit v1", "commit", v1, "--image", "deb")
	var orig showTree
	decodeJSON(t, ok(t, st, "show", "deb", "--json"), &orig)
	layout := filepath.Join(t.TempDir(), "layout")
	var ex struct{ Size, Bytes int64 }
	decodeJSON(t, timed("export --format oci", "export", "deb", "--format", "oci", "-o", layout, "--json"), &ex)
	t.Logf("layer: %.1f MB gzip for %.1f MB of files", float64(ex.Size)/1e6, float64(ex.Bytes)/1e6)
	id := lastLine(timed("import oci (layout)", "import", "oci", layout, "--image", "deb-back"))
	var back showTree
	decodeJSON(t, ok(t, st, "show", id, "--json"), &back)
	if back.Tree != orig.Tree {
		t.Errorf("v1 → export → import: tree %s, want %s", back.Tree, orig.Tree)
	}
	tarFile := filepath.Join(t.TempDir(), "v1.tar")
	timed("export --format tar", "export", "deb", "-o", tarFile)

	if _, err := exec.LookPath("skopeo"); err == nil {
		da := filepath.Join(t.TempDir(), "v1-docker.tar")
		if out, err := exec.Command("skopeo", "copy", "--quiet", "oci:"+layout+":deb", "docker-archive:"+da+":sim/deb:v1").CombinedOutput(); err != nil {
			t.Fatalf("skopeo copy: %v\n%s", err, out)
		}
		id := lastLine(timed("import oci (docker-archive)", "import", "oci", da, "--image", "deb-docker"))
		decodeJSON(t, ok(t, st, "show", id, "--json"), &back)
		if back.Tree != orig.Tree {
			t.Errorf("v1 → export → skopeo docker-archive → import: tree %s, want %s", back.Tree, orig.Tree)
		}
	} else {
		t.Log("skopeo not installed: docker-archive leg skipped")
	}
	if _, err := exec.LookPath("umoci"); err == nil {
		bundle := filepath.Join(t.TempDir(), "bundle")
		start := time.Now()
		if out, err := exec.Command("umoci", "unpack", "--image", layout+":deb", bundle).CombinedOutput(); err != nil {
			t.Fatalf("umoci unpack: %v\n%s", err, out)
		}
		t.Logf("umoci unpack: %.2f s", time.Since(start).Seconds())
		snapshottest.Equal(t, v1, filepath.Join(bundle, "rootfs"))
	} else {
		t.Log("umoci not installed: unpack leg skipped")
	}
	// And it runs under podman (runc: crun cannot start containers in
	// every sandbox; the ulimits are ones an unprivileged sandbox allows).
	if _, err := exec.LookPath("podman"); err != nil {
		t.Log("podman not installed: run leg skipped")
	} else if _, err := exec.LookPath("runc"); err != nil {
		t.Log("runc not installed: podman run leg skipped")
	} else {
		// podman names the image after the layout's path, which must be
		// lower-case (t.TempDir's is not).
		pl, err := os.MkdirTemp("", "sim-podman-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(pl)
		ok(t, st, "export", "deb", "--format", "oci", "-o", pl)
		start := time.Now()
		out, err := exec.Command("podman", "run", "--runtime", "runc", "--rm", "--rmi", "--network", "none",
			"--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
			"oci:"+pl+":deb", "/bin/sh", "-c", "echo \"$PATH\"; cat /etc/debian_version").CombinedOutput()
		t.Logf("podman run: %.2f s", time.Since(start).Seconds())
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if err != nil || len(lines) < 2 || !strings.HasPrefix(lines[len(lines)-1], "12.") ||
			lines[len(lines)-2] != "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" {
			t.Errorf("podman run of the export: %v\n%s", err, out)
		}
	}
	if s := ok(t, st, "fsck"); !strings.Contains(s, "no errors") {
		t.Errorf("fsck: %s", s)
	}
}
