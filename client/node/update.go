package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/client"
	"github.com/systemimager/sim/client/install"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
)

// Machine is a running root and its node store, as an update, a
// rollback, a drift scan and the agent see them (ARCHITECTURE.md "Day 2:
// updates, rollback, drift").
type Machine struct {
	Store *store.Store
	// Root is the root filesystem, absolute ("/" on a live node).
	Root string
	// Name is the node's name on its server (from installed.json, or
	// given for a node sim did not install).
	Name string
	// Remote is the image server; nil offline (a rollback and a drift
	// scan need none).
	Remote *simsync.Remote
	// Log gets one line per step for a person.
	Log io.Writer
	// Trace, if set, is called after every change an apply makes: each
	// of the checkout's (snapshot.CheckoutOptions.Trace) and each step of
	// the journal. The crash tests stop the process at its Nth call.
	Trace func(op, path string)
	// Phase, if set, is told what the machine is doing: "staging",
	// "applying", "checking", "rolling-back", "" when done.
	Phase func(phase string)

	// cache holds the trees the last apply read: the next one (an agent
	// lives on) reads from the store only what changed.
	cache *snapshot.Cache
}

// Target is what an update brings a node to, as its server resolved it.
type Target struct {
	Version
	// Identity, when set, is re-applied after the apply (hostname, hosts
	// line, network) on a node sim installed; nil keeps the node's own.
	Identity *install.Config `json:"identity,omitempty"`
}

// Outcome is how an update or a rollback ended.
type Outcome struct {
	Order string `json:"order,omitempty"`
	Op    string `json:"op"`
	// State is the node's state after it: idle, rolled-back or failed.
	State string  `json:"state"`
	From  Version `json:"from"`
	To    Version `json:"to"`
	// Bytes is what the update received from the server (wire bytes).
	Bytes     int64  `json:"bytes"`
	Transport string `json:"transport,omitempty"`
	snapshot.CheckoutStats
	RebootRequired bool `json:"reboot_required,omitempty"`
	// Health is the output of the health check that failed.
	Health  string  `json:"health,omitempty"`
	Error   string  `json:"error,omitempty"`
	Seconds float64 `json:"seconds"`
}

// Open makes the Machine for root (absolute after this) and the node
// store st; the node's name comes from installed.json unless name is set.
func Open(st *store.Store, root, name string, r *simsync.Remote) (*Machine, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	if fi, err := os.Stat(abs); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("root %s: not a directory", root)
	}
	m := &Machine{Store: st, Root: abs, Name: name, Remote: r, Log: io.Discard,
		cache: &snapshot.Cache{Src: st, Max: 64 << 20}}
	if m.Name == "" {
		if in, err := install.ReadInstalled(st.Dir()); err == nil {
			m.Name = in.Node
		}
	}
	return m, nil
}

// source reads the store through the machine's cache.
func (m *Machine) source() snapshot.Source {
	if m.cache == nil {
		m.cache = &snapshot.Cache{Src: m.Store, Max: 64 << 20}
	}
	return m.cache
}

func (m *Machine) trace(op, path string) {
	if m.Trace != nil {
		m.Trace(op, path)
	}
}

func (m *Machine) phase(p string) {
	if m.Phase != nil {
		m.Phase(p)
	}
}

func (m *Machine) logf(format string, a ...any) {
	fmt.Fprintf(m.Log, "sim: "+format+"\n", a...)
}

