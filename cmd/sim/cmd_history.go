package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/sync/units"
)

type commitJSON struct {
	ID chunk.ID `json:"id"`
	*store.Commit
}

func newLogCommand(e *env) *cobra.Command {
	var max int
	var oneline bool
	c := &cobra.Command{
		Use:   "log REF",
		Short: "Show the history of an image, tag or commit",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return e.withStore(func(st *store.Store) error {
				id, err := st.Resolve(args[0])
				if err != nil {
					return err
				}
				var out []commitJSON
				for n := 0; !id.IsZero() && (max <= 0 || n < max); n++ {
					cm, err := st.Commit(id)
					if err != nil {
						return err
					}
					out = append(out, commitJSON{id, cm})
					id = chunk.ID{}
					if len(cm.Parents) > 0 && !st.IsShallow(out[len(out)-1].ID) {
						id = cm.Parents[0]
					}
				}
				if e.json {
					return e.printJSON(out)
				}
				if oneline {
					for _, c := range out {
						fmt.Fprintf(e.stdout, "%s %s\n", c.ID.Short(), subject(c.Message))
					}
					return nil
				}
				for i, c := range out {
					if i > 0 {
						fmt.Fprintln(e.stdout)
					}
					printCommit(e.stdout, c.ID, c.Commit, false)
				}
				return nil
			})
		},
	}
	c.Flags().IntVarP(&max, "max-count", "n", 0, "show at most `N` commits")
	c.Flags().BoolVar(&oneline, "oneline", false, "one line a commit: short id and the message's first line")
	e.addJSONFlag(c)
	return c
}

// subject is a message's first line.
func subject(msg string) string {
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		return msg[:i]
	}
	return msg
}

func printCommit(w io.Writer, id chunk.ID, cm *store.Commit, full bool) {
	fmt.Fprintf(w, "commit %s\n", id)
	fmt.Fprintf(w, "Image:  %s\n", cm.Image)
	fmt.Fprintf(w, "Author: %s\n", cm.Author)
	fmt.Fprintf(w, "Date:   %s\n", cm.Time.Local().Format(time.RFC1123Z))
	if full {
		fmt.Fprintf(w, "Tree:   %s\n", cm.Tree)
		for _, p := range cm.Parents {
			fmt.Fprintf(w, "Parent: %s\n", p)
		}
		if cm.Host != "" {
			fmt.Fprintf(w, "Host:   %s\n", cm.Host)
		}
	}
	s := cm.Stats
	fmt.Fprintf(w, "Stats:  %d files, %d dirs, %s in %d chunks; added %d blobs, %s (%s stored)\n",
		s.Files, s.Dirs, units.Bytes(s.Bytes), s.Chunks, s.NewBlobs, units.Bytes(s.NewBytes), units.Bytes(s.StoredBytes))
	if cm.Message != "" {
		fmt.Fprintln(w)
		for _, l := range strings.Split(cm.Message, "\n") {
			fmt.Fprintf(w, "    %s\n", l)
		}
	}
}

func newShowCommand(e *env) *cobra.Command {
	var stat bool
	c := &cobra.Command{
		Use:   "show REF",
		Short: "Show one commit in full",
		Long: `Show one commit in full. --stat adds what it changed from its first parent
(from nothing for an image's first commit, or when the parent is not in
this store), as sim diff --stat prints it.`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return e.withStore(func(st *store.Store) error {
				id, cm, err := resolveCommit(st, args[0])
				if err != nil {
					return err
				}
				var changes []snapshot.Change
				var ds *snapshot.DiffStat
				if stat {
					if changes, ds, err = commitChanges(st, id, cm); err != nil {
						return err
					}
				}
				if e.json {
					if !stat {
						return e.printJSON(commitJSON{id, cm})
					}
					if changes == nil {
						changes = []snapshot.Change{}
					}
					return e.printJSON(struct {
						commitJSON
						Changes []snapshot.Change  `json:"changes"`
						Stat    *snapshot.DiffStat `json:"stat"`
					}{commitJSON{id, cm}, changes, ds})
				}
				printCommit(e.stdout, id, cm, true)
				if stat {
					fmt.Fprintln(e.stdout)
					printChanges(e.stdout, changes, ds)
				}
				return nil
			})
		},
	}
	c.Flags().BoolVar(&stat, "stat", false, "also list what the commit changed, with counts and bytes")
	e.addJSONFlag(c)
	return c
}

// commitChanges is what commit id changed from its first parent, or from
// an empty tree when it has none in this store.
func commitChanges(st *store.Store, id chunk.ID, cm *store.Commit) ([]snapshot.Change, *snapshot.DiffStat, error) {
	d := &snapshot.Differ{Src: st, Stat: &snapshot.DiffStat{}}
	var base chunk.ID
	if len(cm.Parents) > 0 && !st.IsShallow(id) {
		if pc, err := st.Commit(cm.Parents[0]); err == nil {
			base = pc.Tree
		}
	}
	if base.IsZero() {
		// Nothing, under a root with the commit's own metadata (a
		// first commit creates its files, not its root).
		root, err := snapshot.LoadTree(st, cm.Tree)
		if err != nil {
			return nil, nil, err
		}
		empty := snapshot.Tree{Self: root.Self}
		b := empty.Encode()
		base = chunk.Sum(b)
		ms := &snapshot.MemSaver{Next: st}
		ms.Put(store.TypeTree, base, b)
		d.Src = ms
	}
	changes, err := d.Diff(base, cm.Tree)
	return changes, d.Stat, err
}

