package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/systemimager/sim/client/catalog"
	"github.com/systemimager/sim/client/fleet"
	"github.com/systemimager/sim/client/node"
	"github.com/systemimager/sim/client/rollout"
	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
	"github.com/systemimager/sim/sync/units"
)

// The server's side of day 2: sim rollout, sim drift. They run inside sim
// serve (forwarded there when it holds the store), where the fleet and the
// rollout engine live; status, list, log and plan also read the store
// when no server runs.

func (e *env) fleet() *fleet.Service {
	f, _ := e.service("fleet").(*fleet.Service)
	return f
}

func (e *env) engine() *rollout.Engine {
	r, _ := e.service("rollout").(*rollout.Engine)
	return r
}

var errNoServer = errors.New("no sim serve is running on this store: rollouts and drift scans run inside the server (start it: sim serve)")

// selectFlags choose nodes: --group, --nodes, --all.
type selectFlags struct {
	group, nodes string
	all          bool
}

func (s *selectFlags) add(c *cobra.Command) {
	c.Flags().StringVar(&s.group, "group", "", "the nodes of `GROUP`")
	c.Flags().StringVar(&s.nodes, "nodes", "", "these nodes: `LIST` of names and ranges (n1,n5-n8,rack2-n[01-16])")
	c.Flags().BoolVar(&s.all, "all", false, "every node the server knows")
}

func (s *selectFlags) given() bool { return s.group != "" || s.nodes != "" || s.all }

// resolve lists the selected nodes in order, and says how they were
// chosen. known are the nodes the fleet knows (registered or heard of).
func (s *selectFlags) resolve(st *store.Store, known []fleet.NodeState) ([]string, string, error) {
	n := 0
	for _, b := range []bool{s.group != "", s.nodes != "", s.all} {
		if b {
			n++
		}
	}
	if n != 1 {
		return nil, "", usageError{errors.New("choose the nodes with one of --group G, --nodes LIST or --all")}
	}
	var names []string
	var how string
	switch {
	case s.all:
		for _, k := range known {
			names = append(names, k.Name)
		}
		how = "--all"
	case s.group != "":
		reg, err := catalog.LoadRegistry(st)
		if err != nil {
			return nil, "", err
		}
		if reg.Groups[s.group] == nil {
			return nil, "", fmt.Errorf("no group %q (sim group add %s)", s.group, s.group)
		}
		for name, nd := range reg.Nodes {
			for _, g := range nd.Groups {
				if g == s.group {
					names = append(names, name)
				}
			}
		}
		if len(names) == 0 {
			return nil, "", fmt.Errorf("group %s has no nodes", s.group)
		}
		how = "--group " + s.group
	default:
		var err error
		if names, err = fleet.ExpandNodes(s.nodes); err != nil {
			return nil, "", usageError{err}
		}
		how = "--nodes " + s.nodes
		return names, how, nil // in the order given
	}
	sort.Slice(names, func(i, j int) bool { return fleet.NodeLess(names[i], names[j]) })
	return names, how, nil
}

// knownNodes is the live view when a server runs, else what it kept.
func (e *env) knownNodes(st *store.Store) []fleet.NodeState {
	if f := e.fleet(); f != nil {
		return f.Nodes()
	}
	saved, err := fleet.Load(st)
	if err != nil {
		// What could be read still shows; the rest is named.
		fmt.Fprintf(e.stderr, "sim: warning: the fleet's saved state: %v\n", err)
	}
	byName := map[string]fleet.NodeState{}
	for n, s := range saved {
		byName[n] = s
	}
	if reg, err := catalog.LoadRegistry(st); err == nil {
		for n, nd := range reg.Nodes {
			s, ok := byName[n]
			if !ok {
				s = fleet.NodeState{Name: n, State: fleet.Unknown, Drift: -1}
			}
			s.Groups = nd.Groups
			byName[n] = s
		}
	}
	out := make([]fleet.NodeState, 0, len(byName))
	for _, s := range byName {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return fleet.NodeLess(out[i].Name, out[j].Name) })
	return out
}