// Current is what the root is: the node's record, else what the
// installer wrote, else what was last checked out there (zero when sim
// never wrote this root).
func (m *Machine) Current() (Version, error) {
	s, err := LoadState(m.Store.Dir())
	if err != nil {
		return Version{}, err
	}
	if !s.Current.IsZero() {
		return s.Current, nil
	}
	if in, err := install.ReadInstalled(m.Store.Dir()); err == nil {
		v := Version{Image: in.Image, Commit: in.Commit, Effective: in.Effective, Overrides: in.Overrides}
		if v.Effective.IsZero() {
			v.Effective = in.Commit
		}
		return v, nil
	}
	if rec, err := client.LastCheckout(m.Store, m.Root); err == nil && !rec.Commit.IsZero() {
		v := Version{Commit: rec.Commit, Effective: rec.Commit}
		if c, err := m.Store.Commit(rec.Commit); err == nil {
			v.Image = c.Image
			// An effective commit's first parent is its image commit.
			if c.Author == "sim" && len(c.Parents) > 0 && c.Host != "" {
				v.Commit = c.Parents[0]
			}
		}
		return v, nil
	}
	return Version{}, nil
}

// Resolve asks the server what this node should become: ref (an image,
// tag or commit; its overrides and identity still come from the node's
// assignment when the server knows the node), or with ref "" the image
// the server assigns it.
func (m *Machine) Resolve(ctx context.Context, ref string) (*Target, error) {
	if m.Remote == nil {
		return nil, errors.New("no server to ask (give --from URL)")
	}
	var asg *install.Config
	if m.Name != "" {
		var c install.Config
		err := m.Remote.GetJSON(ctx, "/v1/agent/assignment?node="+m.Name, &c)
		switch {
		case err == nil:
			asg = &c
		case errors.Is(err, simsync.ErrRemoteNotFound) && ref != "":
			// A node the server does not know: ref alone.
		default:
			return nil, fmt.Errorf("node %s: ask %s what it is assigned: %w", m.Name, m.Remote.URL, err)
		}
	} else if ref == "" {
		return nil, errors.New("this node does not know its name (not installed by sim): give --node NAME, or REF")
	}
	t := &Target{}
	if asg != nil {
		t.Image, t.Commit, t.Overrides, t.Identity = asg.Image, asg.Commit, asg.Overrides, asg
	} else if in, err := install.ReadInstalled(m.Store.Dir()); err == nil {
		// A node its server does not know (any more) keeps the
		// identity it was installed with.
		t.Identity = in.Config()
	}
	if ref != "" {
		id, kind, err := m.Remote.Resolve(ctx, ref)
		if err != nil {
			return nil, err
		}
		t.Commit = id
		if kind == "image" {
			t.Image = ref
		} else if b, err := m.Remote.Commit(ctx, id); err == nil {
			if c, err := store.DecodeCommit(id, b); err == nil {
				t.Image = c.Image
			}
		}
	}
	return t, nil
}

// Stage brings t's image (through tr; nil: the server's stream) and
// overrides into the node store, as a delta on what the root is, and makes
// its effective commit. The root is not touched: applying is then local
// and quick (bootc's download-only).
func (m *Machine) Stage(ctx context.Context, t *Target, tr simsync.Transport) (Version, simsync.PullStats, error) {
	m.phase("staging")
	if m.Remote == nil {
		return Version{}, simsync.PullStats{}, errors.New("staging needs the server")
	}
	cur, err := m.Current()
	if err != nil {
		return Version{}, simsync.PullStats{}, err
	}
	var base []chunk.ID
	if !cur.Commit.IsZero() {
		base = append(base, cur.Commit)
	}
	ps, err := simsync.FetchCommit(ctx, m.Store, m.Remote, tr, t.Commit, true, base...)
	if err != nil {
		return Version{}, ps, fmt.Errorf("fetch %s: %w", t.Commit.Short(), err)
	}
	for _, o := range t.Overrides {
		ops, err := simsync.FetchCommit(ctx, m.Store, m.Remote, nil, o.Commit, true)
		ps.WireBytes += ops.WireBytes
		ps.Blobs += ops.Blobs
		ps.NewBlobs += ops.NewBlobs
		if err != nil {
			return Version{}, ps, fmt.Errorf("override %s: fetch %s: %w", o.Name, o.Commit.Short(), err)
		}
	}
	if t.Image != "" && store.CheckName("image", t.Image) == nil {
		// So `sim checkout IMAGE` works offline, and a gc keeps it.
		if err := simsync.SetLocalRef(m.Store, "image", t.Image, t.Commit, "stage", "staged from "+m.Remote.URL); err != nil {
			return Version{}, ps, err
		}
	}
	eff, err := install.Effective(m.Store, t.Commit, t.Overrides, m.hostname(t))
	if err != nil {
		return Version{}, ps, err
	}
	return Version{Image: t.Image, Commit: t.Commit, Effective: eff, Overrides: t.Overrides}, ps, nil
}

