package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/client"
	"github.com/systemimager/sim/client/install"
	"github.com/systemimager/sim/client/node"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
	"github.com/systemimager/sim/sync/units"
)

type checkoutOptions struct {
	exclude, excludeFrom []string
	force, noSync        bool
	from                 string
	rf                   remoteFlags
	tf                   simsync.TransportFlags
}

func newCheckoutCommand(e *env) *cobra.Command {
	var o checkoutOptions
	c := &cobra.Command{
		Use:   "checkout REF DIR",
		Short: "Make DIR exactly the tree of REF (install, update or roll back in place)",
		Long: `Make DIR exactly the tree of REF. DIR may be missing, empty, or a previous
checkout: then only entries that differ are rewritten (through a temporary
file and rename), extraneous entries are removed and directory metadata is
fixed last. A non-empty directory sim did not check out is refused unless
--force. Excluded paths are neither written nor removed; nor is the store
itself when it lies inside DIR (a node's /var/lib/sim).

With --from URL, REF is resolved on that server and the objects the node's
store (--store) lacks are fetched first: a node install, update or rollback
over the network that downloads only what changed. --transport chooses
how the objects travel (refs and commits always come over HTTP).`,
		Args: cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			ex, err := e.excludes(o.exclude, o.excludeFrom)
			if err != nil {
				return err
			}
			dir := e.path(args[1])
			if abs, _ := filepath.Abs(dir); abs == "/" && !o.force {
				// A checkout makes DIR exactly the image: on a running
				// system that would undo its identity, its bootloader and
				// its local state.
				return usageError{errors.New("checkout: DIR is / (a running system): use sim update, which keeps the node's identity, store, mounts and local state (or --force to make / exactly the image)")}
			}
			copts := client.CheckoutOptions{Exclude: ex, Force: o.force, NoSync: o.noSync, RequireSignature: o.rf.requireSig}
			with := e.withStore
			if o.from != "" {
				with = e.withStoreInit
			}
			return with(func(st *store.Store) error {
				p := &snapshot.Progress{}
				copts.Progress = p
				// A node may roll back to its own effective commit.
				copts.Verify = func(id chunk.ID) error { return install.CheckSigned(st, id, o.rf.requireSig) }
				var res *node.Result
				if o.from != "" {
					r, err := o.rf.remote(e, o.from)
					if err != nil {
						return err
					}
					tr, err := o.tf.Open(c.Context(), e.transportEnv(st, r))
					if err != nil {
						return err
					}
					stop := e.showFetch("fetch", r)
					res, err = node.Checkout(c.Context(), node.CheckoutOptions{Store: st, Remote: r, Transport: tr, Ref: args[0], Dir: dir, Checkout: copts,
						Fetched: func(_ chunk.ID, ps simsync.PullStats) {
							stop()
							if !e.json {
								e.reportPull(ps)
							}
							stop = e.showProgress("checkout", p)
						}})
					stop()
					if err != nil {
						return err
					}
				} else {
					id, err := st.Resolve(args[0])
					if err != nil {
						return err
					}
					stop := e.showProgress("checkout", p)
					stats, err := client.Checkout(c.Context(), st, id, dir, copts)
					stop()
					if err != nil {
						return err
					}
					res = &node.Result{Commit: id, CheckoutStats: stats}
				}
				if e.json {
					out := struct {
						Commit chunk.ID `json:"commit"`
						*snapshot.CheckoutStats
						Transfer *simsync.PullStats `json:"transfer,omitempty"`
						// Feed: what the checkout beside the fetch read
						// from the fetch's decoded frames.
						Feed *simsync.FeedStats `json:"feed,omitempty"`
					}{Commit: res.Commit, CheckoutStats: res.CheckoutStats}
					if o.from != "" {
						out.Transfer, out.Feed = &res.Transfer, &res.Feed
					}
					return e.printJSON(withReport(out, out.Transfer))
				}
				s := res.CheckoutStats
				fmt.Fprintf(e.stderr, "checked out %s into %s: %d written (%s), %d removed, %d metadata fixed, %d unchanged\n",
					res.Commit.Short(), args[1], s.Written, units.Bytes(s.BytesWritten), s.Removed, s.Metadata, s.Unchanged)
				return nil
			})
		},
	}
	f := c.Flags()
	f.StringArrayVar(&o.exclude, "exclude", nil, "leave paths matching `PATTERN` alone (repeatable)")
	f.StringArrayVar(&o.excludeFrom, "exclude-from", nil, "read exclude patterns from `FILE`")
	f.BoolVar(&o.force, "force", false, "overwrite a non-empty directory sim did not check out")
	f.BoolVar(&o.noSync, "no-sync", false, "do not syncfs at the end")
	f.StringVar(&o.from, "from", "", "fetch REF from the sim server at `URL` into the local store first (URL1,URL2,...: frontends of one store, the next used when one fails)")
	o.rf.add(c)
	o.rf.addRequire(c)
	o.tf.Add(c.Flags())
	e.addJSONFlag(c)
	return c
}

