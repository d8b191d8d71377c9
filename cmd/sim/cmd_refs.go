package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/client"
	"github.com/systemimager/sim/client/catalog"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/sync/units"
)

func newTagCommand(e *env) *cobra.Command {
	var del bool
	var signKey string
	c := &cobra.Command{
		Use:   "tag [NAME REF [--sign KEY] | -d NAME]",
		Short: "List tags, create an immutable tag (signing its commit), or delete one",
		Args:  cobra.RangeArgs(0, 2),
		RunE: func(c *cobra.Command, args []string) error {
			key, err := e.readSigningKey(signKey)
			if err != nil {
				return err
			}
			if key != nil && len(args) != 2 {
				return usageError{fmt.Errorf("tag --sign goes with NAME REF")}
			}
			return e.withStore(func(st *store.Store) error {
				switch {
				case del:
					if len(args) != 1 {
						return usageError{fmt.Errorf("tag -d takes one NAME")}
					}
					return st.DeleteTag(args[0])
				case len(args) == 2:
					id, err := st.Resolve(args[1])
					if err != nil {
						return err
					}
					if key != nil {
						// Signed first: the tag never names an unsigned
						// commit on a store that requires signatures.
						if err := client.SignCommit(st, id, *key); err != nil {
							return err
						}
					}
					return st.CreateTag(args[0], id)
				case len(args) == 1:
					return usageError{fmt.Errorf("tag NAME needs a REF")}
				}
				tags, err := st.Tags()
				if err != nil {
					return err
				}
				if e.json {
					if tags == nil {
						tags = []store.Tag{}
					}
					return e.printJSON(tags)
				}
				tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
				for _, t := range tags {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", t.Name, t.Commit.Short(), t.Time.Local().Format(time.DateTime))
				}
				return tw.Flush()
			})
		},
	}
	c.Flags().BoolVarP(&del, "delete", "d", false, "delete the tag NAME")
	c.Flags().StringVar(&signKey, "sign", "", "sign the tagged commit with the private key `FILE` (sim key gen)")
	e.addJSONFlag(c)
	return c
}

type imageJSON struct {
	Name    string    `json:"name"`
	Head    chunk.ID  `json:"head"`
	Time    time.Time `json:"time"`
	Message string    `json:"message"`
	Files   int64     `json:"files"`
	Bytes   int64     `json:"bytes"`
}

func newImagesCommand(e *env) *cobra.Command {
	var all bool
	c := &cobra.Command{
		Use:   "images",
		Short: "List images with their heads",
		Long: `List images with their heads. The install catalog's images (IMAGE@layout,
sim@nodes, NAME@override, NAME@script) are left out unless --all.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, args []string) error {
			return e.withStore(func(st *store.Store) error {
				ims, err := st.Images()
				if err != nil {
					return err
				}
				out := []imageJSON{}
				for _, im := range ims {
					if !all && catalog.IsSpecial(im.Name) {
						continue
					}
					cm, err := st.Commit(im.Head)
					if err != nil {
						return fmt.Errorf("image %s: %w", im.Name, err)
					}
					out = append(out, imageJSON{im.Name, im.Head, cm.Time, cm.Message, cm.Stats.Files, cm.Stats.Bytes})
				}
				if e.json {
					return e.printJSON(out)
				}
				tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
				fmt.Fprintln(tw, "IMAGE\tHEAD\tDATE\tFILES\tSIZE\tMESSAGE")
				for _, e := range out {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", e.Name, e.Head.Short(), e.Time.Local().Format(time.DateTime), e.Files, units.Bytes(e.Bytes), subject(e.Message))
				}
				return tw.Flush()
			})
		},
	}
	c.Flags().BoolVarP(&all, "all", "a", false, "also list the catalog's images (@layout, @nodes, @override, @script)")
	e.addJSONFlag(c)
	return c
}

func newImageCommand(e *env) *cobra.Command {
	c := &cobra.Command{Use: "image", Short: "Copy, rename or remove images"}
	c.AddCommand(&cobra.Command{
		Use:   "cp SRC DST",
		Short: "Create image DST at the head of SRC (history is shared)",
		Args:  cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			return e.withStore(func(st *store.Store) error { return client.CopyImage(st, args[0], args[1]) })
		},
	}, &cobra.Command{
		Use:   "mv SRC DST",
		Short: "Rename an image, with its reflog",
		Args:  cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			return e.withStore(func(st *store.Store) error { return client.RenameImage(st, args[0], args[1]) })
		},
	}, &cobra.Command{
		Use:   "rm NAME...",
		Short: "Remove images (their data goes at the next gc unless a tag or another image keeps it)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return e.withStore(func(st *store.Store) error {
				for _, n := range args {
					if err := client.RemoveImage(st, n); err != nil {
						return err
					}
				}
				return nil
			})
		},
	})
	reflog := &cobra.Command{
		Use:   "reflog NAME",
		Short: "Show every move of an image's head",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return e.withStore(func(st *store.Store) error {
				log, err := st.Reflog(args[0])
				if err != nil {
					return err
				}
				if e.json {
					if log == nil {
						log = []store.RefLogEntry{}
					}
					return e.printJSON(log)
				}
				for i := len(log) - 1; i >= 0; i-- {
					l := log[i]
					fmt.Fprintf(e.stdout, "%s %s %-7s %s\n", l.New.Short(), l.Time.Local().Format(time.DateTime), l.Op, l.Message)
				}
				return nil
			})
		},
	}
	e.addJSONFlag(reflog)
	c.AddCommand(reflog)
	return c
}
