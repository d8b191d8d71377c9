package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/systemimager/sim/client/agent"
	"github.com/systemimager/sim/client/install"
	"github.com/systemimager/sim/client/node"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
	"github.com/systemimager/sim/sync/units"
)

// The node's side of day 2: sim update, sim rollback, sim agent and the
// local sim drift --root. They run on the node's own store (default
// ROOT/var/lib/sim), never forwarded to a server.

// opTrace, when set (the crash tests, from TestMain), is called after
// every change an apply makes.
var opTrace func(op, path string)

type nodeFlags struct {
	root, name string
	rf         remoteFlags
}

func (f *nodeFlags) add(c *cobra.Command) {
	c.Flags().StringVar(&f.root, "root", "/", "the node's root filesystem `DIR`")
	c.Flags().StringVar(&f.name, "node", "", "this node's `NAME` on its server (default: from installed.json; for a node sim did not install)")
}

// withNode opens the node store (--store, default ROOT/var/lib/sim) and
// the machine at --root.
func (e *env) withNode(c *cobra.Command, f *nodeFlags, server string, fn func(m *node.Machine) error) error {
	root := e.path(f.root)
	if sf := c.Flag("store"); (sf == nil || !sf.Changed) && os.Getenv("SIM_STORE") == "" {
		e.storeDir = filepath.Join(root, install.StoreDir)
	}
	if _, err := os.Stat(filepath.Join(e.storeDir, "config")); errors.Is(err, os.ErrNotExist) {
		if err := store.Init(e.storeDir); err != nil {
			return err
		}
	}
	st, err := store.Open(e.storeDir)
	if errors.Is(err, store.ErrLocked) {
		return fmt.Errorf("the node store %s is in use (is sim agent running? order the update from the server with sim rollout, or stop the agent)", e.storeDir)
	}
	if err != nil {
		return err
	}
	defer st.Close()
	var r *simsync.Remote
	if server == "" {
		if in, err := install.ReadInstalled(st.Dir()); err == nil {
			server = in.Server
		}
	}
	if server != "" {
		// The node's own credentials, kept by its installer, unless
		// --token-file/$SIM_TOKEN and --ca/$SIM_CA_CERT say otherwise.
		f.rf.storeToken = filepath.Join(st.Dir(), install.TokenName)
		f.rf.storeCA = filepath.Join(st.Dir(), install.CAName)
		if r, err = f.rf.remote(e, server); err != nil {
			return usageError{err}
		}
	}
	m, err := node.Open(st, root, f.name, r)
	if err != nil {
		return err
	}
	m.Log, m.Trace = e.stderr, opTrace
	return fn(m)
}