// hostname is the name for the hosts line of t's effective tree: the
// assigned one, else the one the node's /etc/hosts has now.
func (m *Machine) hostname(t *Target) string {
	if t.Identity != nil && t.Identity.Hostname != "" {
		return t.Identity.Hostname
	}
	b, _ := os.ReadFile(filepath.Join(m.Root, install.HostsFile))
	return install.HostsLine(b)
}

// UpdateOptions tune Update.
type UpdateOptions struct {
	// Transport carries the image's objects (nil: the server's stream).
	Transport simsync.Transport
	// Health commands run (sh -c, chrooted into a Root other than "/")
	// after the apply, before the image's HealthDir checks.
	Health        []string
	HealthTimeout time.Duration
	// Order is the server's order this update carries out.
	Order string
	// StageOnly fetches and prepares, and does not apply.
	StageOnly bool
}

// Update brings the root to t safely: it completes an interrupted apply
// first, stages every object (Stage), and only then applies, under the
// journal: the checkout of the effective tree (only what differs is
// written, preserved paths kept), the identity, the bootloader when /boot
// changed, the health checks; a failing check rolls the root back to
// what it was, from the node's own store.
func (m *Machine) Update(ctx context.Context, t *Target, o UpdateOptions) (*Outcome, error) {
	start := time.Now()
	if _, err := m.Recover(ctx); err != nil {
		return nil, err
	}
	cur, err := m.Current()
	if err != nil {
		return nil, err
	}
	to, ps, err := m.Stage(ctx, t, o.Transport)
	res := &Outcome{Order: o.Order, Op: "update", From: cur, To: to, Bytes: ps.WireBytes, Transport: ps.Transport}
	if err != nil {
		m.phase("")
		res.State, res.Error, res.Seconds = Failed, err.Error(), time.Since(start).Seconds()
		if ctx.Err() == nil {
			m.failed(res)
		}
		return res, err
	}
	if o.StageOnly {
		m.phase("")
		res.Op, res.State, res.Seconds = "stage", Idle, time.Since(start).Seconds()
		m.logf("staged %s (%s), %d bytes received; apply with sim update", to.Commit.Short(), to.Image, res.Bytes)
		return res, nil
	}
	j := &Journal{Op: "update", From: cur, To: to, Phase: "apply", Health: o.Health, HealthTimeout: o.HealthTimeout,
		Order: o.Order, Started: start.UTC(), Bytes: ps.WireBytes}
	if _, err := install.ReadInstalled(m.Store.Dir()); err == nil {
		j.Identity = t.Identity
	}
	if err := saveJournal(m.Store.Dir(), j); err != nil {
		return res, err
	}
	m.trace("journal", j.Phase)
	out, err := m.run(ctx, j)
	if out != nil {
		out.Transport = ps.Transport
		out.Seconds = time.Since(start).Seconds()
	}
	return out, err
}

// failed records an operation that failed before touching the root.
func (m *Machine) failed(res *Outcome) {
	s, err := LoadState(m.Store.Dir())
	if err != nil {
		return
	}
	s.Status, s.LastError, s.Time, s.LastOrder, s.LastResult = Failed, res.Error, time.Now().UTC(), res.Order, res
	if s.Current.IsZero() {
		s.Current = res.From
	}
	saveState(m.Store.Dir(), s)
}