type lsEntry struct {
	Path   string    `json:"path"`
	Type   string    `json:"type"`
	Mode   string    `json:"mode"`
	UID    uint32    `json:"uid"`
	GID    uint32    `json:"gid"`
	Size   uint64    `json:"size"`
	Mtime  time.Time `json:"mtime"`
	Target string    `json:"target,omitempty"`
	Link   string    `json:"hardlink,omitempty"`
	Xattrs []string  `json:"xattrs,omitempty"`
}

func toLsEntry(p string, n *snapshot.Node) lsEntry {
	e := lsEntry{Path: p, Type: n.Kind.String(), Mode: fmt.Sprintf("%04o", n.Mode), UID: n.UID, GID: n.GID,
		Size: n.Size, Mtime: time.Unix(n.MtimeSec, int64(n.MtimeNsec)).UTC(), Target: n.Target, Link: n.Link}
	if n.Kind == snapshot.KindChar || n.Kind == snapshot.KindBlock {
		e.Target = fmt.Sprintf("%d,%d", n.Major, n.Minor)
	}
	for _, x := range n.Xattrs {
		e.Xattrs = append(e.Xattrs, x.Name)
	}
	return e
}

func modeString(n *snapshot.Node) string {
	t := map[snapshot.Kind]byte{snapshot.KindFile: '-', snapshot.KindDir: 'd', snapshot.KindSymlink: 'l',
		snapshot.KindChar: 'c', snapshot.KindBlock: 'b', snapshot.KindFifo: 'p', snapshot.KindSocket: 's'}[n.Kind]
	b := []byte{t}
	const rwx = "rwxrwxrwx"
	for i := 0; i < 9; i++ {
		if n.Mode&(1<<(8-i)) != 0 {
			b = append(b, rwx[i])
		} else {
			b = append(b, '-')
		}
	}
	for i, bit := range []uint32{04000, 02000, 01000} {
		if n.Mode&bit == 0 {
			continue
		}
		pos := 3 + 3*i
		if i == 2 {
			pos = 9
		}
		c := "sst"[i]
		if b[pos] == '-' {
			c = "SST"[i]
		}
		b[pos] = c
	}
	return string(b)
}

func newLsCommand(e *env) *cobra.Command {
	var long, recursive bool
	c := &cobra.Command{
		Use:   "ls REF [PATH]",
		Short: "List a directory of a commit",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(c *cobra.Command, args []string) error {
			p := "/"
			if len(args) == 2 {
				p = args[1]
			}
			return e.withStore(func(st *store.Store) error {
				_, cm, err := resolveCommit(st, args[0])
				if err != nil {
					return err
				}
				n, err := snapshot.Lookup(st, cm.Tree, p)
				if err != nil {
					return err
				}
				var ents []lsEntry
				var nodes []*snapshot.Node
				add := func(path string, n *snapshot.Node) error {
					ents = append(ents, toLsEntry(path, n))
					cp := *n
					nodes = append(nodes, &cp)
					return nil
				}
				base := strings.Trim(p, "/")
				if n.Kind != snapshot.KindDir {
					add(base, n)
				} else if recursive {
					err = snapshot.Walk(st, n.Subtree, func(rel string, n *snapshot.Node) error {
						return add(joinSlash(base, rel), n)
					})
				} else {
					t, err2 := snapshot.LoadTree(st, n.Subtree)
					if err2 != nil {
						return err2
					}
					for i := range t.Entries {
						e := t.Entries[i]
						if e.Kind == snapshot.KindDir {
							n, err := snapshot.Lookup(st, n.Subtree, e.Name)
							if err != nil {
								return err
							}
							e = *n
						}
						add(joinSlash(base, e.Name), &e)
					}
				}
				if err != nil {
					return err
				}
				if e.json {
					return e.printJSON(ents)
				}
				tw := tabwriter.NewWriter(e.stdout, 0, 0, 1, ' ', 0)
				for i, ent := range ents {
					name := quote(ent.Path)
					if !recursive && n.Kind == snapshot.KindDir {
						name = quote(nodes[i].Name)
					}
					if !long {
						fmt.Fprintln(e.stdout, name)
						continue
					}
					if ent.Type == "symlink" {
						name += " -> " + quote(ent.Target)
					}
					size := fmt.Sprint(ent.Size)
					if nodes[i].Kind == snapshot.KindChar || nodes[i].Kind == snapshot.KindBlock {
						size = ent.Target
					}
					fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\n", modeString(nodes[i]), ent.UID, ent.GID, size,
						ent.Mtime.Local().Format("2006-01-02 15:04:05.000000000"), name)
				}
				return tw.Flush()
			})
		},
	}
	c.Flags().BoolVarP(&long, "long", "l", false, "long listing: mode, owner, size, mtime")
	c.Flags().BoolVarP(&recursive, "recursive", "R", false, "list everything below PATH")
	e.addJSONFlag(c)
	return c
}

func joinSlash(a, b string) string {
	if a == "" {
		return b
	}
	return a + "/" + b
}

func newCatCommand(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "cat REF PATH",
		Short: "Write a file of a commit to stdout",
		Args:  cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			return e.withStore(func(st *store.Store) error {
				_, cm, err := resolveCommit(st, args[0])
				if err != nil {
					return err
				}
				n, err := snapshot.Lookup(st, cm.Tree, args[1])
				if err != nil {
					return err
				}
				if n.Kind != snapshot.KindFile {
					return fmt.Errorf("%s is a %s, not a regular file", args[1], n.Kind)
				}
				return snapshot.WriteContent(st, n, e.stdout)
			})
		},
	}
}

// resolveCommit turns a REF into its commit.
func resolveCommit(st *store.Store, ref string) (chunk.ID, *store.Commit, error) {
	id, err := st.Resolve(ref)
	if err != nil {
		return id, nil, err
	}
	cm, err := st.Commit(id)
	return id, cm, err
}
