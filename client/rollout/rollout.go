// Package rollout is the rollout engine inside sim serve (ARCHITECTURE.md
// "Rollouts"): it brings a set of nodes to a commit in waves (a canary,
// then waves of N nodes or P% of them), a wave only after the one before
// is done and healthy, halting when more nodes fail than allowed; it can
// stage every node first, be paused, resumed, aborted and reverted, and
// plans an update before it is started (the bytes and files per node).
// Its state is a file per rollout in the store directory, written
// atomically after each change, so a restarted server carries on where it
// was. It gives orders through client/fleet and never talks to nodes
// itself.
package rollout

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/systemimager/sim/store"
)

// Rollout states.
const (
	Running = "running"
	Paused  = "paused"
	Halted  = "halted"
	Done    = "done"
	Aborted = "aborted"
)

// Node states in a rollout.
const (
	Pending    = "pending"
	Staging    = "staging"
	Applying   = "applying"
	Checking   = "checking"
	NodeDone   = "done"
	NodeFailed = "failed"
	RolledBack = "rolled-back"
)

// Spec is what `sim rollout start` asks for.
type Spec struct {
	Ref string `json:"ref"`
	// Select says how the nodes were chosen (--group G, --nodes ..., --all).
	Select string   `json:"select"`
	Nodes  []string `json:"nodes"`
	// Canary nodes go first, alone; then waves of Wave nodes ("N") or
	// of a share of all of them ("P%").
	Canary      int      `json:"canary"`
	Wave        string   `json:"wave"`
	MaxFailures int      `json:"max_failures"`
	Health      []string `json:"health,omitempty"`
	// HealthTimeout bounds each check on a node, seconds (0: the node's
	// default).
	HealthTimeout float64 `json:"health_timeout_s,omitempty"`
	// Transport: http, bittorrent, multicast, or auto (per wave: a swarm
	// for big deltas to several nodes, else http).
	Transport  string `json:"transport"`
	StageFirst bool   `json:"stage_first,omitempty"`
	// NodeTimeout is how long a node has to answer an order, seconds;
	// then it counts as failed (it may be down).
	NodeTimeout float64 `json:"node_timeout_s"`
}

// NodeStatus is one node in a rollout.
type NodeStatus struct {
	State string `json:"state"`
	// Commit is the node's image commit as last known; Previous what it
	// was when the rollout started (what --revert goes back to).
	Commit   string `json:"commit"`
	Previous string `json:"previous,omitempty"`
	Bytes    int64  `json:"bytes"`
	Error    string `json:"error,omitempty"`
	Wave     int    `json:"wave"`
	// Order is the order outstanding (or last sent) and when.
	Order   string    `json:"order,omitempty"`
	Sent    time.Time `json:"sent,omitzero"`
	Planned int64     `json:"planned,omitempty"`
	Staged  bool      `json:"staged,omitempty"`
	// StagedBytes is what its staging received.
	StagedBytes int64 `json:"staged_bytes,omitempty"`
	// Reverting / Reverted: abort --revert's rollback of this node.
	Reverting bool `json:"reverting,omitempty"`
	Reverted  bool `json:"reverted,omitempty"`
	Attempt   int  `json:"attempt,omitempty"`
}

func (n *NodeStatus) terminal() bool {
	return n.State == NodeDone || n.State == NodeFailed || n.State == RolledBack
}

// Rollout is a rollout's whole state: <store>/rollouts/<id>.json.
type Rollout struct {
	ID      string    `json:"id"`
	State   string    `json:"state"`
	Commit  string    `json:"commit"`
	Image   string    `json:"image,omitempty"`
	Reason  string    `json:"reason,omitempty"`
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
	Spec    Spec      `json:"spec"`
	// Waves are the node names of each wave, canary first; Wave is the
	// one running (len(Waves) when all are done).
	Waves [][]string `json:"waves"`
	Wave  int        `json:"wave"`
	// Staged: with StageFirst, every node has staged (or failed to).
	Staged bool `json:"staged,omitempty"`
	// Failures counts failed and rolled-back nodes; Accepted those a
	// resume accepted (the budget is Accepted + MaxFailures).
	Failures int                    `json:"failures"`
	Accepted int                    `json:"accepted,omitempty"`
	Revert   bool                   `json:"revert,omitempty"`
	Nodes    map[string]*NodeStatus `json:"nodes"`
}

// Status is `sim rollout status ID --json`.
type Status struct {
	ID     string                `json:"id"`
	State  string                `json:"state"`
	Commit string                `json:"commit"`
	Nodes  map[string]*NodeBrief `json:"nodes"`
}

// NodeBrief is a node in Status.
type NodeBrief struct {
	State  string `json:"state"`
	Commit string `json:"commit"`
	Bytes  int64  `json:"bytes"`
	Error  string `json:"error"`
}

// Status is r in the form scripts rely on.
func (r *Rollout) Status() *Status {
	s := &Status{ID: r.ID, State: r.State, Commit: r.Commit, Nodes: map[string]*NodeBrief{}}
	for n, ns := range r.Nodes {
		s.Nodes[n] = &NodeBrief{State: ns.State, Commit: ns.Commit, Bytes: ns.Bytes, Error: ns.Error}
	}
	return s
}