func newUpdateCommand(e *env) *cobra.Command {
	var f nodeFlags
	var tf simsync.TransportFlags
	var from string
	var dryRun, stage bool
	var health []string
	var healthTimeout time.Duration
	c := &cobra.Command{
		Use:   "update --from URL [REF] [--root /] [--dry-run]",
		Short: "Update this running node in place, safely (stage first, journaled apply, health checks, rollback)",
		Long: `Update the running system at --root (default /) to REF, by default the image
its server assigns this node (the node knows who it is from
/var/lib/sim/installed.json; --node NAME for a node sim did not install).

Every object is fetched into the node's store first (--transport chooses
how); only then is the root touched: what differs is rewritten (new name,
then rename), what the image lacks removed, metadata last. Preserved: /proc,
/sys, /dev, /run, /tmp, the node store, other filesystems' mount points,
/var/log, /var/tmp, /var/spool, the machine id, ssh host keys, GRUB's files,
the identity the installer wrote (fstab, hostname, network, the agent's unit)
and the node's line of /etc/hosts, plus the image's /etc/sim/update.exclude
and the node's /etc/sim/update.local.exclude. The node's overrides and
identity are laid on again; when /boot changed, GRUB's configuration is
regenerated and a reboot is required.

The apply is journaled: an interrupted one (kill -9, power loss) is
completed by the next sim update, sim rollback or sim agent. Then the health
checks run (--health CMD, and the image's /etc/sim/health.d/* executables,
chrooted into --root when it is not /, with SIM_NODE, SIM_COMMIT and
SIM_PREVIOUS set); a failure rolls the node back from its own store and
exits 1. --dry-run says what would change and what it would fetch.

The server answers a node only with that node's own token (or an admin
token): by default the one in the node store (/var/lib/sim/token, which sim
install leaves), and its ca.pem for an https server; --token-file or
$SIM_TOKEN, --ca or $SIM_CA_CERT win.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			ref := ""
			if len(args) == 1 {
				ref = args[0]
			}
			return e.withNode(c, &f, from, func(m *node.Machine) error {
				if m.Remote == nil {
					return usageError{errors.New("update: --from URL is required (this node has no installed.json naming its server)")}
				}
				t, err := m.Resolve(c.Context(), ref)
				if err != nil {
					return err
				}
				if dryRun {
					p, err := m.Plan(c.Context(), t)
					if err != nil {
						return err
					}
					if e.json {
						return e.printJSON(p)
					}
					e.printPlan(p)
					return nil
				}
				tr, err := tf.Open(c.Context(), e.transportEnv(m.Store, m.Remote))
				if err != nil {
					return err
				}
				out, err := m.Update(c.Context(), t, node.UpdateOptions{Transport: tr, Health: health, HealthTimeout: healthTimeout, StageOnly: stage})
				if ferr := tr.Finish(c.Context()); err == nil && ferr != nil && !errors.Is(ferr, context.Canceled) {
					err = ferr
				}
				if out != nil && e.json {
					if jerr := e.printJSON(out); jerr != nil {
						return jerr
					}
				}
				if err != nil {
					return err
				}
				return e.outcome(out)
			})
		},
	}
	f.add(c)
	f.rf.add(c)
	tf.Add(c.Flags())
	c.Flags().StringVar(&from, "from", "", "the sim server's `URL` (default: the one in installed.json)")
	c.Flags().BoolVar(&dryRun, "dry-run", false, "say what would change and what would be fetched; change nothing")
	c.Flags().BoolVar(&stage, "stage", false, "only fetch and prepare the update (apply it later with sim update)")
	c.Flags().StringArrayVar(&health, "health", nil, "also run `CMD` (sh -c) as a health check after the apply (repeatable)")
	c.Flags().DurationVar(&healthTimeout, "health-timeout", node.DefaultHealthTimeout, "bound of each health check")
	e.addJSONFlag(c)
	return c
}

// outcome prints how an update or rollback ended; a rolled-back update
// is an error (exit 1).
func (e *env) outcome(o *node.Outcome) error {
	if !e.json {
		if o.Op == "stage" {
			fmt.Fprintf(e.stderr, "staged %s (%s): %s received through %s\n", o.To.Commit.Short(), o.To.Image, units.Bytes(o.Bytes), orHTTP(o.Transport))
			return nil
		}
		fmt.Fprintf(e.stderr, "%s %s → %s: %d written (%s), %d removed, %d metadata fixed, %d unchanged; %s received in %.1fs\n",
			o.State, o.From.Commit.Short(), o.To.Commit.Short(), o.Written, units.Bytes(o.BytesWritten), o.Removed, o.Metadata, o.Unchanged,
			units.Bytes(o.Bytes), o.Seconds)
		if o.RebootRequired {
			fmt.Fprintln(e.stderr, "reboot required: /boot changed")
		}
	}
	if o.State == node.RolledBack && o.Op == "update" {
		msg := o.Error
		if o.Health != "" {
			msg += "\n" + strings.TrimSpace(o.Health)
		}
		return fmt.Errorf("rolled back to %s: %s", o.From.Commit.Short(), msg)
	}
	if o.Error != "" {
		return errors.New(o.Error)
	}
	return nil
}

func orHTTP(t string) string {
	if t == "" {
		return "http"
	}
	return t
}

func (e *env) printPlan(p *node.Plan) {
	for _, ch := range p.Changes {
		mark := map[snapshot.Action]string{snapshot.Added: "+", snapshot.Removed: "-", snapshot.Modified: "M"}[ch.Action]
		what := ""
		if len(ch.What) > 0 {
			what = " (" + strings.Join(ch.What, ", ") + ")"
		}
		fmt.Fprintf(e.stdout, "%s %s%s\n", mark, quote(ch.Path), what)
	}
	if d := p.Drift; d != nil {
		fmt.Fprintf(e.stdout, "local changes the update undoes (%d):\n", d.Count())
		e.printDrift(d, "  ")
	}
	reboot := ""
	if p.RebootRequired {
		reboot = "; /boot changes: reboot required"
	}
	fmt.Fprintf(e.stdout, "%s %s → %s (%s): %d added, %d modified, %d removed; about %s to fetch%s\n", p.Node,
		p.From.Commit.Short(), p.To.Commit.Short(), p.To.Image, p.Added, p.Modified, p.Removed, units.Bytes(p.Bytes), reboot)
}

func (e *env) printDrift(d *node.Drift, indent string) {
	for _, l := range []struct {
		mark  string
		paths []string
	}{{"+", d.Added}, {"M", d.Modified}, {"-", d.Removed}, {"m", d.Metadata}} {
		for _, p := range l.paths {
			fmt.Fprintf(e.stdout, "%s%s %s\n", indent, l.mark, quote(p))
		}
	}
}

func newRollbackCommand(e *env) *cobra.Command {
	var f nodeFlags
	c := &cobra.Command{
		Use:   "rollback [--root /]",
		Short: "Roll this node back to its version before the last update, from its own store (offline)",
		Long: `Bring the root at --root (default /) back to what it was before its last
update, from the node's own store: no network. The preserved paths are kept
as an update keeps them, and the apply is journaled the same way. A second
rollback goes forward again.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, args []string) error {
			return e.withNode(c, &f, "", func(m *node.Machine) error {
				m.Remote = nil // offline by design
				out, err := m.Rollback(c.Context(), "", "")
				if err != nil {
					return err
				}
				if e.json {
					return e.printJSON(out)
				}
				return e.outcome(out)
			})
		},
	}
	f.add(c)
	e.addJSONFlag(c)
	return c
}

