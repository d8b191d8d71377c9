package node

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/client"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
)

// Drift is how a root differs from what sim last made it, by content:
// paths (absolute, as in the image) added, modified (content, type,
// target, device or hard-link structure), removed, and whose metadata
// alone changed (mode, owner, mtime, xattrs). Preserved paths are not
// looked at; a directory whose mtime alone changed is not listed (adding
// or removing an entry changes it, and that entry is listed).
type Drift struct {
	Commit   chunk.ID `json:"commit"`
	Added    []string `json:"added"`
	Modified []string `json:"modified"`
	Removed  []string `json:"removed"`
	Metadata []string `json:"metadata"`
}

// Count is the number of paths listed.
func (d *Drift) Count() int { return len(d.Added) + len(d.Modified) + len(d.Removed) + len(d.Metadata) }

// DriftSummary is the last scan in short, for reports.
type DriftSummary struct {
	Time     time.Time `json:"time"`
	Count    int       `json:"count"`
	Added    int       `json:"added,omitempty"`
	Modified int       `json:"modified,omitempty"`
	Removed  int       `json:"removed,omitempty"`
	Metadata int       `json:"metadata,omitempty"`
}

// Summary is d in short.
func (d *Drift) Summary() *DriftSummary {
	return &DriftSummary{Time: time.Now().UTC(), Count: d.Count(), Added: len(d.Added), Modified: len(d.Modified),
		Removed: len(d.Removed), Metadata: len(d.Metadata)}
}

// Drift compares the root with its effective commit: every entry is
// stat'ed, and a file is read and hashed only when its stat is not the one
// the last checkout recorded (the stat-cache fast path). The summary is
// kept in node.json.
func (m *Machine) Drift(ctx context.Context) (*Drift, error) {
	cur, err := m.Current()
	if err != nil {
		return nil, err
	}
	if cur.IsZero() {
		return nil, errors.New("sim has not written this root (no install, update or checkout recorded): nothing to compare it with")
	}
	c, err := m.Store.Commit(cur.Effective)
	if err != nil {
		return nil, fmt.Errorf("drift: %w", err)
	}
	pats, err := preserved(m.Store, c.Tree, m.Root)
	if err != nil {
		return nil, err
	}
	ex, err := snapshot.NewMatcher(pats)
	if err != nil {
		return nil, err
	}
	ms := &snapshot.MemSaver{Next: m.source()}
	res, err := snapshot.Commit(ctx, ms, m.Store.Config().Chunker, m.Root, snapshot.CommitOptions{
		Exclude: ex, Cache: client.RecordCache(m.Store, m.Root), Warn: func(error) {}})
	if err != nil {
		return nil, fmt.Errorf("drift: %w", err)
	}
	changes, err := (&snapshot.Differ{Src: ms, Exclude: ex}).Diff(c.Tree, res.Root)
	if err != nil {
		return nil, fmt.Errorf("drift: %w", err)
	}
	// A directory the image lacks that holds only preserved paths (the
	// installer's /etc/systemd/network) is there for them, not drift.
	changes = slices.DeleteFunc(changes, func(ch snapshot.Change) bool {
		if ch.Action != snapshot.Added || ch.Kind != snapshot.KindDir {
			return false
		}
		for _, o := range changes {
			if strings.HasPrefix(o.Path, ch.Path+"/") {
				return false
			}
		}
		ents, err := os.ReadDir(filepath.Join(m.Root, ch.Path))
		return err == nil && len(ents) > 0
	})
	d := classify(changes)
	d.Commit = cur.Commit
	if s, err := LoadState(m.Store.Dir()); err == nil {
		s.Drift = d.Summary()
		if s.Current.IsZero() {
			s.Current = cur
		}
		saveState(m.Store.Dir(), s)
	}
	return d, nil
}

func classify(changes []snapshot.Change) *Drift {
	d := &Drift{Added: []string{}, Modified: []string{}, Removed: []string{}, Metadata: []string{}}
	for _, ch := range changes {
		switch ch.Action {
		case snapshot.Added:
			d.Added = append(d.Added, ch.Path)
		case snapshot.Removed:
			d.Removed = append(d.Removed, ch.Path)
		default:
			if ch.Kind == snapshot.KindDir && len(ch.What) == 1 && ch.What[0] == "mtime" {
				continue
			}
			content := false
			for _, w := range ch.What {
				if w == "content" || w == "type" || w == "target" || w == "device" || w == "link" {
					content = true
				}
			}
			if content {
				d.Modified = append(d.Modified, ch.Path)
			} else {
				d.Metadata = append(d.Metadata, ch.Path)
			}
		}
	}
	return d
}

