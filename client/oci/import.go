package oci

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/store"
)

// ImportOptions tune Import.
type ImportOptions struct {
	Image    string // the image (branch) the commit goes to; required
	Tag      string // which image of a source holding several (a layout's ref name, an archive's repo tag)
	Platform string // os/arch[/variant] within a multi-platform index; default linux/GOARCH
	Message  string // the summary line; default "import of SRC[:TAG]"
	Author   string // default user@host
	Workers  int    // goroutines storing chunks; default GOMAXPROCS
	Progress *snapshot.Progress
}

// ImportResult says what was imported.
type ImportResult struct {
	Commit   chunk.ID          `json:"commit"`
	Kind     string            `json:"kind"` // KindLayout, KindOCIArchive or KindDockerArchive
	Ref      string            `json:"ref,omitempty"`
	Manifest string            `json:"manifest,omitempty"`
	Platform string            `json:"platform,omitempty"`
	Layers   int               `json:"layers"`
	Config   RunConfig         `json:"config"`
	Stats    store.CommitStats `json:"stats"`
}

// Import commits the image in src (an OCI image layout directory, an OCI
// archive or a docker save archive) as the new head of opts.Image: its
// layers applied in order into one tree, with the image's run
// configuration in the commit message's trailers. Every layer must match
// its manifest digest (layouts) and its diff id; on any error nothing is
// committed and the blobs written so far are dropped.
func Import(ctx context.Context, st *store.Store, src string, opts ImportOptions) (*ImportResult, *store.Commit, error) {
	if err := store.CheckName("image", opts.Image); err != nil {
		return nil, nil, err
	}
	head, err := st.ImageHead(opts.Image)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, nil, err
	}
	o, err := open(src, opts.Tag, opts.Platform)
	if err != nil {
		return nil, nil, fmt.Errorf("import %s: %w", src, err)
	}
	if o.cleanup != nil {
		defer o.cleanup()
	}
	start := time.Now()
	w := st.NewWriter()
	b := NewBuilder(w, st.Config().Chunker, opts.Workers)
	b.Progress = opts.Progress
	res, err := apply(ctx, b, o)
	if err != nil {
		b.Abort()
		w.Abort()
		return nil, nil, fmt.Errorf("import %s: %w", src, err)
	}
	root, stats, err := b.Save()
	if err != nil {
		w.Abort()
		return nil, nil, fmt.Errorf("import %s: %w", src, err)
	}
	ws, err := w.Flush()
	if err != nil {
		return nil, nil, fmt.Errorf("import %s: %w", src, err)
	}
	cfgJSON, _ := json.Marshal(res.Config)
	summary := opts.Message
	if summary == "" {
		summary = "import of " + filepath.Base(src)
		if o.ref != "" {
			summary += " (" + o.ref + ")"
		}
	}
	srcDesc := o.kind
	if o.ref != "" {
		srcDesc += " " + o.ref
	}
	trailers := [][2]string{{TrailerSource, srcDesc}}
	if res.Manifest != "" {
		trailers = append(trailers, [2]string{TrailerManifest, res.Manifest})
	}
	if res.Platform != "" {
		trailers = append(trailers, [2]string{TrailerPlatform, res.Platform})
	}
	trailers = append(trailers, [2]string{TrailerConfig, string(cfgJSON)})
	c := &store.Commit{Tree: root, Time: start.UTC(), Author: opts.Author, Message: message(summary, trailers), Image: opts.Image}
	if c.Author == "" {
		c.Author = store.DefaultAuthor()
	}
	c.Host, _ = os.Hostname()
	if !head.IsZero() {
		c.Parents = []chunk.ID{head}
	}
	c.Stats = stats
	c.Stats.NewBlobs, c.Stats.NewBytes, c.Stats.StoredBytes = ws.Blobs, ws.Bytes, ws.StoredBytes
	id, err := st.PutCommit(c)
	if err != nil {
		return nil, nil, err
	}
	op := "import"
	if head.IsZero() {
		op = "create"
	}
	if err := st.SetImage(opts.Image, head, id, op, summary); err != nil {
		return nil, nil, err
	}
	res.Commit, res.Kind, res.Ref, res.Stats = id, o.kind, o.ref, c.Stats
	return res, c, nil
}

