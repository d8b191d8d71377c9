package oci_test

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"golang.org/x/sys/unix"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/client"
	"github.com/systemimager/sim/client/oci"
	"github.com/systemimager/sim/snapshot/snapshottest"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/store/storetest"
)

// The tests here check sim against images and unpackers that real tools
// make: umoci (init, new, repack, insert --opaque/--whiteout, unpack)
// and skopeo (copy between oci:, oci-archive: and docker-archive:).
// They run as root (owners, devices, trusted.* xattrs) and skip with a
// message when a tool is missing: `make test` installs both.

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the trees have owners, devices and trusted.* xattrs that umoci keeps only as root")
	}
}

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (Debian package %s; make test installs it)", tool, tool)
		}
	}
}

// run runs a command and fails the test with its output if it fails.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	c := exec.Command(name, args...)
	c.Stdout, c.Stderr = &out, &out
	if err := c.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

// specialTree builds the tree of every special case (snapshottest.Build)
// without what tar cannot carry: the sparse files (holes become zeros,
// and 5 GiB of them) and the socket. The parents keep their mtimes.
func specialTree(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "src")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	snapshottest.Build(t, dir)
	removeKeepTimes(t, dir, "sparse", "special/socket")
	return dir
}

// removeKeepTimes removes paths below dir, putting back their parents'
// mtimes.
func removeKeepTimes(t *testing.T, dir string, paths ...string) {
	t.Helper()
	for _, p := range paths {
		parent := filepath.Dir(filepath.Join(dir, p))
		var st unix.Stat_t
		if err := unix.Lstat(parent, &st); err != nil {
			t.Fatal(err)
		}
		if err := os.RemoveAll(filepath.Join(dir, p)); err != nil {
			t.Fatal(err)
		}
		ts := []unix.Timespec{st.Atim, st.Mtim}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, parent, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatal(err)
		}
	}
}

// wholeSeconds truncates every mtime below dir to the second.
func wholeSeconds(t *testing.T, dir string) {
	t.Helper()
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		ts := []unix.Timespec{st.Atim, {Sec: st.Mtim.Sec}}
		return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func commitDir(t *testing.T, st *store.Store, dir, image string) (chunk.ID, *store.Commit) {
	t.Helper()
	id, c, err := client.Commit(context.Background(), st, dir, client.CommitOptions{Image: image})
	if err != nil {
		t.Fatal(err)
	}
	return id, c
}

func importOCI(t *testing.T, st *store.Store, src, tag, image string) (*oci.ImportResult, *store.Commit) {
	t.Helper()
	res, c, err := oci.Import(context.Background(), st, src, oci.ImportOptions{Image: image, Tag: tag})
	if err != nil {
		t.Fatalf("import %s (%s): %v", src, tag, err)
	}
	return res, c
}

func checkout(t *testing.T, st *store.Store, id chunk.ID) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "co")
	if _, err := client.Checkout(context.Background(), st, id, dir, client.CheckoutOptions{NoSync: true}); err != nil {
		t.Fatal(err)
	}
	return dir
}

// layerNames lists the names in layer i of layout:tag that contain sub.
func layerNames(t *testing.T, dir, tag string, i int, sub string) []string {
	t.Helper()
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	idx, _ := p.ImageIndex()
	im, _ := idx.IndexManifest()
	for _, d := range im.Manifests {
		if d.Annotations["org.opencontainers.image.ref.name"] != tag {
			continue
		}
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		ls, err := img.Layers()
		if err != nil || len(ls) <= i {
			t.Fatalf("%s:%s has %d layers (%v)", dir, tag, len(ls), err)
		}
		rc, err := ls[i].Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		var out []string
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				return out
			}
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(h.Name, sub) {
				out = append(out, h.Name)
			}
		}
	}
	t.Fatalf("no %s in %s", tag, dir)
	return nil
}

// umociLosses is what umoci unpack leaves out of a layer.
var umociLosses = snapshottest.IgnoreXattrs("user.empty")