func newRolloutCommand(e *env) *cobra.Command {
	c := &cobra.Command{
		Use:   "rollout",
		Short: "Update groups of running nodes: canary, waves, health gating, pause, abort, revert, plan",
		Long: `A rollout brings nodes to a commit wave by wave: a canary first, then waves;
a wave starts only when the one before is done, and more failed nodes than
--max-failures (a node whose health check fails rolls itself back, and
counts) halt it with the reason. It runs inside sim serve; its state is in
the store, so a restarted server carries on.`,
	}
	c.AddCommand(newRolloutStartCommand(e), newRolloutStatusCommand(e), newRolloutListCommand(e),
		newRolloutChangeCommand(e, "pause", "Stop giving new orders (those given run to their end)"),
		newRolloutChangeCommand(e, "resume", "Continue a paused or halted rollout (a halted one's failures so far are accepted)"),
		newRolloutChangeCommand(e, "abort", "End a rollout; --revert also rolls every node it updated back"),
		newRolloutLogCommand(e), newRolloutPlanCommand(e))
	return c
}

func newRolloutStartCommand(e *env) *cobra.Command {
	var sel selectFlags
	var spec rollout.Spec
	var healthTimeout, nodeTimeout time.Duration
	c := &cobra.Command{
		Use:   "start REF (--group G | --nodes A,B,... | --all)",
		Short: "Start a rollout of REF; prints its id as the last line",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if !sel.given() {
				return usageError{errors.New("rollout start: choose the nodes with --group G, --nodes LIST or --all")}
			}
			return e.withStore(func(st *store.Store) error {
				eng := e.engine()
				if eng == nil {
					return errNoServer
				}
				names, how, err := sel.resolve(st, e.fleet().Nodes())
				if err != nil {
					return err
				}
				spec.Ref, spec.Nodes, spec.Select = args[0], names, how
				spec.HealthTimeout, spec.NodeTimeout = healthTimeout.Seconds(), nodeTimeout.Seconds()
				r, err := eng.Start(spec)
				if err != nil {
					return err
				}
				fmt.Fprintf(e.stderr, "rollout %s: %s (%s, %s) to %d nodes (%s):\n", r.ID, spec.Ref, shortID(r.Commit), r.Image, len(names), how)
				for i, w := range r.Waves {
					name := fmt.Sprintf("wave %d", i)
					if i == 0 && spec.Canary > 0 {
						name = "canary"
					} else if spec.Canary == 0 {
						name = fmt.Sprintf("wave %d", i+1)
					}
					fmt.Fprintf(e.stderr, "  %-8s %s\n", name, strings.Join(w, ","))
				}
				fmt.Fprintf(e.stderr, "follow it: sim rollout status %s --watch\n", r.ID)
				fmt.Fprintln(e.stdout, r.ID)
				return nil
			})
		},
	}
	sel.add(c)
	f := c.Flags()
	f.IntVar(&spec.Canary, "canary", 1, "`N` nodes first, alone")
	f.StringVar(&spec.Wave, "wave", "", "then waves of `N` nodes, or P% of them (default: all the rest at once)")
	f.IntVar(&spec.MaxFailures, "max-failures", 0, "halt when more than `N` nodes fail or roll back")
	f.StringArrayVar(&spec.Health, "health", nil, "health check `CMD` each node runs after its update, besides its image's /etc/sim/health.d (repeatable)")
	f.DurationVar(&healthTimeout, "health-timeout", node.DefaultHealthTimeout, "bound of each health check")
	f.StringVar(&spec.Transport, "transport", "http", "how a wave's nodes fetch: http, bittorrent (one swarm), multicast (one session), or auto")
	f.BoolVar(&spec.StageFirst, "stage-first", false, "fetch the update onto every node before any applies")
	f.DurationVar(&nodeTimeout, "node-timeout", rollout.DefaultNodeTimeout, "a node that has not answered its order after this long fails")
	return c
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// loadRollout is rollout id (the newest when id is ""), live when a
// server runs.
func (e *env) loadRollout(st *store.Store, id string) (*rollout.Rollout, error) {
	if id == "" {
		all, err := rollout.List(st.Dir())
		if err != nil {
			return nil, err
		}
		if len(all) == 0 {
			return nil, errors.New("no rollouts yet (sim rollout start)")
		}
		id = all[len(all)-1].ID
	}
	if eng := e.engine(); eng != nil {
		return eng.Get(id)
	}
	return rollout.Load(st.Dir(), id)
}