// apply checks the image's manifest and configuration and applies its
// layers to b.
func apply(ctx context.Context, b *Builder, o *opened) (*ImportResult, error) {
	res := &ImportResult{}
	raw, err := o.img.RawConfigFile()
	if err != nil {
		return nil, fmt.Errorf("image configuration: %w", err)
	}
	cfg, err := v1.ParseConfigFile(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("image configuration: %w", err)
	}
	var layerDigests []v1.Descriptor
	if o.layout {
		rawm, err := o.img.RawManifest()
		if err != nil {
			return nil, fmt.Errorf("manifest %s: %w", o.manifest, err)
		}
		if got := sha256Hash(rawm); got != o.manifest {
			return nil, fmt.Errorf("manifest %s: its blob hashes to %s (corrupt layout)", o.manifest, got)
		}
		m, err := o.img.Manifest()
		if err != nil {
			return nil, fmt.Errorf("manifest %s: %w", o.manifest, err)
		}
		if got := sha256Hash(raw); got != m.Config.Digest {
			return nil, fmt.Errorf("image configuration %s: its blob hashes to %s (corrupt layout)", m.Config.Digest, got)
		}
		layerDigests = m.Layers
		res.Manifest = o.manifest.String()
	}
	res.Config = runConfigOf(cfg.Config)
	if cfg.OS != "" {
		p := v1.Platform{OS: cfg.OS, Architecture: cfg.Architecture, Variant: cfg.Variant}
		res.Platform = p.String()
	}
	layers, err := o.img.Layers()
	if err != nil {
		return nil, fmt.Errorf("layers: %w", err)
	}
	diffIDs := cfg.RootFS.DiffIDs
	if len(diffIDs) != len(layers) {
		return nil, fmt.Errorf("the configuration lists %d layers (diff ids), the manifest %d", len(diffIDs), len(layers))
	}
	res.Layers = len(layers)
	for i, l := range layers {
		label := fmt.Sprintf("layer %d of %d (%s)", i+1, len(layers), short(diffIDs[i]))
		if o.layout {
			label = fmt.Sprintf("layer %d of %d (%s)", i+1, len(layers), short(layerDigests[i].Digest))
		}
		var want *v1.Descriptor
		if o.layout {
			want = &layerDigests[i]
		}
		if err := applyLayer(ctx, b, l, label, want, diffIDs[i]); err != nil {
			return nil, err
		}
	}
	return res, nil
}

func short(h v1.Hash) string {
	if len(h.Hex) > 12 {
		return h.Algorithm + ":" + h.Hex[:12]
	}
	return h.String()
}

// applyLayer reads one layer, checks it against its descriptor's digest
// and size (want, for a layout) and its diff id, and applies it.
func applyLayer(ctx context.Context, b *Builder, l v1.Layer, label string, want *v1.Descriptor, diffID v1.Hash) error {
	mt, err := l.MediaType()
	if err != nil {
		return fmt.Errorf("%s: %w", label, err)
	}
	var gz, zs, plain bool
	switch mt {
	case types.OCILayer, types.DockerLayer:
		gz = true
	case types.OCILayerZStd:
		zs = true
	case types.OCIUncompressedLayer, types.DockerUncompressedLayer:
		plain = true
	case types.DockerForeignLayer, types.OCIRestrictedLayer, types.OCIUncompressedRestrictedLayer:
		return fmt.Errorf("%s: a non-distributable layer (%s), which images keep elsewhere: not supported", label, mt)
	default:
		return fmt.Errorf("%s: unknown media type %q", label, mt)
	}
	var (
		rc       io.ReadCloser
		ch       hash.Hash // of the compressed blob (layouts)
		compSize *countWriter
		ur       io.Reader
	)
	if want != nil {
		// A layout's blob, read as stored: hash it, decompress it here.
		if rc, err = l.Compressed(); err != nil {
			return fmt.Errorf("%s: %w", label, err)
		}
		defer rc.Close()
		ch, compSize = sha256.New(), &countWriter{}
		tee := io.TeeReader(rc, io.MultiWriter(ch, compSize))
		switch {
		case gz:
			zr, err := gzip.NewReader(tee)
			if err != nil {
				return fmt.Errorf("%s: not gzip: %w", label, err)
			}
			defer zr.Close()
			ur = zr
		case zs:
			zr, err := zstd.NewReader(tee, zstd.WithDecoderConcurrency(1))
			if err != nil {
				return fmt.Errorf("%s: %w", label, err)
			}
			defer zr.Close()
			ur = zr
		case plain:
			ur = tee
		}
	} else {
		if rc, err = l.Uncompressed(); err != nil {
			return fmt.Errorf("%s: %w", label, err)
		}
		defer rc.Close()
		ur = rc
	}
	uh := sha256.New()
	tr := io.TeeReader(ur, uh)
	if err := b.ApplyLayer(ctx, tr, label); err != nil {
		return err
	}
	// What follows the tar's end (padding) counts for the digests.
	if _, err := io.Copy(io.Discard, tr); err != nil {
		return fmt.Errorf("%s: %w", label, err)
	}
	if want != nil {
		if got := hashOf(ch); got != want.Digest {
			return fmt.Errorf("%s: blob hashes to %s, the manifest says %s (corrupt layer)", label, got, want.Digest)
		}
		if compSize.n != want.Size {
			return fmt.Errorf("%s: blob has %d bytes, the manifest says %d", label, compSize.n, want.Size)
		}
	}
	if got := hashOf(uh); got != diffID {
		return fmt.Errorf("%s: uncompressed layer hashes to %s, the configuration's diff id is %s (corrupt layer)", label, got, diffID)
	}
	return nil
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

func hashOf(h hash.Hash) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
}

func sha256Hash(b []byte) v1.Hash {
	s := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(s[:])}
}