// Counts is how many nodes are in each state.
func (r *Rollout) Counts() map[string]int {
	c := map[string]int{}
	for _, n := range r.Nodes {
		c[n.State]++
	}
	return c
}

func (r *Rollout) clone() *Rollout {
	b, _ := json.Marshal(r)
	var c Rollout
	json.Unmarshal(b, &c)
	return &c
}

// Dir is where a store keeps its rollouts.
func Dir(storeDir string) string { return filepath.Join(storeDir, "rollouts") }

func statePath(storeDir, id string) string { return filepath.Join(Dir(storeDir), id+".json") }
func logPath(storeDir, id string) string   { return filepath.Join(Dir(storeDir), id+".log") }

func save(storeDir string, r *Rollout) error {
	if err := os.MkdirAll(Dir(storeDir), 0o755); err != nil {
		return fmt.Errorf("rollout %s: save: %w", r.ID, err)
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := store.WriteFileAtomic(statePath(storeDir, r.ID), 0o644, func(w io.Writer) error { _, err := w.Write(append(b, '\n')); return err }); err != nil {
		return fmt.Errorf("rollout %s: save: %w", r.ID, err)
	}
	return nil
}

// CheckID accepts a rollout id: r and a number.
func CheckID(id string) error {
	if n, err := strconv.Atoi(strings.TrimPrefix(id, "r")); !strings.HasPrefix(id, "r") || err != nil || n < 1 {
		return fmt.Errorf("invalid rollout id %q (they look like r1, r2, ...)", id)
	}
	return nil
}

// ErrNoRollout is returned for an id no rollout has.
var ErrNoRollout = errors.New("no such rollout")

// Load reads rollout id from the store in storeDir.
func Load(storeDir, id string) (*Rollout, error) {
	if err := CheckID(id); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(statePath(storeDir, id))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w %s", ErrNoRollout, id)
	}
	if err != nil {
		return nil, err
	}
	var r Rollout
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("rollout %s: %w", id, err)
	}
	return &r, nil
}

// List reads every rollout of the store in storeDir, oldest first.
func List(storeDir string) ([]*Rollout, error) {
	ents, err := os.ReadDir(Dir(storeDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []*Rollout
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || CheckID(id) != nil {
			continue
		}
		r, err := Load(storeDir, id)
		if err != nil {
			return out, err
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return idNum(out[i].ID) < idNum(out[j].ID) })
	return out, nil
}

func idNum(id string) int { n, _ := strconv.Atoi(strings.TrimPrefix(id, "r")); return n }

// Entry is one line of a rollout's log: <store>/rollouts/<id>.log.
type Entry struct {
	Time   time.Time `json:"time"`
	Node   string    `json:"node,omitempty"`
	Event  string    `json:"event"`
	Reason string    `json:"reason,omitempty"`
}

func appendLog(storeDir, id string, e Entry) error {
	b, _ := json.Marshal(e)
	if err := os.MkdirAll(Dir(storeDir), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(logPath(storeDir, id), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Log reads rollout id's log.
func Log(storeDir, id string) ([]Entry, error) {
	if err := CheckID(id); err != nil {
		return nil, err
	}
	f, err := os.Open(logPath(storeDir, id))
	if errors.Is(err, os.ErrNotExist) {
		if _, lerr := Load(storeDir, id); lerr != nil {
			return nil, lerr
		}
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Entry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var e Entry
		if json.Unmarshal(sc.Bytes(), &e) == nil {
			out = append(out, e)
		}
	}
	return out, sc.Err()
}

// Waves cuts nodes (in order) into a canary of canary nodes and waves of
// wave nodes ("N") or of P% of all of them ("P%", rounded up); "" is one
// wave of all the rest.
func Waves(nodes []string, canary int, wave string) ([][]string, error) {
	if canary < 0 {
		return nil, fmt.Errorf("--canary %d: want 0 or more nodes", canary)
	}
	size := 0
	switch {
	case wave == "":
	case strings.HasSuffix(wave, "%"):
		p, err := strconv.ParseFloat(strings.TrimSuffix(wave, "%"), 64)
		if err != nil || p <= 0 || p > 100 {
			return nil, fmt.Errorf("--wave %s: want a share of the nodes between 0 and 100%%", wave)
		}
		size = int((p*float64(len(nodes)) + 99.999) / 100)
	default:
		n, err := strconv.Atoi(wave)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("--wave %s: want a number of nodes (or P%%)", wave)
		}
		size = n
	}
	var out [][]string
	rest := nodes
	if canary > 0 {
		k := min(canary, len(rest))
		out = append(out, rest[:k])
		rest = rest[k:]
	}
	if size <= 0 {
		size = len(rest)
	}
	for len(rest) > 0 {
		k := max(1, min(size, len(rest)))
		out = append(out, rest[:k])
		rest = rest[k:]
	}
	return out, nil
}