func newRolloutStatusCommand(e *env) *cobra.Command {
	var watch bool
	c := &cobra.Command{
		Use:   "status [ID] [--json] [--watch]",
		Short: "Show a rollout (default: the newest): its state, each node's",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			id := ""
			if len(args) == 1 {
				id = args[0]
			}
			return e.withStore(func(st *store.Store) error {
				r, err := e.loadRollout(st, id)
				if err != nil {
					return err
				}
				if watch {
					drawn := false
					if r, drawn, err = e.watchRollout(c.Context(), st, r); err != nil {
						return err
					}
					if drawn && !e.json {
						return nil // the live view's last frame is the status
					}
				}
				if e.json {
					return e.printJSON(r.Status())
				}
				e.printRollout(r)
				return nil
			})
		},
	}
	c.Flags().BoolVarP(&watch, "watch", "w", false, "follow it until it is done, halted or aborted: redrawn in place on a terminal, else one line per change")
	e.addJSONFlag(c)
	return c
}

func summary(r *rollout.Rollout) string {
	cnt := r.Counts()
	var parts []string
	for _, s := range []string{rollout.NodeDone, rollout.NodeFailed, rollout.RolledBack, rollout.Staging, rollout.Applying, rollout.Checking, rollout.Pending} {
		if cnt[s] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", cnt[s], s))
		}
	}
	wave := fmt.Sprintf("wave %d/%d", min(r.Wave+1, len(r.Waves)), len(r.Waves))
	return fmt.Sprintf("%s %s, %s: %s", r.ID, r.State, wave, strings.Join(parts, ", "))
}

// watchRollout follows r until it ends (Ctrl-C stops following): on a
// terminal (stdout) the whole status is redrawn in place at each change,
// and drawn says so; otherwise a summary line per change on stderr.
func (e *env) watchRollout(ctx context.Context, st *store.Store, r *rollout.Rollout) (_ *rollout.Rollout, drawn bool, err error) {
	ended := func(r *rollout.Rollout) bool {
		return (r.State == rollout.Done || r.State == rollout.Halted || r.State == rollout.Aborted) && !r.Revert
	}
	t := e.terminalOf()
	var scr *screen
	if t.Stdout && !e.json {
		scr = newScreen(e.stdout, t)
		defer scr.close()
	}
	last := ""
	show := func(r *rollout.Rollout) {
		if scr != nil {
			var b strings.Builder
			writeRollout(&b, r)
			scr.draw(append([]string{time.Now().Format("15:04:05") + "  sim rollout status --watch (Ctrl-C stops following)", ""},
				strings.Split(strings.TrimRight(b.String(), "\n"), "\n")...))
			return
		}
		if s := summary(r); s != last {
			fmt.Fprintf(e.stderr, "%s %s\n", time.Now().Format("15:04:05"), s)
			last = s
		}
	}
	show(r)
	var events <-chan fleet.Event
	if f := e.fleet(); f != nil {
		sub := f.Hub().Subscribe(256)
		defer sub.Close()
		events = sub.C
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for !ended(r) {
		select {
		case <-ctx.Done():
			if scr != nil {
				return r, true, nil // stopped following: the view stays
			}
			return r, false, ctx.Err()
		case <-events:
		case <-tick.C:
		}
		nr, err := e.loadRollout(st, r.ID)
		if err != nil {
			return r, scr != nil, err
		}
		r = nr
		show(r)
	}
	return r, scr != nil, nil
}

func (e *env) printRollout(r *rollout.Rollout) { writeRollout(e.stdout, r) }

func writeRollout(out io.Writer, r *rollout.Rollout) {
	fmt.Fprintf(out, "rollout %s: %s\n", r.ID, r.State)
	fmt.Fprintf(out, "  %s (%s, %s) to %d nodes (%s), created %s\n", r.Spec.Ref, shortID(r.Commit), r.Image, len(r.Nodes), r.Spec.Select, r.Created.Local().Format("2006-01-02 15:04:05"))
	if r.Reason != "" {
		fmt.Fprintf(out, "  %s\n", r.Reason)
	}
	fmt.Fprintf(out, "  %s\n", summary(r))
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tWAVE\tSTATE\tCOMMIT\tBYTES\tERROR")
	for wi, w := range r.Waves {
		for _, n := range w {
			ns := r.Nodes[n]
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", n, wi, ns.State, dash(shortID(ns.Commit)), units.Bytes(ns.Bytes), dash(firstLineOf(ns.Error)))
		}
	}
	tw.Flush()
}

func firstLineOf(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

func newRolloutListCommand(e *env) *cobra.Command {
	c := &cobra.Command{
		Use:   "list",
		Short: "List the rollouts",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, args []string) error {
			return e.withStore(func(st *store.Store) error {
				all, err := rollout.List(st.Dir())
				if err != nil {
					return err
				}
				for i, r := range all {
					if eng := e.engine(); eng != nil {
						if lr, err := eng.Get(r.ID); err == nil {
							all[i] = lr
						}
					}
				}
				if e.json {
					out := []*rollout.Status{}
					for _, r := range all {
						out = append(out, r.Status())
					}
					return e.printJSON(out)
				}
				tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tSTATE\tREF\tCOMMIT\tNODES\tDONE\tFAILED\tCREATED")
				for _, r := range all {
					cnt := r.Counts()
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\n", r.ID, r.State, r.Spec.Ref, shortID(r.Commit), len(r.Nodes),
						cnt[rollout.NodeDone], cnt[rollout.NodeFailed]+cnt[rollout.RolledBack], r.Created.Local().Format("2006-01-02 15:04"))
				}
				return tw.Flush()
			})
		},
	}
	e.addJSONFlag(c)
	return c
}

