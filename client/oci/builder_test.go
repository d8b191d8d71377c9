package oci_test

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/systemimager/sim/client"
	"github.com/systemimager/sim/client/oci"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/store/storetest"
)

// These tests give Import layers written here with archive/tar, for what
// no real tool writes on purpose: the order of whiteouts and opaque
// markers within a layer, symlinks in parents, and hostile input. The
// real tools' images are in oci_test.go.

// ent is one tar entry of a test layer.
type ent struct {
	name string
	typ  byte // tar.TypeReg when 0
	body string
	link string // symlink or hard link target
	mode int64
	uid  int
	pax  map[string]string
}

func tarOf(t *testing.T, ents ...ent) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range ents {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: e.mode, Uid: e.uid,
			ModTime: time.Unix(1700000000, 5), Format: tar.FormatPAX, PAXRecords: e.pax}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// layoutOf writes an OCI layout with one image (tag "t") of the given
// uncompressed layers, media type mt (OCI's uncompressed tar when "").
func layoutOf(t *testing.T, mt types.MediaType, layers ...[]byte) string {
	t.Helper()
	if mt == "" {
		mt = types.OCIUncompressedLayer
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cfg, _ := img.ConfigFile()
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Config.Entrypoint = []string{"/bin/echo", "hi"}
	cfg.Config.Env = []string{"A=1"}
	cfg.Config.Labels = map[string]string{"org.example": "yes"}
	img, err := mutate.ConfigFile(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		if img, err = mutate.Append(img, mutate.Addendum{Layer: static.NewLayer(l, mt), MediaType: mt}); err != nil {
			t.Fatal(err)
		}
	}
	dir := filepath.Join(t.TempDir(), "layout")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "t"})); err != nil {
		t.Fatal(err)
	}
	return dir
}