// Rollback brings the root back to the version before the current one,
// from the node's own store (no network), under the journal like an
// update. A second rollback goes forward again.
func (m *Machine) Rollback(ctx context.Context, order, reason string) (*Outcome, error) {
	start := time.Now()
	if r, err := m.Recover(ctx); err != nil {
		return nil, err
	} else if r != nil && r.Op == "rollback" && r.Order == order {
		// The rollback asked for again is the one just completed.
		return r, nil
	}
	s, err := LoadState(m.Store.Dir())
	if err != nil {
		return nil, err
	}
	cur, err := m.Current()
	if err != nil {
		return nil, err
	}
	if s.Previous == nil || s.Previous.IsZero() {
		return nil, errors.New("nothing to roll back to: this node has not been updated by sim since it was installed")
	}
	prev := *s.Previous
	// The version before, with the identity the node has now (its hosts
	// line): a rollback never takes a node's name away.
	host := ""
	in, inErr := install.ReadInstalled(m.Store.Dir())
	if inErr == nil {
		host = in.Hostname
	}
	if host == "" {
		b, _ := os.ReadFile(filepath.Join(m.Root, install.HostsFile))
		host = install.HostsLine(b)
	}
	if ok, _ := m.Store.HasCommit(prev.Commit); ok && host != "" {
		eff, err := install.Effective(m.Store, prev.Commit, prev.Overrides, host)
		if err != nil {
			return nil, fmt.Errorf("roll back to %s: %w", prev.Commit.Short(), err)
		}
		prev.Effective = eff
	}
	for _, id := range []chunk.ID{prev.Effective, prev.Commit} {
		if ok, err := m.Store.HasCommit(id); err != nil || !ok {
			return nil, fmt.Errorf("cannot roll back to %s: commit %s is not in the node store %s", prev.Commit.Short(), id.Short(), m.Store.Dir())
		}
	}
	if reason == "" {
		reason = "rolled back by hand"
	}
	// The identity files themselves are preserved: they stay as they are.
	j := &Journal{Op: "rollback", From: cur, To: prev, Phase: "apply", Order: order, Reason: reason, Started: start.UTC()}
	if err := saveJournal(m.Store.Dir(), j); err != nil {
		return nil, err
	}
	m.trace("journal", j.Phase)
	res, err := m.run(ctx, j)
	if res != nil {
		res.Seconds = time.Since(start).Seconds()
	}
	return res, err
}

// Recover completes an apply that was interrupted (its journal is
// there): nil, nil when there is none.
func (m *Machine) Recover(ctx context.Context) (*Outcome, error) {
	j, err := LoadJournal(m.Store.Dir())
	if err != nil || j == nil {
		return nil, err
	}
	m.logf("completing the interrupted %s to %s (%s), at its %s phase", j.Op, j.To.Commit.Short(), j.To.Image, j.Phase)
	res, err := m.run(ctx, j)
	if err != nil {
		return res, fmt.Errorf("complete the interrupted %s: %w", j.Op, err)
	}
	return res, nil
}