func newRolloutChangeCommand(e *env, verb, short string) *cobra.Command {
	var revert bool
	c := &cobra.Command{
		Use:   verb + " ID",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return e.withStore(func(st *store.Store) error {
				eng := e.engine()
				if eng == nil {
					return errNoServer
				}
				var r *rollout.Rollout
				var err error
				switch verb {
				case "pause":
					r, err = eng.Pause(args[0])
				case "resume":
					r, err = eng.Resume(args[0])
				default:
					r, err = eng.Abort(args[0], revert)
				}
				if err != nil {
					return err
				}
				fmt.Fprintf(e.stderr, "rollout %s: %s\n", r.ID, r.State)
				return nil
			})
		},
	}
	if verb == "abort" {
		c.Use = "abort ID [--revert]"
		c.Flags().BoolVar(&revert, "revert", false, "roll every node the rollout updated back to where it was (also after it is done)")
	}
	return c
}

func newRolloutLogCommand(e *env) *cobra.Command {
	c := &cobra.Command{
		Use:   "log ID",
		Short: "Every event of a rollout: time, node, what, why",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return e.withStore(func(st *store.Store) error {
				ents, err := rollout.Log(st.Dir(), args[0])
				if err != nil {
					return err
				}
				if e.json {
					if ents == nil {
						ents = []rollout.Entry{}
					}
					return e.printJSON(ents)
				}
				for _, en := range ents {
					who := en.Node
					if who == "" {
						who = "-"
					}
					line := fmt.Sprintf("%s %-8s %s", en.Time.Local().Format("2006-01-02 15:04:05.000"), who, en.Event)
					if en.Reason != "" {
						line += ": " + strings.ReplaceAll(en.Reason, "\n", "\n        ")
					}
					fmt.Fprintln(e.stdout, line)
				}
				return nil
			})
		},
	}
	e.addJSONFlag(c)
	return c
}

func newRolloutPlanCommand(e *env) *cobra.Command {
	var sel selectFlags
	c := &cobra.Command{
		Use:   "plan REF (--group G | --nodes A,B,... | --all)",
		Short: "Before pushing anything: what a rollout of REF would cost each node and the server",
		Long: `Per node: the commit it is on, exactly the bytes it would fetch (the server
encodes each distinct delta once to measure it), the files it would add,
modify and remove, whether /boot changes (a reboot); and what the server
would send in all, per transport.`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if !sel.given() {
				return usageError{errors.New("rollout plan: choose the nodes with --group G, --nodes LIST or --all")}
			}
			return e.withStore(func(st *store.Store) error {
				known := e.knownNodes(st)
				names, _, err := sel.resolve(st, known)
				if err != nil {
					return err
				}
				cur := map[string]string{}
				byName := map[string]fleet.NodeState{}
				for _, k := range known {
					byName[k.Name] = k
				}
				for _, n := range names {
					cur[n] = byName[n].Current
				}
				p, err := rollout.MakePlan(c.Context(), st, simsync.NewPlanner(st), args[0], cur)
				if err != nil {
					return err
				}
				if e.json {
					return e.printJSON(p)
				}
				tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NODE\tCURRENT\tFETCH\tADDED\tMODIFIED\tREMOVED\tREBOOT\tNOTE")
				for _, n := range names {
					np := p.Nodes[n]
					fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\n", n, dash(shortID(np.Current)), units.Bytes(np.Bytes), np.Added, np.Modified, np.Removed,
						map[bool]string{true: "yes", false: "no"}[np.RebootRequired], np.Error)
				}
				tw.Flush()
				fmt.Fprintf(e.stdout, "%s (%s, %s): the server sends %s over http, about %s by bittorrent, %s by multicast\n", args[0], shortID(p.Commit), p.Image,
					units.Bytes(p.Total["http"]), units.Bytes(p.Total["bittorrent"]), units.Bytes(p.Total["multicast"]))
				return nil
			})
		},
	}
	sel.add(c)
	e.addJSONFlag(c)
	return c
}