// treeOf imports dir and returns every path of the tree (with "" for the
// root) and its node.
func treeOf(t *testing.T, st *store.Store, dir string) map[string]*snapshot.Node {
	t.Helper()
	_, c := importOCI(t, st, dir, "", "img")
	root, err := snapshot.Lookup(st, c.Tree, "/")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*snapshot.Node{"": root}
	if err := snapshot.Walk(st, c.Tree, func(p string, n *snapshot.Node) error {
		cp := *n
		out[p] = &cp
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func paths(m map[string]*snapshot.Node) string {
	var out []string
	for p := range m {
		if p != "" {
			out = append(out, p)
		}
	}
	return strings.Join(sorted(out), " ")
}

func sorted(s []string) []string {
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s
}

func TestLayerSemantics(t *testing.T) {
	dir := func(name string) ent { return ent{name: name, typ: tar.TypeDir, mode: 0o755} }
	for _, tc := range []struct {
		name   string
		layers [][]ent
		want   string // every path, sorted
		check  func(t *testing.T, m map[string]*snapshot.Node)
	}{
		{"whiteout hides lower layers only", [][]ent{
			{{name: "a", body: "1"}, {name: "b", body: "1"}},
			{{name: ".wh.a"}, {name: "c", body: "2"}, {name: ".wh.c"}, {name: ".wh.nothing"}},
		}, "b c", nil},
		{"opaque marker after the layer's own entries", [][]ent{
			{dir("d"), {name: "d/old", body: "1"}, dir("d/keep"), {name: "d/keep/x", body: "1"}, {name: "e", body: "1"}},
			{{name: "d/new", body: "2"}, {name: "d/keep/y", body: "2"}, {name: "d/.wh..wh..opq"}},
		}, "d d/keep d/keep/y d/new e", nil},
		{"opaque marker first", [][]ent{
			{dir("d"), {name: "d/old", body: "1"}},
			{{name: "d/.wh..wh..opq"}, {name: "d/new", body: "2"}},
		}, "d d/new", nil},
		{"whiteout of a directory takes its subtree", [][]ent{
			{dir("d"), dir("d/s"), {name: "d/s/f", body: "1"}},
			{{name: ".wh.d"}},
		}, "", nil},
		{"later entry of a layer wins", [][]ent{
			{{name: "f", body: "first"}, {name: "f", body: "second!"}},
		}, "f", func(t *testing.T, m map[string]*snapshot.Node) {
			if m["f"].Size != 7 {
				t.Errorf("f has %d bytes; want the second entry's 7", m["f"].Size)
			}
		}},
		{"type changes replace", [][]ent{
			{{name: "f", body: "file"}, dir("d"), {name: "d/x", body: "1"}},
			{dir("f"), {name: "f/in", body: "2"}, {name: "d", body: "now a file"}},
		}, "d f f/in", func(t *testing.T, m map[string]*snapshot.Node) {
			if m["d"].Kind != snapshot.KindFile || m["f"].Kind != snapshot.KindDir {
				t.Errorf("d is a %s, f a %s", m["d"].Kind, m["f"].Kind)
			}
		}},
		{"symlinked parent: into its target, as runtimes apply layers", [][]ent{
			{dir("usr"), dir("usr/lib"), {name: "lib", typ: tar.TypeSymlink, link: "usr/lib"}},
			{{name: "lib/mod", body: "m"}},
		}, "lib usr usr/lib usr/lib/mod", func(t *testing.T, m map[string]*snapshot.Node) {
			if m["lib"].Kind != snapshot.KindSymlink {
				t.Errorf("lib became a %s", m["lib"].Kind)
			}
		}},
		{"a symlink cannot lead out of the root", [][]ent{
			{{name: "evil", typ: tar.TypeSymlink, link: "../../../../.."}, {name: "abs", typ: tar.TypeSymlink, link: "/../etc"}},
			{{name: "evil/x", body: "lands at the root"}, {name: "abs/y", body: "lands in /etc"}},
		}, "abs etc etc/y evil x", nil},
		{"implicit parents: root's, 0755, time 0", [][]ent{
			{{name: "x/y/z", body: "deep"}},
		}, "x x/y x/y/z", func(t *testing.T, m map[string]*snapshot.Node) {
			if n := m["x/y"]; n.Mode != 0o755 || n.UID != 0 || n.MtimeSec != 0 {
				t.Errorf("implicit x/y: mode %o uid %d mtime %d", n.Mode, n.UID, n.MtimeSec)
			}
		}},
		{"root entry, owners, modes, xattrs, devices, time", [][]ent{
			{{name: "./", typ: tar.TypeDir, mode: 0o700},
				{name: "./f", body: "x", mode: 0o4755, uid: 1234, pax: map[string]string{
					"SCHILY.xattr.user.a": "1", "LIBARCHIVE.xattr.user.b": "Mg", "SCHILY.xattr.security.capability": "\x01\x00"}},
				{name: "null", typ: tar.TypeChar, mode: 0o666}, {name: "p", typ: tar.TypeFifo}},
		}, "f null p", func(t *testing.T, m map[string]*snapshot.Node) {
			if m[""].Mode != 0o700 {
				t.Errorf("root mode %o; want 0700", m[""].Mode)
			}
			f := m["f"]
			if f.Mode != 0o4755 || f.UID != 1234 || f.MtimeSec != 1700000000 || f.MtimeNsec != 5 || len(f.Xattrs) != 3 ||
				f.Xattrs[1].Name != "user.a" || string(f.Xattrs[2].Value) != "2" {
				t.Errorf("f: %+v", f)
			}
			if m["null"].Kind != snapshot.KindChar || m["p"].Kind != snapshot.KindFifo {
				t.Errorf("null %s, p %s", m["null"].Kind, m["p"].Kind)
			}
		}},
		{"hard links: first name as a commit walks (files before subdirectories)", [][]ent{
			{dir("b"), {name: "b/f", body: "shared"}, {name: "a", typ: tar.TypeLink, link: "b/f"}, {name: "b/g", typ: tar.TypeLink, link: "./b/f"}},
		}, "a b b/f b/g", func(t *testing.T, m map[string]*snapshot.Node) {
			if m["a"].Link != "" || m["b/f"].Link != "a" || m["b/g"].Link != "a" || m["b/g"].Size != 6 {
				t.Errorf("links: a %q, b/f %q, b/g %q", m["a"].Link, m["b/f"].Link, m["b/g"].Link)
			}
		}},
		{"a hard link outlives its first name", [][]ent{
			{{name: "f", body: "shared"}, {name: "g", typ: tar.TypeLink, link: "f"}, {name: "h", typ: tar.TypeLink, link: "f"}},
			{{name: ".wh.f"}},
		}, "g h", func(t *testing.T, m map[string]*snapshot.Node) {
			if m["g"].Link != "" || m["h"].Link != "g" || m["h"].Size != 6 {
				t.Errorf("links: g %q, h %q", m["g"].Link, m["h"].Link)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := storetest.New(t)
			var layers [][]byte
			for _, l := range tc.layers {
				layers = append(layers, tarOf(t, l...))
			}
			m := treeOf(t, st, layoutOf(t, "", layers...))
			if got := paths(m); got != tc.want {
				t.Errorf("tree %q; want %q", got, tc.want)
			}
			if tc.check != nil {
				tc.check(t, m)
			}
		})
	}
}

// TestImportConfig: the run configuration goes into the message's
// trailers and comes back out of an export.
func TestImportConfig(t *testing.T) {
	st := storetest.New(t)
	dir := layoutOf(t, "", tarOf(t, ent{name: "f", body: "x"}))
	res, c := importOCI(t, st, dir, "t", "img")
	for _, want := range []string{"import of layout (t)\n\n", "OCI-Source: oci-layout t\n", "OCI-Platform: linux/amd64\n",
		`OCI-Config: {"Env":["A=1"],"Entrypoint":["/bin/echo","hi"],"Labels":{"org.example":"yes"}}`} {
		if !strings.Contains(c.Message, want) {
			t.Errorf("message %q lacks %q", c.Message, want)
		}
	}
	if !strings.Contains(c.Message, "OCI-Manifest: sha256:") || res.Layers != 1 {
		t.Errorf("message %q, result %+v", c.Message, res)
	}
	out := filepath.Join(t.TempDir(), "out")
	e, err := oci.ExportOCI(context.Background(), st, res.Commit, c, out, oci.OCIOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if e.Tag != "latest" || strings.Join(e.Config.Entrypoint, " ") != "/bin/echo hi" {
		t.Errorf("export: %+v", e)
	}
	p, _ := layout.FromPath(out)
	idx, _ := p.ImageIndex()
	im, _ := idx.IndexManifest()
	img, _ := idx.Image(im.Manifests[0].Digest)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Config.Labels["org.example"] != "yes" || cf.Config.Env[0] != "A=1" || cf.OS != "linux" ||
		!cf.Created.Time.Equal(c.Time) || len(cf.RootFS.DiffIDs) != 1 || cf.RootFS.DiffIDs[0].String() != e.DiffID {
		t.Errorf("exported config: %+v", cf)
	}
	// A commit from a directory gets the default: PATH and a shell.
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o644)
	id, dc, err := client.Commit(context.Background(), st, src, client.CommitOptions{Image: "plain"})
	if err != nil {
		t.Fatal(err)
	}
	e2, err := oci.ExportOCI(context.Background(), st, id, dc, out, oci.OCIOptions{Tag: "plain"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(e2.Config.Cmd, " ") != "/bin/sh" {
		t.Errorf("default config: %+v", e2.Config)
	}
	if im, _ := mustIndex(t, out).IndexManifest(); len(im.Manifests) != 2 {
		t.Errorf("layout after a second export has %d images; want 2", len(im.Manifests))
	}
	// The same tag again replaces, and the same commit gives the same manifest.
	e3, err := oci.ExportOCI(context.Background(), st, id, dc, out, oci.OCIOptions{Tag: "plain"})
	if err != nil {
		t.Fatal(err)
	}
	if im, _ := mustIndex(t, out).IndexManifest(); len(im.Manifests) != 2 || e3.Manifest != e2.Manifest {
		t.Errorf("re-export: %d images, manifest %s then %s", len(im.Manifests), e2.Manifest, e3.Manifest)
	}
}

func mustIndex(t *testing.T, dir string) v1.ImageIndex {
	t.Helper()
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	return idx
}

// TestImportErrors: bad input is an error naming the source, the layer
// and the entry; nothing is committed and no pack is left behind.
func TestImportErrors(t *testing.T) {
	st := storetest.New(t)
	good := tarOf(t, ent{name: "etc/", typ: tar.TypeDir}, ent{name: "etc/passwd", body: strings.Repeat("root:x:0:0\n", 100)})
	blobOf := func(dir string, i int) string {
		t.Helper()
		img, _ := mustIndex(t, dir).Image(mustDigest(t, dir))
		ls, _ := img.Layers()
		d, _ := ls[i].Digest()
		return filepath.Join(dir, "blobs", d.Algorithm, d.Hex)
	}
	notTar := filepath.Join(t.TempDir(), "junk.tar")
	os.WriteFile(notTar, bytes.Repeat([]byte("not a tar "), 100), 0o644)
	for _, tc := range []struct {
		name string
		src  func() string
		want []string
	}{
		{"dot-dot entry", func() string {
			return layoutOf(t, "", good, tarOf(t, ent{name: "../etc/shadow", body: "x"}))
		}, []string{"layer 2 of 2", `entry "../etc/shadow"`, `".." component`}},
		{"dot-dot inside", func() string {
			return layoutOf(t, "", tarOf(t, ent{name: "etc/../../x", body: "x"}))
		}, []string{`entry "etc/../../x"`, `".." component`}},
		{"whiteout escaping the root", func() string {
			return layoutOf(t, "", good, tarOf(t, ent{name: "etc/.wh.."}))
		}, []string{`entry "etc/.wh.."`, "whiteout of an invalid name"}},
		{"whiteout through dot-dot", func() string {
			return layoutOf(t, "", good, tarOf(t, ent{name: "../.wh.etc"}))
		}, []string{`entry "../.wh.etc"`, `".." component`}},
		{"hard link out of the root", func() string {
			return layoutOf(t, "", tarOf(t, ent{name: "l", typ: tar.TypeLink, link: "../../etc/shadow"}))
		}, []string{`entry "l"`, `hard link to "../../etc/shadow"`}},
		{"hard link to nothing", func() string {
			return layoutOf(t, "", tarOf(t, ent{name: "l", typ: tar.TypeLink, link: "missing"}))
		}, []string{`entry "l"`, "which no earlier entry made"}},
		{"file as a parent", func() string {
			return layoutOf(t, "", tarOf(t, ent{name: "f", body: "x"}, ent{name: "f/g", body: "y"}))
		}, []string{`entry "f/g"`, "f is a file, not a directory"}},
		{"tar cut in a header", func() string {
			return layoutOf(t, "", good[:2600])
		}, []string{"layer 1 of 1", `corrupt tar after entry "etc/"`, "unexpected EOF"}},
		{"tar cut in a file", func() string {
			return layoutOf(t, "", good[:3500])
		}, []string{"layer 1 of 1", `entry "etc/passwd"`, "428 of 1100 bytes"}},
		{"corrupt blob", func() string {
			dir := layoutOf(t, "", good)
			b := blobOf(dir, 0)
			data, _ := os.ReadFile(b)
			data[600] ^= 1
			os.WriteFile(b, data, 0o644)
			return dir
		}, []string{"layer 1 of 1", "corrupt layer"}},
		{"missing blob", func() string {
			dir := layoutOf(t, "", good, good[:0:0])
			os.Remove(blobOf(dir, 0))
			return dir
		}, []string{"layer 1 of 2", "no such file or directory"}},
		{"unknown media type", func() string {
			return layoutOf(t, "application/vnd.example.layer.v1.tar+lzma", good)
		}, []string{"layer 1 of 1", `unknown media type "application/vnd.example.layer.v1.tar+lzma"`}},
		{"not a tar", func() string { return notTar }, []string{"junk.tar: not a tar archive"}},
		{"not a layout", func() string { return t.TempDir() }, []string{"not an OCI image layout (no oci-layout file)"}},
		{"unknown tag", func() string { return layoutOf(t, "", good) }, []string{`no image tagged "nope" (tags: t)`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := tc.src()
			tag := ""
			if tc.name == "unknown tag" {
				tag = "nope"
			}
			_, _, err := oci.Import(context.Background(), st, src, oci.ImportOptions{Image: "bad", Tag: tag})
			if err == nil {
				t.Fatal("import succeeded")
			}
			for _, w := range append(tc.want, "import "+src) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
	if _, err := st.ImageHead("bad"); err == nil {
		t.Error("a failed import made the image")
	}
	packs, _ := filepath.Glob(filepath.Join(st.Dir(), "packs", "*", "*.pack"))
	if len(packs) != 0 {
		t.Errorf("failed imports left %d packs", len(packs))
	}
	rep, err := client.Fsck(st, true)
	if err != nil || len(rep.Problems) != 0 {
		t.Errorf("fsck after failed imports: %v %+v", err, rep)
	}
}

func mustDigest(t *testing.T, dir string) v1.Hash {
	t.Helper()
	im, err := mustIndex(t, dir).IndexManifest()
	if err != nil || len(im.Manifests) == 0 {
		t.Fatal(err)
	}
	return im.Manifests[0].Digest
}