// umociUnpack unpacks layout:tag with umoci and returns the rootfs.
func umociUnpack(t *testing.T, layout, tag string) string {
	t.Helper()
	bundle := filepath.Join(t.TempDir(), "bundle")
	run(t, "umoci", "unpack", "--image", layout+":"+tag, bundle)
	return filepath.Join(bundle, "rootfs")
}

// TestExportOCIUmoci is the round trip: a tree with every special case tar
// can hold → sim commit → sim export --format oci → umoci unpack gives
// back the same tree, every field compared; sim import of the export, and
// of skopeo's docker-archive and oci-archive of it, gives back the very
// tree the commit had.
func TestExportOCIUmoci(t *testing.T) {
	needRoot(t)
	needTools(t, "umoci", "skopeo")
	st := storetest.New(t)
	src := specialTree(t)
	id, c := commitDir(t, st, src, "special")
	out := filepath.Join(t.TempDir(), "layout")
	res, err := oci.ExportOCI(context.Background(), st, id, c, out, oci.OCIOptions{Tag: "special-1.0"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Sockets != 0 {
		t.Errorf("%d sockets in a tree without any", res.Sockets)
	}
	// umoci 0.4.7 does not set xattrs whose value is empty (user.empty);
	// the layer has it: the import below gives back the very same tree.
	snapshottest.Equal(t, src, umociUnpack(t, out, "special-1.0"), umociLosses)

	back, bc := importOCI(t, st, out, "special-1.0", "special-back")
	if bc.Tree != c.Tree {
		t.Errorf("import of the export: tree %s, want %s", bc.Tree.Short(), c.Tree.Short())
	}
	if back.Layers != 1 || back.Kind != oci.KindLayout {
		t.Errorf("import of the export: %+v", back)
	}
	for _, dst := range []string{"docker-archive:" + filepath.Join(t.TempDir(), "d.tar") + ":sim/special:1.0",
		"oci-archive:" + filepath.Join(t.TempDir(), "o.tar") + ":special-1.0"} {
		run(t, "skopeo", "copy", "--quiet", "oci:"+out+":special-1.0", dst)
		file := strings.SplitN(dst, ":", 3)[1]
		r, ac := importOCI(t, st, file, "", "special-"+r0(dst))
		if ac.Tree != c.Tree {
			t.Errorf("import of skopeo's %s: tree %s, want %s", r.Kind, ac.Tree.Short(), c.Tree.Short())
		}
	}
	_ = time.Second
}

func r0(s string) string { return s[:strings.IndexByte(s, '-')] }

// TestImportUmociLayers imports images whose layers umoci made from a
// real directory: a base with every special case, then a layer of
// changes (umoci repack: whiteouts of a file, of a whole directory and of
// one name of a hard-link group; a file replaced by a directory, a
// symlink by a file; new owners; a new hard link), then umoci insert
// --opaque (a directory's lower contents hidden) and --whiteout. Each
// import, checked out, is exactly the directory the layers were made
// from, and exactly what umoci unpack makes of the same image; skopeo's
// docker-archive of the last one imports to the same tree.
func TestImportUmociLayers(t *testing.T) {
	needRoot(t)
	needTools(t, "umoci", "skopeo")
	st := storetest.New(t)
	L := filepath.Join(t.TempDir(), "layout")
	bundle := filepath.Join(t.TempDir(), "bundle")
	run(t, "umoci", "init", "--layout", L)
	run(t, "umoci", "new", "--image", L+":base")
	run(t, "umoci", "unpack", "--image", L+":base", bundle)
	rootfs := filepath.Join(bundle, "rootfs")
	snapshottest.Build(t, rootfs)
	removeKeepTimes(t, rootfs, "sparse", "special/socket")
	wholeSeconds(t, rootfs) // umoci's layers carry seconds only
	run(t, "umoci", "repack", "--image", L+":base", bundle)

	check := func(tag string, want string) chunk.ID {
		t.Helper()
		res, c := importOCI(t, st, L, tag, "img-"+tag)
		got := checkout(t, st, res.Commit)
		if want != "" {
			snapshottest.Equal(t, want, got, umociLosses, snapshottest.IgnoreRootTimes())
		}
		snapshottest.Equal(t, umociUnpack(t, L, tag), got, umociLosses, snapshottest.IgnoreRootTimes())
		return c.Tree
	}
	check("base", rootfs)

	// Changes, as a second layer: umoci repack diffs against the image
	// the bundle was unpacked from, so unpack base again first.
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.RemoveAll(bundle))
	run(t, "umoci", "unpack", "--image", L+":base", bundle)
	for _, p := range []string{"text.txt", "dirs/a", "names/group3-c", "modes/none", "links/absolute"} {
		if err := os.RemoveAll(filepath.Join(rootfs, p)); err != nil {
			t.Fatal(err)
		}
	}
	must(os.Mkdir(filepath.Join(rootfs, "modes/none"), 0o750))
	must(os.WriteFile(filepath.Join(rootfs, "modes/none/inside"), []byte("was a file\n"), 0o640))
	must(os.WriteFile(filepath.Join(rootfs, "links/absolute"), []byte("was a symlink\n"), 0o644))
	must(os.Chown(filepath.Join(rootfs, "owners/u1234"), 42, 43))
	must(os.Link(filepath.Join(rootfs, "empty"), filepath.Join(rootfs, "hard/new-link")))
	wholeSeconds(t, rootfs)
	run(t, "umoci", "repack", "--image", L+":v2", bundle)
	check("v2", rootfs)
	// (A changed type is a plain replacement, not a whiteout.)
	if wh := strings.Join(layerNames(t, L, "v2", 1, ".wh."), " "); wh != "dirs/.wh.a names/.wh.group3-c .wh.text.txt" {
		t.Errorf("v2's layer has whiteouts %q; want those of dirs/a, names/group3-c, text.txt", wh)
	}

	// umoci insert: an opaque /dirs holding only what is inserted, then a
	// whiteout layer.
	ins := filepath.Join(t.TempDir(), "ins")
	must(os.MkdirAll(filepath.Join(ins, "fresh"), 0o755))
	must(os.WriteFile(filepath.Join(ins, "fresh/only"), []byte("only this\n"), 0o644))
	run(t, "umoci", "insert", "--image", L+":v2", "--tag", "v3", "--opaque", ins, "/dirs")
	run(t, "umoci", "insert", "--image", L+":v3", "--whiteout", "/links/relative")
	tree := check("v3", "")
	res, _ := importOCI(t, st, L, "v3", "img-v3-again")
	var names []string
	ents, _ := os.ReadDir(filepath.Join(checkout(t, st, res.Commit), "dirs"))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != "fresh" {
		t.Errorf("opaque /dirs holds %v; want only [fresh]", names)
	}
	if _, err := os.Lstat(filepath.Join(checkout(t, st, res.Commit), "links/relative")); !os.IsNotExist(err) {
		t.Errorf("links/relative after its whiteout: %v", err)
	}
	if res.Layers != 4 {
		t.Errorf("v3 has %d layers; want 4 (new's empty one is none: base, v2, insert, whiteout)", res.Layers)
	}

	da := filepath.Join(t.TempDir(), "v3.tar")
	run(t, "skopeo", "copy", "--quiet", "oci:"+L+":v3", "docker-archive:"+da+":sim/test:v3")
	r, dc := importOCI(t, st, da, "sim/test:v3", "img-v3-docker")
	if dc.Tree != tree || r.Kind != oci.KindDockerArchive {
		t.Errorf("skopeo's docker-archive: %s, tree %s; want tree %s", r.Kind, dc.Tree.Short(), tree.Short())
	}

	// Several images and no --tag: an error listing them; nothing committed.
	if _, _, err := oci.Import(context.Background(), st, L, oci.ImportOptions{Image: "which"}); err == nil ||
		!strings.Contains(err.Error(), "choose one with --tag (tags: base, v2, v3)") {
		t.Errorf("import of a layout of 3 images without --tag: %v", err)
	}
	if _, err := st.ImageHead("which"); err == nil {
		t.Error("a failed import made an image")
	}
}