func newDriftCommand(e *env) *cobra.Command {
	var group string
	var timeout time.Duration
	var local nodeFlags
	c := &cobra.Command{
		Use:   "drift [NODE... | --group G] [--json] | drift --root DIR",
		Short: "Which nodes differ from their image, by content: added, modified, removed, metadata",
		Long: `Ask nodes (all, the NODEs, or --group G's) to compare their root with what sim
last made it: every entry is stat'ed, and hashed when its stat differs from
the checkout's; the preserved paths are not looked at. Lists the paths
added, modified (content, type, target), removed, and whose metadata only
(mode, owner, mtime, xattrs) changed. With --root, scans this machine's
root itself, without a server.`,
		RunE: func(c *cobra.Command, args []string) error {
			if c.Flag("root").Changed {
				if len(args) > 0 || group != "" {
					return usageError{errors.New("drift --root scans this machine: no NODE or --group with it")}
				}
				return e.withNode(c, &local, "", func(m *node.Machine) error {
					d, err := m.Drift(c.Context())
					if err != nil {
						return err
					}
					name := m.Name
					if name == "" {
						name = "local"
					}
					return e.showDrift(map[string]*fleet.ResultMsg{name: {Node: name, OK: true, Drift: d}}, []string{name})
				})
			}
			return e.withStore(func(st *store.Store) error {
				f := e.fleet()
				if f == nil {
					return errNoServer
				}
				var names []string
				switch {
				case group != "" && len(args) > 0:
					return usageError{errors.New("drift: NODEs or --group, not both")}
				case group != "":
					var err error
					if names, _, err = (&selectFlags{group: group}).resolve(st, nil); err != nil {
						return err
					}
				case len(args) > 0:
					var err error
					if names, err = fleet.ExpandNodes(strings.Join(args, ",")); err != nil {
						return usageError{err}
					}
				default:
					for _, s := range f.Nodes() {
						if !s.LastSeen.IsZero() {
							names = append(names, s.Name)
						}
					}
				}
				return e.showDrift(f.Ask(c.Context(), names, fleet.OrderDrift, timeout), names)
			})
		},
	}
	c.Flags().StringVar(&group, "group", "", "the nodes of `GROUP`")
	c.Flags().DurationVar(&timeout, "timeout", time.Minute, "how long to wait for the nodes' answers")
	local.add(c)
	local.rf.add(c)
	e.addJSONFlag(c)
	return c
}

// showDrift prints the nodes' drift; a node that could not answer makes
// the command fail after the others are shown.
func (e *env) showDrift(res map[string]*fleet.ResultMsg, names []string) error {
	sort.Slice(names, func(i, j int) bool { return fleet.NodeLess(names[i], names[j]) })
	var failed []string
	if e.json {
		out := map[string]any{}
		for _, n := range names {
			r := res[n]
			if r == nil || r.Drift == nil {
				msg := "no answer"
				if r != nil && r.Error != "" {
					msg = r.Error
				}
				out[n] = map[string]string{"error": msg}
				failed = append(failed, n)
				continue
			}
			out[n] = r.Drift
		}
		if err := e.printJSON(out); err != nil {
			return err
		}
	} else {
		for _, n := range names {
			r := res[n]
			switch {
			case r == nil || r.Drift == nil:
				msg := "no answer"
				if r != nil && r.Error != "" {
					msg = r.Error
				}
				fmt.Fprintf(e.stdout, "%s: %s\n", n, msg)
				failed = append(failed, n)
			case r.Drift.Count() == 0:
				fmt.Fprintf(e.stdout, "%s: no drift from %s\n", n, r.Drift.Commit.Short())
			default:
				fmt.Fprintf(e.stdout, "%s: %d paths differ from %s\n", n, r.Drift.Count(), r.Drift.Commit.Short())
				e.printDrift(r.Drift, "  ")
			}
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("drift: %d nodes did not answer: %s", len(failed), strings.Join(failed, ", "))
	}
	return nil
}