// DiffReply is GET /v1/agent/diff: what an update from one image commit
// to another changes, outside what every node preserves.
type DiffReply struct {
	Changes        []snapshot.Change `json:"changes"`
	Added          int               `json:"added"`
	Modified       int               `json:"modified"`
	Removed        int               `json:"removed"`
	RebootRequired bool              `json:"reboot_required"`
}

// ImageDiff is what updating from commit from (zero: nothing) to commit to
// changes, both in st: the paths outside ImagePreserved, and whether /boot
// changes. The server answers nodes' dry runs and plans rollouts with it.
func ImageDiff(st *store.Store, from, to chunk.ID) (*DiffReply, error) {
	tc, err := st.Commit(to)
	if err != nil {
		return nil, err
	}
	var ft chunk.ID
	if !from.IsZero() {
		fc, err := st.Commit(from)
		if err != nil {
			return nil, err
		}
		ft = fc.Tree
	}
	pats, err := ImagePreserved(st, tc.Tree)
	if err != nil {
		return nil, err
	}
	ex, err := snapshot.NewMatcher(pats)
	if err != nil {
		return nil, err
	}
	changes, err := (&snapshot.Differ{Src: st, Exclude: ex}).Diff(ft, tc.Tree)
	if err != nil {
		return nil, err
	}
	r := &DiffReply{Changes: changes}
	if r.Changes == nil {
		r.Changes = []snapshot.Change{}
	}
	for _, c := range changes {
		switch c.Action {
		case snapshot.Added:
			r.Added++
		case snapshot.Removed:
			r.Removed++
		default:
			r.Modified++
		}
		if c.Path == "/boot" || len(c.Path) > 6 && c.Path[:6] == "/boot/" {
			r.RebootRequired = true
		}
	}
	return r, nil
}

// Plan is what an update would do (sim update --dry-run).
type Plan struct {
	Node string  `json:"node,omitempty"`
	From Version `json:"from"`
	To   Version `json:"to"`
	// Bytes is the server's estimate of what the node would receive.
	Bytes   int64             `json:"bytes"`
	Changes []snapshot.Change `json:"changes"`
	DiffReply
	// Drift is what the node has changed locally, which the update
	// undoes (outside the preserved paths).
	Drift *Drift `json:"drift,omitempty"`
}

// Plan asks the server what updating to t would fetch and change, and
// scans the root for the local changes it would undo. Nothing is fetched
// or written.
func (m *Machine) Plan(ctx context.Context, t *Target) (*Plan, error) {
	cur, err := m.Current()
	if err != nil {
		return nil, err
	}
	p := &Plan{Node: m.Name, From: cur, To: t.Version}
	haves, err := simsync.LocalHaves(m.Store, cur.Commit)
	if err != nil {
		return nil, err
	}
	if ok, _ := m.Store.HasCommit(t.Commit); !ok {
		pi, err := m.Remote.Plan(ctx, t.Commit, haves)
		if err != nil {
			return nil, err
		}
		p.Bytes = pi.WireBytes
	}
	q := url.Values{"to": {t.Commit.String()}}
	if !cur.Commit.IsZero() {
		q.Set("from", cur.Commit.String())
	}
	if err := m.Remote.GetJSON(ctx, "/v1/agent/diff?"+q.Encode(), &p.DiffReply); err != nil {
		return nil, err
	}
	// What this node keeps besides what every node keeps.
	local, err := preserved(m.Store, chunk.ID{}, m.Root)
	if err != nil {
		return nil, err
	}
	ex, err := snapshot.NewMatcher(local)
	if err != nil {
		return nil, err
	}
	p.Changes = slices.DeleteFunc(p.DiffReply.Changes, func(c snapshot.Change) bool {
		return ex.Match(c.Path[1:], c.Kind == snapshot.KindDir)
	})
	p.DiffReply.Changes = nil
	if !cur.IsZero() {
		if d, err := m.Drift(ctx); err == nil && d.Count() > 0 {
			p.Drift = d
		}
	}
	return p, nil
}