// run carries the journal j through its phases, saving it after each, and
// records how it ended in node.json before removing it.
func (m *Machine) run(ctx context.Context, j *Journal) (*Outcome, error) {
	dir := m.Store.Dir()
	res := &Outcome{Order: j.Order, Op: j.Op, From: j.From, To: j.To, Bytes: j.Bytes}
	next := func(phase string) error {
		j.Phase = phase
		if err := saveJournal(dir, j); err != nil {
			return err
		}
		m.trace("journal", phase)
		return nil
	}
	for {
		switch j.Phase {
		case "apply":
			if j.Op == "rollback" {
				m.phase("rolling-back")
			} else {
				m.phase("applying")
			}
			stats, err := m.checkout(ctx, j.To)
			if err != nil {
				return res, err
			}
			res.CheckoutStats = *stats
			if err := next("identity"); err != nil {
				return res, err
			}
		case "identity":
			if j.Identity != nil {
				wrote, err := install.Identity(m.Root, j.Identity)
				for _, p := range wrote {
					m.trace("identity", p)
				}
				if err != nil {
					return res, fmt.Errorf("identity: %w", err)
				}
			}
			if err := next("boot"); err != nil {
				return res, err
			}
		case "boot":
			changed, err := m.bootChanged(j.From, j.To)
			if err != nil {
				return res, err
			}
			if changed {
				if err := m.bootloader(ctx); err != nil {
					return res, err
				}
				j.RebootRequired = true
			}
			phase := "done"
			if j.Op == "update" {
				phase = "check"
			}
			if err := next(phase); err != nil {
				return res, err
			}
		case "check":
			m.phase("checking")
			out, err := m.health(ctx, j)
			if err != nil {
				if ctx.Err() != nil {
					return res, ctx.Err()
				}
				if j.From.IsZero() {
					// Nothing to go back to: keep it, say so.
					j.Reason = fmt.Sprintf("%v (nothing to roll back to)", err)
					j.HealthOutput = out
					if err := next("done"); err != nil {
						return res, err
					}
					continue
				}
				m.logf("health check failed: %v; rolling back to %s", err, j.From.Commit.Short())
				// The rollback is a journal of its own, from the
				// version just applied back to the one before.
				*j = Journal{Op: "rollback", Auto: true, From: j.To, To: j.From, Phase: "apply", Order: j.Order,
					Reason: err.Error(), HealthOutput: out, Started: j.Started, Bytes: j.Bytes}
				if err := next("apply"); err != nil {
					return res, err
				}
				continue
			}
			if err := next("done"); err != nil {
				return res, err
			}
		case "done":
			return m.finish(j, res)
		default:
			return res, fmt.Errorf("journal %s: unknown phase %q", filepath.Join(dir, journalFile), j.Phase)
		}
	}
}

// finish records the end of journal j in node.json and removes it.
func (m *Machine) finish(j *Journal, res *Outcome) (*Outcome, error) {
	dir := m.Store.Dir()
	s, err := LoadState(dir)
	if err != nil {
		return res, err
	}
	if j.Auto {
		// An update whose checks failed: back where it was; its
		// previous version stays what it was before the update.
		res.Op, res.From, res.To = "update", j.To, j.From
		res.State, res.Error, res.Health = RolledBack, j.Reason, j.HealthOutput
	} else {
		// The version before is the rollback target; an update to the
		// version the node was on already leaves it as it was.
		prev := j.From
		if !prev.IsZero() && prev.Effective != j.To.Effective {
			s.Previous = &prev
		}
		res.State = Idle
		if j.Op == "rollback" {
			res.State = RolledBack
		}
		if j.Reason != "" && j.Op == "update" {
			res.Error, res.Health = j.Reason, j.HealthOutput
		}
	}
	s.Node = m.Name
	s.Current = j.To
	s.Status, s.LastError, s.Time = res.State, res.Error, time.Now().UTC()
	if res.State == RolledBack && res.Error == "" {
		s.LastError = j.Reason
	}
	if j.RebootRequired {
		s.RebootRequired, s.BootID = true, bootID()
	}
	res.RebootRequired = s.RebootRequired
	res.Bytes = j.Bytes
	s.LastOrder, s.LastResult = j.Order, res
	// The root was just made exactly the effective tree: no drift.
	s.Drift = &DriftSummary{Time: time.Now().UTC()}
	if err := saveState(dir, s); err != nil {
		return res, err
	}
	m.trace("state", s.Status)
	if err := removeJournal(dir); err != nil {
		return res, err
	}
	m.trace("journal", "removed")
	m.phase("")
	switch {
	case res.State == RolledBack && j.Auto:
		m.logf("%s: health check failed (%s); rolled back to %s (%s)", m.Name, res.Error, j.To.Commit.Short(), j.To.Image)
	case res.State == RolledBack:
		m.logf("%s: rolled back to %s (%s)", m.Name, j.To.Commit.Short(), j.To.Image)
	default:
		m.logf("%s: updated to %s (%s): %d written, %d removed, %d metadata fixed", m.Name, j.To.Commit.Short(), j.To.Image, res.Written, res.Removed, res.Metadata)
	}
	if s.RebootRequired {
		m.logf("%s: /boot changed: reboot required", m.Name)
	}
	return res, nil
}

