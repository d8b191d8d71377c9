package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/systemimager/sim/client"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/store"
)

func newInitCommand(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "init",
		Short: "Create an empty store at --store",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, args []string) error {
			if err := store.Init(e.path(e.storeDir)); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "initialized empty sim store in %s\n", e.storeDir)
			return nil
		},
	}
}

type commitOptions struct {
	image, message, author string
	exclude, excludeFrom   []string
	oneFS                  bool
}

func newCommitCommand(e *env) *cobra.Command {
	var o commitOptions
	c := &cobra.Command{
		Use:   "commit SRC --image NAME [-m MSG]",
		Short: "Snapshot directory SRC as the new head of an image",
		Long: `Snapshot directory SRC as the new head of image NAME (created if new).
Only files whose stat changed since the image's last commit are read. The
last line on e.stdout is the new commit id.`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if o.image == "" {
				return usageError{fmt.Errorf("commit: --image NAME is required")}
			}
			ex, err := e.excludes(o.exclude, o.excludeFrom)
			if err != nil {
				return err
			}
			return e.withStore(func(st *store.Store) error {
				p := &snapshot.Progress{}
				stop := e.showProgress("commit", p)
				id, cm, err := client.Commit(c.Context(), st, e.path(args[0]), client.CommitOptions{
					Image: o.image, Message: o.message, Author: o.author, Exclude: ex,
					OneFileSystem: o.oneFS, Progress: p,
					Warn: func(err error) { fmt.Fprintf(e.stderr, "sim: warning: %v\n", err) },
				})
				stop()
				if err != nil {
					return err
				}
				s := cm.Stats
				fmt.Fprintf(e.stderr, "%s: %d files, %d dirs, %s; read %d files, added %d blobs (%s, %s stored)\n",
					o.image, s.Files, s.Dirs, fmtBytes(s.Bytes), s.ReadFiles, s.NewBlobs, fmtBytes(s.NewBytes), fmtBytes(s.StoredBytes))
				fmt.Fprintln(e.stdout, id)
				return nil
			})
		},
	}
	f := c.Flags()
	f.StringVar(&o.image, "image", "", "image (branch) to commit to")
	f.StringVarP(&o.message, "message", "m", "", "commit message")
	f.StringVar(&o.author, "author", "", "author (default user@host)")
	f.StringArrayVar(&o.exclude, "exclude", nil, "exclude paths matching `PATTERN` (repeatable)")
	f.StringArrayVar(&o.excludeFrom, "exclude-from", nil, "read exclude patterns from `FILE`, one per line")
	f.BoolVar(&o.oneFS, "one-file-system", false, "do not descend into other filesystems (mount points are kept empty)")
	return c
}