func newAgentCommand(e *env) *cobra.Command {
	var f nodeFlags
	var tf simsync.TransportFlags
	var server string
	var driftEvery, wait time.Duration
	c := &cobra.Command{
		Use:   "agent [--server URL] [--root /]",
		Short: "The node's daemon: report to the server, carry out its updates, rollbacks and drift scans",
		Long: `Run the node's agent (installed and enabled as sim-agent.service by sim
install). It completes an interrupted update first, then reports to the
server (default: the one in installed.json) and carries out its orders:
stage, update, roll back, scan for drift. It opens every connection itself
(nodes need no open port) and keeps going when the server restarts.

It speaks for its node with the node's own token: by default the one in the
node store (/var/lib/sim/token, left by sim install; --token-file or
$SIM_TOKEN win), and stops at once, saying so, without one or when the
server refuses it (on the server: sim token add node-NAME --role node --node
NAME, into /var/lib/sim/token).`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, args []string) error {
			return e.withNode(c, &f, server, func(m *node.Machine) error {
				if m.Remote == nil {
					return usageError{errors.New("agent: --server URL is required (this node has no installed.json naming its server)")}
				}
				err := agent.Run(c.Context(), agent.Options{Store: m.Store, Root: m.Root, Node: m.Name, Remote: m.Remote,
					Log: e.stderr, Wait: wait, DriftEvery: driftEvery, Trace: opTrace,
					Transport: func(ctx context.Context, name string) (simsync.Transport, error) {
						return tf.OpenNamed(ctx, name, e.transportEnv(m.Store, m.Remote))
					}})
				if err == nil && c.Context().Err() != nil {
					return errInterrupted
				}
				return err
			})
		},
	}
	f.add(c)
	f.rf.add(c)
	tf.Add(c.Flags())
	c.Flags().StringVar(&server, "server", "", "the sim server's `URL` (default: the one in installed.json)")
	c.Flags().DurationVar(&driftEvery, "drift-every", time.Hour, "scan the root for drift this often (0: only when the server asks)")
	c.Flags().DurationVar(&wait, "poll", agent.DefaultWait, "how long each wait for an order lasts")
	return c
}
