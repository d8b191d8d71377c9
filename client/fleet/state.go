package fleet

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/systemimager/sim/store"
)

// Node states the server shows (a node's own are node.Idle and the rest).
const (
	Installing = "installing"
	Updating   = "updating"
	Idle       = "idle"
	Failed     = "failed"
	Offline    = "offline"
	RolledBack = "rolled-back"
	Partial    = "partial"
	// Unknown: registered, never heard of.
	Unknown = "unknown"
)

// OfflineAfter is how long a node may stay silent before it shows as
// offline (its agent polls or reports at least every 30 s, an installer
// every 15 s).
var OfflineAfter = 90 * time.Second

// NodeState is the server's view of one node: what issue #13's monitor,
// metrics and `sim nodes` show.
type NodeState struct {
	Name   string   `json:"name"`
	Groups []string `json:"groups,omitempty"`
	// State: installing, updating, idle, failed, offline, rolled-back,
	// partial (or unknown: never heard of).
	State string `json:"state"`
	// Phase: an install's step, an update's staging, applying, checking,
	// rolling-back.
	Phase string `json:"phase,omitempty"`
	// Bytes received so far of about Total, at Rate bytes/s.
	Bytes     int64   `json:"bytes"`
	Total     int64   `json:"total,omitempty"`
	Rate      float64 `json:"rate,omitempty"`
	Transport string  `json:"transport,omitempty"`
	// Image and Assigned: the image and commit the server assigns the
	// node now (filled in when listing); Current and Previous: the image
	// commits the node is and was; Effective: its checked-out commit.
	Image     string `json:"image,omitempty"`
	Assigned  string `json:"assigned,omitempty"`
	Current   string `json:"current,omitempty"`
	Effective string `json:"effective,omitempty"`
	Previous  string `json:"previous,omitempty"`
	// Drift is the number of paths the last drift scan found changed (-1:
	// never scanned), at DriftTime.
	Drift          int        `json:"drift"`
	DriftTime      *time.Time `json:"drift_time,omitempty"`
	RebootRequired bool       `json:"reboot_required"`
	LastError      string     `json:"last_error,omitempty"`
	// LastSeen is when the node last said anything (zero: never).
	LastSeen time.Time `json:"last_seen"`
	Address  string    `json:"address,omitempty"`
	// Rollout and Order: what the server has the node doing.
	Rollout string `json:"rollout,omitempty"`
	Order   string `json:"order,omitempty"`
	// Log is the end of the node's log.
	Log []string `json:"log,omitempty"`
}

// shown is s as it should be shown at now: offline when silent too long.
func (s NodeState) shown(now time.Time) NodeState {
	if !s.LastSeen.IsZero() && now.Sub(s.LastSeen) > OfflineAfter && s.State != Offline {
		s.State = Offline
	}
	if s.LastSeen.IsZero() && s.State == "" {
		s.State = Unknown
	}
	return s
}

// fleetFile is where the view is kept: <store>/fleet.json,
// {"nodes": {"NAME": NodeState}}.
func fleetFile(storeDir string) string { return filepath.Join(storeDir, "fleet.json") }

type fleetDoc struct {
	Nodes map[string]*NodeState `json:"nodes"`
}

// Load reads the view a server kept in st (empty when there is none), as
// it was when the server last wrote it, offline nodes marked. On an S3
// store that is the bucket's view, every frontend's reports merged (the
// newest of each node wins), over what this cache directory kept.
func Load(st *store.Store) (map[string]NodeState, error) {
	m, err := load(st.Dir())
	if docs := st.NodeDocs(DocKind); docs != nil {
		got, lerr := docs.Load(0)
		err = errors.Join(err, lerr, merge(m, got, nil))
	}
	out := map[string]NodeState{}
	now := time.Now()
	for n, s := range m {
		out[n] = s.shown(now)
	}
	return out, err
}

// DocKind is the kind of the fleet's per-node documents in an S3 store's
// bucket: fleet/nodes/NODE/… (store.NodeDocs), each a NodeState in JSON.
const DocKind = "nodes"

// merge puts into nodes the documents newer (by LastSeen) than what it
// has, calling took with each one taken; a document that does not decode
// is skipped (a newer one replaces it).
func merge(nodes map[string]*NodeState, docs []store.NodeDoc, took func(*NodeState)) error {
	var errs []error
	for _, d := range docs {
		var s NodeState
		if err := json.Unmarshal(d.Data, &s); err != nil {
			errs = append(errs, fmt.Errorf("fleet document of %s: %w", d.Node, err))
			continue
		}
		s.Name = d.Node // the key names the node, whatever the body says
		if cur := nodes[d.Node]; cur != nil && !s.LastSeen.After(cur.LastSeen) {
			continue
		}
		nodes[d.Node] = &s
		if took != nil {
			took(&s)
		}
	}
	return errors.Join(errs...)
}

func load(storeDir string) (map[string]*NodeState, error) {
	b, err := os.ReadFile(fleetFile(storeDir))
	if errors.Is(err, os.ErrNotExist) {
		return map[string]*NodeState{}, nil
	}
	if err != nil {
		return map[string]*NodeState{}, err
	}
	var d fleetDoc
	if err := json.Unmarshal(b, &d); err != nil {
		return map[string]*NodeState{}, fmt.Errorf("%s: %w", fleetFile(storeDir), err)
	}
	if d.Nodes == nil {
		d.Nodes = map[string]*NodeState{}
	}
	return d.Nodes, nil
}

func save(storeDir string, nodes map[string]*NodeState) error {
	b, err := json.Marshal(fleetDoc{Nodes: nodes})
	if err != nil {
		return err
	}
	return store.WriteFileAtomic(fleetFile(storeDir), 0o644, func(w io.Writer) error { _, err := w.Write(b); return err })
}
