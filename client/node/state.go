package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/client/install"
	"github.com/systemimager/sim/store"
)

// The node's record of itself and the journal of an apply, in its store
// directory (ARCHITECTURE.md "Node state and the apply journal"). Both are
// written atomically (store.WriteFileAtomic: temporary file, fsync,
// rename, fsync of the directory).
const (
	stateFile   = "node.json"
	journalFile = "journal.json"
)

// A Version is one state a root can be in.
type Version struct {
	Image string `json:"image,omitempty"`
	// Commit is the image commit (what the server knows and assigns).
	Commit chunk.ID `json:"commit"`
	// Effective is what is checked out: the image with the node's
	// overrides and hosts line (install.Effective); Commit itself when
	// there are none.
	Effective chunk.ID      `json:"effective"`
	Overrides []install.Doc `json:"overrides,omitempty"`
}

// IsZero says whether v names nothing.
func (v Version) IsZero() bool { return v.Effective.IsZero() }

// Node states, as the node reports them (client/fleet adds installing,
// updating and offline).
const (
	Idle       = "idle"
	Updating   = "updating"
	Partial    = "partial"
	Failed     = "failed"
	RolledBack = "rolled-back"
)

// State is <store>/node.json: what the root is, what it was, and how the
// last operation ended.
type State struct {
	Node     string   `json:"node,omitempty"`
	Current  Version  `json:"current"`
	Previous *Version `json:"previous,omitempty"`
	// Status is idle, failed (the last operation failed before changing
	// anything) or rolled-back (its health checks failed, or an admin
	// rolled it back); partial is a journal waiting to be completed.
	Status    string    `json:"state"`
	LastError string    `json:"last_error,omitempty"`
	Time      time.Time `json:"time"`
	// RebootRequired: /boot changed in the boot BootID; it clears once
	// the node has booted again.
	RebootRequired bool   `json:"reboot_required,omitempty"`
	BootID         string `json:"boot_id,omitempty"`
	// LastOrder and LastResult: the server's order the last operation
	// carried out, and how it ended, so a redelivered order is answered
	// without running it twice.
	LastOrder  string   `json:"last_order,omitempty"`
	LastResult *Outcome `json:"last_result,omitempty"`
	// Drift is the last drift scan's summary.
	Drift *DriftSummary `json:"drift,omitempty"`
}

// Journal is <store>/journal.json, present while an apply runs: written
// before the root is touched, removed once node.json says how it ended.
// An interrupted apply (kill -9, power loss) is completed from it by the
// next sim update, sim rollback or sim agent; until then the node is
// partial.
type Journal struct {
	// Op is "update" or "rollback" (a rollback after failed health
	// checks is one too, with Reason).
	Op   string  `json:"op"`
	From Version `json:"from"`
	To   Version `json:"to"`
	// Phase is where it is: "apply" (the checkout of To), "identity",
	// "boot" (the bootloader), "check" (the health checks; updates only).
	Phase string `json:"phase"`
	// Health and HealthTimeout are the checks to run after an update.
	Health        []string      `json:"health,omitempty"`
	HealthTimeout time.Duration `json:"health_timeout_ns,omitempty"`
	// Identity is re-applied after the checkout (nil: keep the node's).
	Identity *install.Config `json:"identity,omitempty"`
	Order    string          `json:"order,omitempty"`
	// Auto marks the rollback of an update whose health checks failed;
	// Reason is why (the check and its exit), HealthOutput its output.
	Auto         bool   `json:"auto,omitempty"`
	Reason       string `json:"reason,omitempty"`
	HealthOutput string `json:"health_output,omitempty"`
	// RebootRequired: the boot phase regenerated the bootloader.
	RebootRequired bool      `json:"reboot_required,omitempty"`
	Started        time.Time `json:"started"`
	// Bytes the update fetched (for the result of a completed journal).
	Bytes int64 `json:"bytes,omitempty"`
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := store.WriteFileAtomic(path, 0o644, func(w io.Writer) error { _, err := w.Write(append(b, '\n')); return err }); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// LoadState reads the node's record in the store directory dir; a node
// that has none yet gets an empty one.
func LoadState(dir string) (*State, error) {
	var s State
	err := readJSON(filepath.Join(dir, stateFile), &s)
	if errors.Is(err, os.ErrNotExist) {
		return &State{Status: Idle}, nil
	}
	if err != nil {
		return nil, err
	}
	return &s, nil
}

func saveState(dir string, s *State) error { return writeJSON(filepath.Join(dir, stateFile), s) }

// LoadJournal reads the journal of an interrupted apply (nil when none).
func LoadJournal(dir string) (*Journal, error) {
	var j Journal
	err := readJSON(filepath.Join(dir, journalFile), &j)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &j, nil
}

func saveJournal(dir string, j *Journal) error { return writeJSON(filepath.Join(dir, journalFile), j) }

func removeJournal(dir string) error {
	if err := os.Remove(filepath.Join(dir, journalFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	// The removal is what says the apply is over: make it durable.
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// bootID names this boot of the machine.
func bootID() string {
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return string(trimNL(b))
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}
