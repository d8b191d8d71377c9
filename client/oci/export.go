package oci

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/klauspost/compress/gzip"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/match"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/store"
)

// TarStats counts what WriteTar wrote.
type TarStats struct {
	Entries int   `json:"entries"`
	Bytes   int64 `json:"bytes"`   // regular files' contents
	Sockets int   `json:"sockets"` // left out: tar has no sockets
}

// WriteTar writes tree root as a tar stream (PAX: nanosecond mtimes,
// xattrs as SCHILY.xattr records, numeric owners only). The root is "./",
// the rest is relative ("etc/passwd", "etc/"); a directory's files come
// before its subdirectories, the order in which snapshot.Commit picks a
// hard link's first name, so every link follows its target. The same
// tree always gives the same bytes. Holes are written as zeros; sockets
// are left out (warn is told of each).
func WriteTar(ctx context.Context, src snapshot.Source, root chunk.ID, w io.Writer, warn func(error)) (TarStats, error) {
	var st TarStats
	if warn == nil {
		warn = func(error) {}
	}
	tw := tar.NewWriter(w)
	t, err := snapshot.LoadTree(src, root)
	if err != nil {
		return st, err
	}
	written := map[string]bool{}
	if err := writeHeader(tw, "./", &t.Self, &st); err != nil {
		return st, err
	}
	var walk func(t *snapshot.Tree, rel string) error
	walk = func(t *snapshot.Tree, rel string) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		for i := range t.Entries {
			n := &t.Entries[i]
			if n.Kind == snapshot.KindDir {
				continue
			}
			p := join(rel, n.Name)
			if n.Kind == snapshot.KindSocket {
				st.Sockets++
				warn(fmt.Errorf("%s: a socket, which tar cannot hold: left out", p))
				continue
			}
			if err := writeEntry(tw, src, p, n, written, &st); err != nil {
				return fmt.Errorf("export /%s: %w", p, err)
			}
			written[p] = true
		}
		for i := range t.Entries {
			e := &t.Entries[i]
			if e.Kind != snapshot.KindDir {
				continue
			}
			p := join(rel, e.Name)
			sub, err := snapshot.LoadTree(src, e.Subtree)
			if err != nil {
				return fmt.Errorf("export /%s: %w", p, err)
			}
			if err := writeHeader(tw, p+"/", &sub.Self, &st); err != nil {
				return fmt.Errorf("export /%s: %w", p, err)
			}
			if err := walk(sub, p); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(t, ""); err != nil {
		return st, err
	}
	return st, tw.Close()
}

func header(name string, n *snapshot.Node) *tar.Header {
	h := &tar.Header{Name: name, Mode: int64(n.Mode), Uid: int(n.UID), Gid: int(n.GID),
		ModTime: time.Unix(n.MtimeSec, int64(n.MtimeNsec)), Format: tar.FormatPAX}
	if len(n.Xattrs) > 0 {
		h.PAXRecords = map[string]string{}
		for _, x := range n.Xattrs {
			h.PAXRecords["SCHILY.xattr."+x.Name] = string(x.Value)
		}
	}
	return h
}

func writeHeader(tw *tar.Writer, name string, self *snapshot.Node, st *TarStats) error {
	h := header(name, self)
	h.Typeflag = tar.TypeDir
	st.Entries++
	return tw.WriteHeader(h)
}

func writeEntry(tw *tar.Writer, src snapshot.Source, p string, n *snapshot.Node, written map[string]bool, st *TarStats) error {
	h := header(p, n)
	switch {
	case n.Link != "" && written[n.Link]:
		h.Typeflag, h.Linkname = tar.TypeLink, n.Link
	case n.Kind == snapshot.KindFile:
		h.Typeflag, h.Size = tar.TypeReg, int64(n.Size)
	case n.Kind == snapshot.KindSymlink:
		h.Typeflag, h.Linkname = tar.TypeSymlink, n.Target
	case n.Kind == snapshot.KindChar, n.Kind == snapshot.KindBlock:
		h.Typeflag = tar.TypeChar
		if n.Kind == snapshot.KindBlock {
			h.Typeflag = tar.TypeBlock
		}
		h.Devmajor, h.Devminor = int64(n.Major), int64(n.Minor)
	case n.Kind == snapshot.KindFifo:
		h.Typeflag = tar.TypeFifo
	default:
		return fmt.Errorf("cannot write a %s to tar", n.Kind)
	}
	st.Entries++
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	if h.Typeflag == tar.TypeReg {
		st.Bytes += h.Size
		return snapshot.WriteContent(src, n, tw)
	}
	return nil
}

// OCIOptions tune ExportOCI.
type OCIOptions struct {
	// Tag is the image's name in the layout's index
	// (org.opencontainers.image.ref.name); an image there with the same
	// tag is replaced. Default "latest".
	Tag  string
	Warn func(error)
}

// OCIResult says what ExportOCI wrote.
type OCIResult struct {
	Dir      string    `json:"dir"`
	Tag      string    `json:"tag"`
	Manifest string    `json:"manifest"`
	Layer    string    `json:"layer"`
	DiffID   string    `json:"diff_id"`
	Size     int64     `json:"size"` // the compressed layer
	Config   RunConfig `json:"config"`
	TarStats
}

// refName is the OCI image layout's grammar of ref names.
var refName = regexp.MustCompile(`^[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*(?:/[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*)*$`)

// ValidTag says whether s can name an image in a layout.
func ValidTag(s string) bool { return refName.MatchString(s) }

// ExportOCI writes commit c (id) as a one-layer image into the OCI image
// layout dir: created if missing or empty, added to (same tag replaced)
// if it is a layout already. The layer is the commit's tar (WriteTar),
// gzip-compressed; the configuration is the run configuration an
// imported commit's message keeps (else DefaultRunConfig), for
// linux/amd64 or the platform it came with, created at the commit's
// time. The layer blob is written under its digest before the index
// names it.
func ExportOCI(ctx context.Context, src snapshot.Source, id chunk.ID, c *store.Commit, dir string, opts OCIOptions) (*OCIResult, error) {
	if opts.Tag == "" {
		opts.Tag = "latest"
	}
	if !ValidTag(opts.Tag) {
		return nil, fmt.Errorf("%q cannot name an image in an OCI layout (letters, digits, and . _ - : @ + between them)", opts.Tag)
	}
	p, err := layoutFor(dir)
	if err != nil {
		return nil, err
	}
	rc, platform, ok, err := ConfigFromMessage(c.Message)
	if err != nil {
		return nil, err
	}
	if !ok {
		rc = DefaultRunConfig
	}
	plat := v1.Platform{OS: "linux", Architecture: "amd64"}
	if platform != "" {
		pp, err := v1.ParsePlatform(platform)
		if err != nil {
			return nil, fmt.Errorf("commit message: bad %s trailer: %v", TrailerPlatform, err)
		}
		plat = *pp
	}
	l, st, err := writeLayer(ctx, src, c.Tree, filepath.Join(dir, "blobs", "sha256"), opts.Warn)
	if err != nil {
		return nil, err
	}
	created := v1.Time{Time: c.Time.UTC()}
	cfg := &v1.ConfigFile{Created: created, OS: plat.OS, Architecture: plat.Architecture, Variant: plat.Variant,
		Config: rc.v1(), RootFS: v1.RootFS{Type: "layers"}}
	img, err := mutate.ConfigFile(empty.Image, cfg)
	if err != nil {
		return nil, err
	}
	img, err = mutate.Append(img, mutate.Addendum{Layer: l, MediaType: types.OCILayer,
		History: v1.History{Created: created, CreatedBy: "sim export " + id.String(), Comment: firstLine(c.Message)}})
	if err != nil {
		return nil, err
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img = mutate.Annotations(img, map[string]string{
		"org.opencontainers.image.created":  c.Time.UTC().Format(time.RFC3339Nano),
		"org.opencontainers.image.revision": id.String(),
		"org.systemimager.sim.image":        c.Image,
	}).(v1.Image)
	if err := p.ReplaceImage(img, match.Annotation(annotationRefName, opts.Tag),
		layout.WithAnnotations(map[string]string{annotationRefName: opts.Tag})); err != nil {
		return nil, fmt.Errorf("write %s: %w", dir, err)
	}
	md, err := img.Digest()
	if err != nil {
		return nil, err
	}
	ld, _ := l.Digest()
	di, _ := l.DiffID()
	sz, _ := l.Size()
	return &OCIResult{Dir: dir, Tag: opts.Tag, Manifest: md.String(), Layer: ld.String(), DiffID: di.String(), Size: sz,
		Config: rc, TarStats: st}, nil
}

func firstLine(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			return s[:i]
		}
	}
	return s
}

