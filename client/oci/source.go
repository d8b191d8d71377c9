package oci

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Source kinds.
const (
	KindLayout        = "oci-layout"     // a directory: oci-layout, index.json, blobs/
	KindOCIArchive    = "oci-archive"    // the same as a tar (podman save --format oci-archive)
	KindDockerArchive = "docker-archive" // docker save: manifest.json, configs, layer tars
)

// The annotations that name an image in a layout's index.
const (
	annotationRefName = "org.opencontainers.image.ref.name" // "bookworm" (umoci, skopeo) or a full name
	annotationCtrName = "io.containerd.image.name"          // "docker.io/library/debian:bookworm"
)

// opened is an image found in a source, ready to read.
type opened struct {
	kind string
	ref  string // the tag or name it was chosen by, if any
	img  v1.Image
	// manifest is the digest of its manifest as its index names it
	// (layouts only: a docker archive has no manifest of its own).
	manifest v1.Hash
	// layout: layers are read compressed, checked against the
	// manifest's digests, and decompressed here.
	layout  bool
	cleanup func()
}

// open finds the image in src: a layout directory, an OCI archive or a
// docker archive. tag chooses among several; platform (os/arch[/variant],
// default linux and this machine's architecture) within a multi-platform
// index.
func open(src, tag, platform string) (*opened, error) {
	fi, err := os.Stat(src)
	if err != nil {
		return nil, err
	}
	if platform == "" {
		platform = "linux/" + runtime.GOARCH
	}
	want, err := v1.ParsePlatform(platform)
	if err != nil {
		return nil, fmt.Errorf("platform %q: %v", platform, err)
	}
	if fi.IsDir() {
		if _, err := os.Stat(filepath.Join(src, "oci-layout")); err != nil {
			return nil, fmt.Errorf("%s: not an OCI image layout (no oci-layout file)", src)
		}
		return openLayout(src, KindLayout, tag, *want)
	}
	members, err := tarMembers(src)
	if err != nil {
		return nil, fmt.Errorf("%s: not a tar archive: %w", src, err)
	}
	switch {
	case members["manifest.json"]:
		return openDockerArchive(src, tag)
	case members["oci-layout"] && members["index.json"]:
		dir, err := os.MkdirTemp("", "sim-oci-")
		if err != nil {
			return nil, err
		}
		if err := untarLayout(src, dir); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		o, err := openLayout(dir, KindOCIArchive, tag, *want)
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("%s: %w", src, err)
		}
		o.cleanup = func() { os.RemoveAll(dir) }
		return o, nil
	}
	return nil, fmt.Errorf("%s: neither a docker save archive (no manifest.json) nor an OCI archive (no oci-layout and index.json)", src)
}

// tarMembers lists the names in a tar file (headers only: archive/tar
// seeks over the contents).
func tarMembers(p string) (map[string]bool, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]bool{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		out[strings.TrimPrefix(h.Name, "./")] = true
	}
}

// untarLayout unpacks an OCI archive's regular files and directories
// into dir; any other entry, or a name leaving dir, is refused.
func untarLayout(src, dir string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: corrupt tar: %w", src, err)
		}
		n, err := cleanName(h.Name)
		if err != nil {
			return fmt.Errorf("%s: entry %q: %w", src, h.Name, err)
		}
		if n == "" {
			continue
		}
		p := filepath.Join(dir, filepath.FromSlash(n))
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, 0o755)
		case tar.TypeReg:
			if err = os.MkdirAll(filepath.Dir(p), 0o755); err == nil {
				err = writeFile(p, tr)
			}
		default:
			return fmt.Errorf("%s: entry %q: an OCI archive holds only files and directories", src, h.Name)
		}
		if err != nil {
			return err
		}
	}
}

func writeFile(p string, r io.Reader) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func openLayout(dir, kind, tag string, want v1.Platform) (*opened, error) {
	p, err := layout.FromPath(dir)
	if err != nil {
		return nil, err
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("index.json: %w", err)
	}
	var names []string
	var found []v1.Descriptor
	for _, d := range im.Manifests {
		ref := d.Annotations[annotationRefName]
		if ref != "" {
			names = append(names, ref)
		}
		if tag == "" || ref == tag || d.Annotations[annotationCtrName] == tag ||
			(ref != "" && strings.HasSuffix(d.Annotations[annotationCtrName], ":"+tag)) {
			found = append(found, d)
		}
	}
	sort.Strings(names)
	switch {
	case len(found) == 0 && tag != "":
		return nil, fmt.Errorf("no image tagged %q (tags: %s)", tag, listOrNone(names))
	case len(found) == 0:
		return nil, errors.New("the layout's index lists no image")
	case len(found) > 1:
		return nil, fmt.Errorf("%d images: choose one with --tag (tags: %s)", len(found), listOrNone(names))
	}
	d := found[0]
	ref := d.Annotations[annotationRefName]
	switch d.MediaType {
	case types.OCIImageIndex, types.DockerManifestList:
		child, err := idx.ImageIndex(d.Digest)
		if err != nil {
			return nil, err
		}
		cm, err := child.IndexManifest()
		if err != nil {
			return nil, err
		}
		var plats []string
		var pick *v1.Descriptor
		for i, m := range cm.Manifests {
			if m.Platform == nil {
				continue
			}
			plats = append(plats, m.Platform.String())
			if pick == nil && m.Platform.Satisfies(want) {
				pick = &cm.Manifests[i]
			}
		}
		if pick == nil {
			return nil, fmt.Errorf("image %s has no %s manifest (platforms: %s; see --platform)", d.Digest, want.String(), listOrNone(plats))
		}
		d = *pick
		idx = child
	}
	switch d.MediaType {
	case types.OCIManifestSchema1, types.DockerManifestSchema2:
	default:
		return nil, fmt.Errorf("manifest %s: unknown media type %q", d.Digest, d.MediaType)
	}
	img, err := idx.Image(d.Digest)
	if err != nil {
		return nil, err
	}
	return &opened{kind: kind, ref: ref, img: img, manifest: d.Digest, layout: true}, nil
}

func openDockerArchive(src, tag string) (*opened, error) {
	var t *name.Tag
	if tag != "" {
		nt, err := name.NewTag(tag)
		if err != nil {
			return nil, fmt.Errorf("tag %q: %v", tag, err)
		}
		t = &nt
	}
	opener := func() (io.ReadCloser, error) { return os.Open(src) }
	img, err := tarball.Image(opener, t)
	if err != nil {
		if tag == "" {
			if m, lerr := tarball.LoadManifest(opener); lerr == nil && len(m) > 1 {
				var tags []string
				for _, d := range m {
					tags = append(tags, d.RepoTags...)
				}
				return nil, fmt.Errorf("%s: %d images: choose one with --tag (tags: %s)", src, len(m), listOrNone(tags))
			}
		}
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	ref := tag
	if m, err := tarball.LoadManifest(opener); ref == "" && err == nil && len(m) == 1 && len(m[0].RepoTags) > 0 {
		ref = m[0].RepoTags[0]
	}
	return &opened{kind: KindDockerArchive, ref: ref, img: img}, nil
}

func listOrNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}