// isDirArg says whether a diff operand names a directory rather than a
// ref: it contains a slash or is "." / "..".
func isDirArg(s string) bool {
	return strings.Contains(s, "/") || s == "." || s == ".."
}

func newDiffCommand(e *env) *cobra.Command {
	var stat, exitCode, quiet bool
	var exclude []string
	c := &cobra.Command{
		Use:   "diff REF REF | diff REF DIR",
		Short: "Show what differs between two commits, or a commit and a directory",
		Long: `Show the paths added, removed and modified between two commits, or between
a commit and a directory (an operand with a slash is a directory: write
./name for one in the current directory), with what changed for each:
content, type, mode, owner, xattrs, mtime, target, device, link. --stat adds
the bytes that would be transferred to turn the first into the second.

With --exit-code the exit status is that of diff(1) and git diff
--exit-code: 0 when there are no differences, 1 when there are, and 2
when the diff could not be made (an unknown ref, an unreadable
directory) or the command line is wrong. --quiet prints nothing and
implies --exit-code.`,
		Args: cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			if quiet {
				exitCode = true
			}
			err := e.withStore(func(st *store.Store) error {
				a, err := resolveTree(st, args[0])
				if err != nil {
					return err
				}
				m, err := snapshot.NewMatcher(exclude)
				if err != nil {
					return err
				}
				d := &snapshot.Differ{Src: st, Exclude: m}
				var b chunk.ID
				if isDirArg(args[1]) {
					ms := &snapshot.MemSaver{Next: st}
					res, err := snapshot.Commit(c.Context(), ms, st.Config().Chunker, e.path(args[1]), snapshot.CommitOptions{Exclude: m})
					if err != nil {
						return err
					}
					b = res.Root
					d.Src = ms
				} else if b, err = resolveTree(st, args[1]); err != nil {
					return err
				}
				if stat {
					d.Stat = &snapshot.DiffStat{}
				}
				changes, err := d.Diff(a, b)
				if err != nil {
					return err
				}
				if len(changes) > 0 && exitCode {
					err = exitError{code: 1}
				}
				if quiet {
					return err
				}
				if e.json {
					if changes == nil {
						changes = []snapshot.Change{}
					}
					if perr := e.printJSON(struct {
						Changes []snapshot.Change  `json:"changes"`
						Stat    *snapshot.DiffStat `json:"stat,omitempty"`
					}{changes, d.Stat}); perr != nil {
						return perr
					}
					return err
				}
				printChanges(e.stdout, changes, d.Stat)
				return err
			})
			var x exitError
			if err != nil && exitCode && !errors.As(err, &x) {
				var f forwarded
				if errors.As(err, &f) { // the server ran it: its code stands
					return err
				}
				return exitError{code: 2, err: err}
			}
			return err
		},
	}
	c.Flags().BoolVar(&stat, "stat", false, "also print counts and the bytes that would be transferred")
	c.Flags().BoolVar(&exitCode, "exit-code", false, "exit 1 when there are differences, 0 when none, 2 on trouble")
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "print nothing; implies --exit-code")
	c.Flags().StringArrayVar(&exclude, "exclude", nil, "ignore paths matching `PATTERN`")
	e.addJSONFlag(c)
	return c
}

// printChanges prints a diff, one path a line, and its figures.
func printChanges(w io.Writer, changes []snapshot.Change, s *snapshot.DiffStat) {
	for _, ch := range changes {
		mark := map[snapshot.Action]string{snapshot.Added: "+", snapshot.Removed: "-", snapshot.Modified: "M"}[ch.Action]
		what := ""
		if len(ch.What) > 0 {
			what = " (" + strings.Join(ch.What, ", ") + ")"
		}
		fmt.Fprintf(w, "%s %s%s\n", mark, quote(ch.Path), what)
	}
	if s != nil {
		fmt.Fprintf(w, "%d added, %d removed, %d modified; to transfer: %d chunks, %s + %d trees, %s\n",
			s.Added, s.Removed, s.Modified, s.NewChunks, units.Bytes(s.NewChunkBytes), s.NewTrees, units.Bytes(s.NewTreeBytes))
	}
}

func resolveTree(st *store.Store, ref string) (chunk.ID, error) {
	_, cm, err := resolveCommit(st, ref)
	if err != nil {
		if _, serr := os.Stat(ref); serr == nil && errors.Is(err, store.ErrNotFound) {
			return chunk.ID{}, fmt.Errorf("%w (to diff against the directory, write ./%s)", err, ref)
		}
		return chunk.ID{}, err
	}
	return cm.Tree, nil
}