// layoutFor opens the layout at dir, or makes one there if dir is
// missing or empty.
func layoutFor(dir string) (layout.Path, error) {
	if _, err := os.Stat(filepath.Join(dir, "oci-layout")); err == nil {
		return layout.FromPath(dir)
	}
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	if len(ents) > 0 {
		return "", fmt.Errorf("%s: neither empty nor an OCI image layout", dir)
	}
	return layout.Write(dir, empty.Index)
}

// writeLayer writes the tree's tar, gzip-compressed, into blobs (a
// layout's blobs/sha256), hashing it on the way, and renames it to its
// digest once complete.
func writeLayer(ctx context.Context, src snapshot.Source, root chunk.ID, blobs string, warn func(error)) (v1.Layer, TarStats, error) {
	var st TarStats
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return nil, st, err
	}
	f, err := os.CreateTemp(blobs, ".sim-layer-")
	if err != nil {
		return nil, st, err
	}
	defer func() {
		if f != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	ch, cn := sha256.New(), &countWriter{}
	zw, _ := gzip.NewWriterLevel(io.MultiWriter(f, ch, cn), gzip.BestSpeed)
	uh := sha256.New()
	if st, err = WriteTar(ctx, src, root, io.MultiWriter(zw, uh), warn); err != nil {
		return nil, st, err
	}
	if err := zw.Close(); err != nil {
		return nil, st, err
	}
	if err := f.Sync(); err != nil {
		return nil, st, err
	}
	if err := f.Close(); err != nil {
		return nil, st, err
	}
	digest, diffID := hashOf(ch), hashOf(uh)
	final := filepath.Join(blobs, digest.Hex)
	if err := os.Rename(f.Name(), final); err != nil {
		return nil, st, err
	}
	f = nil
	l, err := partial.CompressedToLayer(&fileLayer{path: final, digest: digest, diffID: diffID, size: cn.n})
	return l, st, err
}

// fileLayer is a gzip layer in a file whose digests are known.
type fileLayer struct {
	path           string
	digest, diffID v1.Hash
	size           int64
}

func (l *fileLayer) Digest() (v1.Hash, error)            { return l.digest, nil }
func (l *fileLayer) DiffID() (v1.Hash, error)            { return l.diffID, nil }
func (l *fileLayer) Size() (int64, error)                { return l.size, nil }
func (l *fileLayer) MediaType() (types.MediaType, error) { return types.OCILayer, nil }
func (l *fileLayer) Compressed() (io.ReadCloser, error)  { return os.Open(l.path) }

var _ partial.WithDiffID = (*fileLayer)(nil)
