package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/systemimager/sim/store"
)

// TestDiffExitCode: with --exit-code (and --quiet) sim diff exits like
// diff(1) and git diff --exit-code: 0 equal, 1 different, 2 trouble.
func TestDiffExitCode(t *testing.T) {
	st := newStore(t)
	src := filepath.Join(t.TempDir(), "src")
	writeFiles(t, src, map[string]string{"a": "1"})
	ok(t, st, "commit", src, "--image", "img")
	writeFiles(t, src, map[string]string{"a": "2"})
	ok(t, st, "commit", src, "--image", "img")
	for _, tc := range []struct {
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{[]string{"diff", "img~1", "img"}, 0, "M /a (content, mtime)\n", ""},
		{[]string{"diff", "--exit-code", "img~1", "img"}, 1, "M /a (content, mtime)\n", ""},
		{[]string{"diff", "--exit-code", "img", "img"}, 0, "", ""},
		{[]string{"diff", "--exit-code", "img", src}, 0, "", ""},
		{[]string{"diff", "--exit-code", "img~1", src}, 1, "M /a (content, mtime)\n", ""},
		{[]string{"diff", "-q", "img~1", "img"}, 1, "", ""},
		{[]string{"diff", "--quiet", "img", "img"}, 0, "", ""},
		{[]string{"diff", "--exit-code", "img", "nosuch"}, 2, "", `sim: unknown ref "nosuch"`},
		{[]string{"diff", "-q", "img", filepath.Join(src, "missing")}, 2, "", "no such file or directory"},
		{[]string{"diff", "img", "nosuch"}, 1, "", `unknown ref "nosuch"`},
		{[]string{"diff", "--exit-code", "img"}, 2, "", "accepts 2 arg"},
	} {
		r := sim(t, st, tc.args...)
		if r.code != tc.code || r.stdout != tc.stdout || !strings.Contains(r.stderr, tc.stderr) || (tc.stderr == "" && r.stderr != "") {
			t.Errorf("sim %s: exit %d, stdout %q, stderr %q; want %d, %q, %q", strings.Join(tc.args, " "), r.code, r.stdout, r.stderr, tc.code, tc.stdout, tc.stderr)
		}
	}
	var j struct{ Changes []any }
	r := sim(t, st, "diff", "--exit-code", "--json", "img~1", "img")
	if r.code != 1 || json.Unmarshal([]byte(r.stdout), &j) != nil || len(j.Changes) != 1 {
		t.Errorf("diff --exit-code --json: %+v", r)
	}
}

// TestSmallThings: images hides the catalog unless --all, log --oneline,
// show --stat, --version.
func TestSmallThings(t *testing.T) {
	st := newStore(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	writeFiles(t, src, map[string]string{"etc/motd": "1\n", "bin/sh": "#!"})
	c1 := lastLine(ok(t, st, "commit", src, "--image", "debian", "-m", "first\n\nwith a body"))
	writeFiles(t, src, map[string]string{"etc/motd": "2\n", "etc/new": "n"})
	c2 := lastLine(ok(t, st, "commit", src, "--image", "debian", "-m", "second"))
	writeFiles(t, dir, map[string]string{"layout": "part root rest ext4 /\n"})
	ok(t, st, "layout", "set", "debian", filepath.Join(dir, "layout"))

	var ims []imageJSON
	decodeJSON(t, ok(t, st, "images", "--json"), &ims)
	if len(ims) != 1 || ims[0].Name != "debian" {
		t.Errorf("images --json: %+v; want only debian", ims)
	}
	decodeJSON(t, ok(t, st, "images", "--json", "--all"), &ims)
	if len(ims) != 2 || ims[1].Name != "debian@layout" {
		t.Errorf("images --json --all: %+v", ims)
	}
	if out := ok(t, st, "images"); strings.Contains(out, "@layout") || !strings.Contains(out, "debian") {
		t.Errorf("images:\n%s", out)
	}
	if out := ok(t, st, "images", "-a"); !strings.Contains(out, "debian@layout") {
		t.Errorf("images -a:\n%s", out)
	}

	if out := ok(t, st, "log", "--oneline", "debian"); out != c2[:12]+" second\n"+c1[:12]+" first\n" {
		t.Errorf("log --oneline:\n%s", out)
	}

	out := ok(t, st, "show", "--stat", "debian")
	if !strings.Contains(out, "commit "+c2) || !strings.Contains(out, "    second\n\nM /etc (mtime)\nM /etc/motd (content, mtime)\n+ /etc/new\n1 added, 0 removed, 2 modified; to transfer: 2 chunks, 3 B + 2 trees, ") {
		t.Errorf("show --stat:\n%s", out)
	}
	var sj struct {
		ID      string `json:"id"`
		Changes []struct {
			Path, Action string
		} `json:"changes"`
		Stat struct{ Added int } `json:"stat"`
	}
	// A first commit: everything added, the root not "modified".
	decodeJSON(t, ok(t, st, "show", "--stat", "--json", "debian~1"), &sj)
	if sj.ID != c1 || len(sj.Changes) != 4 || sj.Stat.Added != 4 || sj.Changes[0].Path != "/bin" {
		t.Errorf("show --stat --json of the first commit: %+v", sj)
	}

	for _, args := range [][]string{{"--version"}, {"version"}} {
		if out := ok(t, st, args...); !strings.HasPrefix(out, "sim ") || !strings.Contains(out, "commit ") || !strings.Contains(out, "go1.") {
			t.Errorf("sim %s: %q", args[0], out)
		}
	}
	var v versionInfo
	decodeJSON(t, ok(t, st, "--version", "--json"), &v)
	if v.Version == "" || v.Commit == "" || !strings.HasPrefix(v.Go, "go1.") || v.Platform == "" {
		t.Errorf("--version --json: %+v", v)
	}
}

// complete runs cobra's completion request the way the shell scripts do.
func complete(t *testing.T, storeDir string, words ...string) (names []string, directive string, r result) {
	t.Helper()
	r = sim(t, storeDir, append([]string{"__complete"}, words...)...)
	// cobra's own note, which the shell scripts throw away.
	r.stderr = strings.TrimPrefix(r.stderr, "Completion ended with directive: ShellCompDirectiveNoFileComp\n")
	r.stderr = strings.TrimPrefix(r.stderr, "Completion ended with directive: ShellCompDirectiveNoFileComp, ShellCompDirectiveNoSpace\n")
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		if strings.HasPrefix(l, ":") {
			directive = l
		} else if l != "" {
			names = append(names, l)
		}
	}
	return names, directive, r
}

