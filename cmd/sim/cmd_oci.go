package main

import (
	"bufio"
	"fmt"
	"io"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/systemimager/sim/client/oci"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/sync/units"
)

func newImportCommand(e *env) *cobra.Command {
	c := &cobra.Command{
		Use:   "import",
		Short: "Commit an image from another format (oci)",
	}
	c.AddCommand(newImportOCICommand(e))
	return c
}

type importOCIOptions struct {
	image, tag, platform, message, author string
}

func newImportOCICommand(e *env) *cobra.Command {
	var o importOCIOptions
	c := &cobra.Command{
		Use:   "oci DIR|ARCHIVE --image NAME [--tag T]",
		Short: "Commit an OCI image layout, OCI archive or docker save archive",
		Long: `Commit an OCI image as the new head of image NAME: an OCI image layout
(a directory with oci-layout and index.json, as skopeo copy oci:DIR:TAG or
umoci write it), an OCI archive (the same as a tar), or a docker save
archive. The layers are applied in order into one tree (whiteouts, opaque
directories, hard links, owners, modes, xattrs and times as the layers
have them), built in memory: nothing is extracted to disk. Each layer is
checked against its digest and its diff id; on any error nothing is
committed.

--tag chooses among several images: a layout's ref name (what follows
the colon in oci:DIR:TAG), an archive's repository tag (debian:bookworm).
A multi-platform index gives the --platform image (default linux and this
machine's architecture).

The image's run configuration (entrypoint, command, env, working
directory, user, ports, volumes, labels, stop signal) is kept in the
commit message as an "OCI-Config:" trailer, with "OCI-Source:",
"OCI-Manifest:" and "OCI-Platform:"; sim export --format oci puts it
back. The last line on stdout is the new commit id.`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if o.image == "" {
				return usageError{fmt.Errorf("import oci: --image NAME is required")}
			}
			return e.withStore(func(st *store.Store) error {
				p := &snapshot.Progress{}
				stop := e.showProgress("import", p)
				res, cm, err := oci.Import(c.Context(), st, e.path(args[0]), oci.ImportOptions{
					Image: o.image, Tag: o.tag, Platform: o.platform, Message: o.message, Author: o.author, Progress: p})
				stop()
				if err != nil {
					return err
				}
				if e.json {
					return e.printJSON(res)
				}
				s := cm.Stats
				fmt.Fprintf(e.stderr, "%s: %s, %d layers: %d files, %d dirs, %s; added %d blobs (%s, %s stored)\n",
					o.image, res.Kind, res.Layers, s.Files, s.Dirs, units.Bytes(s.Bytes), s.NewBlobs, units.Bytes(s.NewBytes), units.Bytes(s.StoredBytes))
				fmt.Fprintln(e.stdout, res.Commit)
				return nil
			})
		},
	}
	f := c.Flags()
	f.StringVar(&o.image, "image", "", "image (branch) to commit to")
	f.StringVar(&o.tag, "tag", "", "which image of the layout or archive (`T`: a ref name or repository tag)")
	f.StringVar(&o.platform, "platform", "", "`OS/ARCH[/VARIANT]` to take from a multi-platform index (default linux/this machine's)")
	f.StringVarP(&o.message, "message", "m", "", "the commit message's summary (the OCI trailers follow it)")
	f.StringVar(&o.author, "author", "", "author (default user@host)")
	e.addJSONFlag(c)
	return c
}

func newExportCommand(e *env) *cobra.Command {
	var format, out, tag string
	c := &cobra.Command{
		Use:   "export REF --format tar|oci -o OUT",
		Short: "Write a commit as a tarball or an OCI image layout",
		Long: `Write the tree of REF as a tarball (--format tar; -o - for stdout) or as an
OCI image layout with one layer (--format oci; OUT is a directory, created
if missing or empty; an existing layout gets the image added, replacing
one of the same --tag).

Both keep owners (numeric), modes, nanosecond mtimes, xattrs, hard links,
symlinks and devices (PAX tar); holes are written as zeros and sockets are
left out (tar has neither). The same commit always gives the same bytes.

The OCI image runs under podman (podman run oci:OUT:TAG) and converts with
skopeo (skopeo copy oci:OUT:TAG docker-archive:x.tar:name:tag). Its
configuration is the one an imported commit kept (sim import oci), else
PATH and /bin/sh. --tag defaults to REF when REF can name an image in a
layout, else "latest".`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if out == "" {
				return usageError{fmt.Errorf("export: -o OUT is required")}
			}
			if format != "tar" && format != "oci" {
				return usageError{fmt.Errorf("export: --format is tar or oci, not %q", format)}
			}
			warn := func(err error) { fmt.Fprintf(e.stderr, "sim: warning: %v\n", err) }
			return e.withStore(func(st *store.Store) error {
				id, cm, err := resolveCommit(st, args[0])
				if err != nil {
					return err
				}
				if format == "oci" {
					t := tag
					if t == "" {
						t = "latest"
						if oci.ValidTag(args[0]) {
							t = args[0]
						}
					}
					res, err := oci.ExportOCI(c.Context(), st, id, cm, e.path(out), oci.OCIOptions{Tag: t, Warn: warn})
					if err != nil {
						return err
					}
					if e.json {
						return e.printJSON(res)
					}
					fmt.Fprintf(e.stderr, "exported %s to %s as %s: %d entries, %s; layer %s\n",
						id.Short(), out, res.Tag, res.Entries, units.Bytes(res.Size), res.Layer)
					return nil
				}
				if out == "-" {
					w := bufio.NewWriterSize(e.stdout, 1<<20)
					if _, err := oci.WriteTar(c.Context(), st, cm.Tree, w, warn); err != nil {
						return err
					}
					return w.Flush()
				}
				var ts oci.TarStats
				path := e.path(out)
				err = store.WriteFileAtomic(path, 0o644, func(f io.Writer) error {
					w := bufio.NewWriterSize(f, 1<<20)
					var err error
					if ts, err = oci.WriteTar(c.Context(), st, cm.Tree, w, warn); err != nil {
						return err
					}
					return w.Flush()
				})
				if err != nil {
					return fmt.Errorf("export %s: %w", filepath.Base(path), err)
				}
				if e.json {
					return e.printJSON(struct {
						Commit string `json:"commit"`
						File   string `json:"file"`
						oci.TarStats
					}{id.String(), path, ts})
				}
				fmt.Fprintf(e.stderr, "exported %s to %s: %d entries, %s of file contents\n", id.Short(), out, ts.Entries, units.Bytes(ts.Bytes))
				return nil
			})
		},
	}
	c.Flags().StringVar(&format, "format", "tar", "`tar` or oci")
	c.Flags().StringVarP(&out, "output", "o", "", "write to `OUT` (a file, - for stdout, or a directory for oci)")
	c.Flags().StringVar(&tag, "tag", "", "the image's name in the OCI layout (default REF, or latest)")
	e.addJSONFlag(c)
	return c
}