func newFsckCommand(e *env) *cobra.Command {
	var readData bool
	c := &cobra.Command{
		Use:   "fsck [--read-data]",
		Short: "Check the store's consistency (and with --read-data every byte)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, args []string) error {
			return e.withStore(func(st *store.Store) error {
				rep, err := client.Fsck(st, readData)
				if rep == nil {
					return err
				}
				if e.json {
					if e := e.printJSON(rep); e != nil {
						return e
					}
					return err
				}
				for _, w := range rep.Warnings {
					fmt.Fprintf(e.stdout, "warning: %s\n", w)
				}
				for _, p := range rep.Problems {
					fmt.Fprintf(e.stdout, "error: %s\n", p)
				}
				for _, b := range rep.Broken {
					fmt.Fprintf(e.stdout, "broken: %s\n", b)
				}
				mode := "structure"
				if readData {
					mode = "structure and data"
				}
				fmt.Fprintf(e.stdout, "checked %s: %d packs (%s), %d blobs, %d commits: ", mode, rep.Stats.Packs, units.Bytes(rep.Stats.Bytes), rep.Stats.Blobs, rep.Commits)
				if err != nil {
					fmt.Fprintf(e.stdout, "%d errors\n", len(rep.Problems))
					return err
				}
				fmt.Fprintln(e.stdout, "no errors")
				return nil
			})
		},
	}
	c.Flags().BoolVar(&readData, "read-data", false, "re-hash every pack and blob")
	e.addJSONFlag(c)
	return c
}

func newGCCommand(e *env) *cobra.Command {
	var expire, grace time.Duration
	c := &cobra.Command{
		Use:   "gc [--reflog-expire DURATION] [--grace DURATION]",
		Short: "Remove what no image, tag or reflog reaches, rewriting packs",
		Long: `Remove what no image, tag or reflog reaches, rewriting packs; crash-safe.
Reflogs keep every former head of an image (what a node has been updated
from, for rollbacks) until --reflog-expire drops entries older than
DURATION (e.g. 720h).

On an S3 store, which other frontends and admins may be writing, gc
deletes nothing at once: it copies the live blobs out of packs that hold
dead ones and writes a mark of what is dead; a later gc, once the mark is
older than --grace (default 1h: longer than any push), walks again and
deletes only what nothing pushed since needs. --grace 0 sweeps at once:
only when nothing else writes the store.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, args []string) error {
			return e.withStore(func(st *store.Store) error {
				if expire > 0 {
					n, err := st.ExpireReflogs(time.Now().Add(-expire))
					if err != nil {
						return err
					}
					fmt.Fprintf(e.stdout, "gc: dropped %d reflog entries older than %s\n", n, expire)
				}
				p := &snapshot.Progress{}
				if st.Remote() != nil {
					stop := e.showCount("gc", "trees", p)
					rep, err := client.GCRemote(st, client.GCRemoteOptions{Grace: grace, Progress: p})
					stop()
					if rep != nil {
						printRemoteGC(e, rep)
					}
					return err
				}
				stop := e.showCount("gc", "objects", p)
				gs, err := client.GCProgress(st, p)
				stop()
				if err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "gc: removed %d blobs and %d commits; %d packs deleted, %d rewritten; %s freed\n",
					gs.BlobsRemoved, gs.CommitsRemoved, gs.PacksRemoved, gs.PacksRewritten, units.Bytes(gs.BytesFreed))
				return nil
			})
		},
	}
	c.Flags().DurationVar(&expire, "reflog-expire", 0, "first drop reflog entries older than `DURATION`")
	c.Flags().DurationVar(&grace, "grace", time.Hour, "S3 store: sweep a mark only once it is `DURATION` old (longer than any push)")
	return c
}

func printRemoteGC(e *env, rep *client.GCRemoteReport) {
	if rep.Swept > 0 {
		fmt.Fprintf(e.stdout, "gc: swept %d marks: %d packs deleted (%s freed), %d kept for what was pushed since, %d index files replaced, %d commits removed\n",
			rep.Swept, rep.PacksDeleted, units.Bytes(rep.BytesFreed), rep.PacksKept, rep.IndexReplaced, rep.CommitsRemoved)
	}
	if rep.Mark != nil {
		fmt.Fprintf(e.stdout, "gc: marked %d packs (%s) and %d commits dead (%s); %d live blobs copied into %d new packs\n",
			rep.PacksMarked, units.Bytes(rep.BytesMarked), rep.CommitsMarked, rep.Mark.Key, rep.BlobsCopied, rep.PacksRewritten)
	} else {
		fmt.Fprintln(e.stdout, "gc: nothing new to mark")
	}
	for _, m := range rep.Waiting {
		fmt.Fprintf(e.stdout, "gc: mark %s (%d packs, %s) is swept by a gc from %s on\n",
			m.Key, len(m.Packs), units.Bytes(m.Bytes), m.Time.Add(m.Grace).Local().Format("2006-01-02 15:04:05"))
	}
}