// checkout makes the root exactly v's effective tree outside the
// preserved paths (the target tree's own update.exclude included).
func (m *Machine) checkout(ctx context.Context, v Version) (*snapshot.CheckoutStats, error) {
	c, err := m.Store.Commit(v.Effective)
	if err != nil {
		return nil, fmt.Errorf("apply %s: %w", v.Commit.Short(), err)
	}
	pats, err := preserved(m.Store, c.Tree, m.Root)
	if err != nil {
		return nil, err
	}
	stats, err := client.Checkout(ctx, m.Store, v.Effective, m.Root, client.CheckoutOptions{Exclude: pats, Force: true, Trace: m.Trace,
		Source: m.source(), Verify: func(id chunk.ID) error { return install.CheckSigned(m.Store, id, false) }})
	if err != nil {
		return nil, err
	}
	return stats, nil
}

// bootChanged says whether /boot differs between two versions (with the
// one before unknown: whether the new one has a /boot at all).
func (m *Machine) bootChanged(from, to Version) (bool, error) {
	sub := func(v Version) (chunk.ID, error) {
		c, err := m.Store.Commit(v.Effective)
		if err != nil {
			return chunk.ID{}, err
		}
		n, err := snapshot.Lookup(m.Store, c.Tree, "/boot")
		if err != nil || n.Kind != snapshot.KindDir {
			return chunk.ID{}, nil
		}
		return n.Subtree, nil
	}
	b, err := sub(to)
	if err != nil {
		return false, err
	}
	if from.IsZero() {
		return false, nil
	}
	a, err := sub(from)
	if err != nil {
		return false, nil // the version before is gone from the store: nothing to compare
	}
	return a != b, nil
}

// bootloader regenerates GRUB's configuration for a new kernel or
// initrd, with the root's own grub-mkconfig (grub2-mkconfig on RHEL,
// after pointing the image's BLS entries at this node's root); a root
// without GRUB (or whose /boot/grub the installer did not make) has
// nothing to regenerate.
func (m *Machine) bootloader(ctx context.Context) error {
	has := func(p string) bool { _, err := os.Stat(filepath.Join(m.Root, p)); return err == nil }
	_, mkconfig, cfg := install.GrubTools(m.Root)
	if mkconfig == "" || !has(strings.TrimPrefix(filepath.Dir(cfg), "/")) {
		return nil
	}
	ents, err := install.BootEntries(m.Root, install.FstabRootUUID(m.Root))
	for _, p := range ents {
		m.trace("boot", p)
	}
	if err != nil {
		return fmt.Errorf("bootloader: %w", err)
	}
	if m.Root != "/" {
		binds, err := install.BindSystem(m.Root)
		defer unmount(binds)
		if err != nil {
			return fmt.Errorf("bootloader: %w", err)
		}
	}
	if err := install.Chroot(ctx, m.Root, nil, m.Log, mkconfig, "-o", cfg); err != nil {
		return fmt.Errorf("bootloader: %w", err)
	}
	m.trace("boot", cfg)
	return nil
}

// Status is the node's record, with partial when a journal waits.
func (m *Machine) Status() (*State, error) {
	s, err := LoadState(m.Store.Dir())
	if err != nil {
		return nil, err
	}
	if s.Current.IsZero() {
		if s.Current, err = m.Current(); err != nil {
			return nil, err
		}
	}
	if s.Node == "" {
		s.Node = m.Name
	}
	if j, _ := LoadJournal(m.Store.Dir()); j != nil {
		s.Status = Partial
	}
	if s.RebootRequired && s.BootID != "" && s.BootID != bootID() {
		s.RebootRequired = false // it has booted since
	}
	return s, nil
}

func shortList(ss []string, n int) string {
	if len(ss) > n {
		return strings.Join(ss[:n], ", ") + fmt.Sprintf(" and %d more", len(ss)-n)
	}
	return strings.Join(ss, ", ")
}