// TestCompletion: ref arguments complete with images and tags (catalog
// images once an @ is typed), from the store, from the server holding
// it, and as nothing, quickly and silently, when the store is missing or
// locked.
func TestCompletion(t *testing.T) {
	st := newStore(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	writeFiles(t, src, map[string]string{"f": "x"})
	ok(t, st, "commit", src, "--image", "debian")
	ok(t, st, "commit", src, "--image", "centos")
	ok(t, st, "tag", "debian-1.0", "debian")
	writeFiles(t, dir, map[string]string{"layout": "part root rest ext4 /\n"})
	ok(t, st, "layout", "set", "debian", filepath.Join(dir, "layout"))

	for _, tc := range []struct {
		words []string
		want  string
	}{
		{[]string{"log", ""}, "centos debian debian-1.0"},
		{[]string{"log", "de"}, "debian debian-1.0"},
		{[]string{"log", "debian@"}, "debian@layout"},
		{[]string{"show", "debian", ""}, ""}, // one REF only
		{[]string{"export", "c"}, "centos"},
		{[]string{"diff", "debian", "d"}, "debian debian-1.0"},
		{[]string{"checkout", ""}, "centos debian debian-1.0"},
		{[]string{"tag", "newtag", "deb"}, "debian debian-1.0"},
		{[]string{"image", "rm", "centos", ""}, "centos debian"},
		{[]string{"lo"}, "log"},
	} {
		names, _, r := complete(t, st, tc.words...)
		if got := strings.Join(filterCommands(names), " "); got != tc.want || r.code != 0 || r.stderr != "" {
			t.Errorf("complete %q: %q (exit %d, stderr %q); want %q", tc.words, got, r.code, r.stderr, tc.want)
		}
	}
	if _, d, _ := complete(t, st, "diff", "debian", "./"); d != ":0" {
		t.Errorf("diff's second operand with a slash completes files: directive %s", d)
	}
	if _, d, _ := complete(t, st, "checkout", "debian", ""); d != ":16" {
		t.Errorf("checkout's DIR completes directories: directive %s", d)
	}

	// Missing store, or locked by another process with no server: nothing, silently.
	start := time.Now()
	if names, _, r := complete(t, filepath.Join(dir, "nostore"), "log", ""); len(names) != 0 || r.code != 0 || r.stderr != "" {
		t.Errorf("missing store: %q %+v", names, r)
	}
	s, err := store.Open(st)
	if err != nil {
		t.Fatal(err)
	}
	if names, _, r := complete(t, st, "log", ""); len(names) != 0 || r.code != 0 || r.stderr != "" {
		t.Errorf("locked store: %q %+v", names, r)
	}
	s.Close()
	if d := time.Since(start); d > completionTimeout {
		t.Errorf("completion on a missing and a locked store took %s", d)
	}

	// While sim serve holds the store, it answers.
	startServer(t, st)
	if names, _, r := complete(t, st, "log", "deb"); strings.Join(names, " ") != "debian debian-1.0" || r.stderr != "" {
		t.Errorf("through the server: %q %+v", names, r)
	}
}

// filterCommands drops cobra's descriptions ("log\tShow the history").
func filterCommands(names []string) []string {
	var out []string
	for _, n := range names {
		out = append(out, strings.SplitN(n, "\t", 2)[0])
	}
	return out
}

func init() {
	// The completion tests run sim in-process; a shell's environment
	// must not choose the store for them.
	os.Unsetenv("SIM_STORE")
}
