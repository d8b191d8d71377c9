package fleet

import (
	"time"

	"github.com/systemimager/sim/client/node"
)

// The agent protocol (ARCHITECTURE.md "Agent protocol"). Every request
// is made by the node (it opens the connection; nodes listen on nothing),
// through sync.Remote:
//
//	GET  /v1/agent/orders?node=N&wait=S  long poll: the node's next Order, or 204 after S seconds (≤ 60)
//	POST /v1/agent/report                a Report: what the node is and does (also its heartbeat)
//	POST /v1/agent/result                a ResultMsg: how an order ended
//	GET  /v1/agent/assignment?node=N     what the node is assigned (install.Config without layout)
//	GET  /v1/agent/diff?from=A&to=B      node.DiffReply: what updating from A to B changes
//	GET  /v1/fleet/nodes                 every NodeState (the live view)

// Order kinds.
const (
	// OrderUpdate stages, applies and checks (node.Machine.Update).
	OrderUpdate = "update"
	// OrderStage fetches and prepares only; a later OrderUpdate of the
	// same target applies without fetching.
	OrderStage = "stage"
	// OrderRollback goes back to the node's previous version, offline.
	OrderRollback = "rollback"
	// OrderDrift scans the root (node.Machine.Drift).
	OrderDrift = "drift"
	// OrderReinstall puts the installer into the node's bootloader for
	// one boot (sim node reinstall --local): the node downloads the
	// netboot kernel and initrd into /boot/sim-installer, adds a
	// one-time GRUB entry (or, with Kexec, loads the installer with
	// kexec_file_load) and, once its result is sent, reboots into it.
	OrderReinstall = "reinstall"
)

// Order is what the server asks of a node. The node carries out one at a
// time; an order redelivered after it was done (the server restarted, the
// node's agent restarted) is answered with the result it had.
type Order struct {
	ID      string       `json:"id"`
	Kind    string       `json:"kind"`
	Rollout string       `json:"rollout,omitempty"`
	Target  *node.Target `json:"target,omitempty"`
	// Transport carries the objects (a registered transport's name; ""
	// for the server's own stream).
	Transport string `json:"transport,omitempty"`
	// Health commands to run after the apply, and each one's bound.
	Health        []string `json:"health,omitempty"`
	HealthTimeout float64  `json:"health_timeout_s,omitempty"`
	// Planned is the server's estimate of the bytes to fetch.
	Planned int64 `json:"planned,omitempty"`
	// Reason is said in the node's log (a rollback's).
	Reason string    `json:"reason,omitempty"`
	Time   time.Time `json:"time"`
	// Kexec (a reinstall): boot the installer with kexec, no firmware
	// reboot and no bootloader entry. After (a reinstall): the
	// installer's sim.after= ("": the node's own setting).
	Kexec bool   `json:"kexec,omitempty"`
	After string `json:"after,omitempty"`
}

// Report is what a node says about itself; each one is also its
// heartbeat (the agent sends one at least every HeartbeatEvery).
type Report struct {
	Node string `json:"node"`
	// State is the node's: idle, updating, partial, failed, rolled-back.
	State string `json:"state"`
	// Phase while updating: staging, applying, checking, rolling-back.
	Phase   string `json:"phase,omitempty"`
	Order   string `json:"order,omitempty"`
	Rollout string `json:"rollout,omitempty"`
	// Image, Current and Previous are what the root is and was (image
	// commits; Effective is the checked-out commit).
	Image     string `json:"image,omitempty"`
	Current   string `json:"current,omitempty"`
	Effective string `json:"effective,omitempty"`
	Previous  string `json:"previous,omitempty"`
	// Bytes received so far of about Total, at Rate bytes/s, through
	// Transport.
	Bytes          int64              `json:"bytes,omitempty"`
	Total          int64              `json:"total,omitempty"`
	Rate           float64            `json:"rate,omitempty"`
	Transport      string             `json:"transport,omitempty"`
	Drift          *node.DriftSummary `json:"drift,omitempty"`
	RebootRequired bool               `json:"reboot_required,omitempty"`
	LastError      string             `json:"last_error,omitempty"`
	// Log is the end of the agent's log (at most LogLines lines).
	Log []string `json:"log,omitempty"`
}

// ResultMsg is how an order ended.
type ResultMsg struct {
	Node  string `json:"node"`
	Order string `json:"order"`
	Kind  string `json:"kind"`
	// OK is false when the order failed; Error says why (and names the
	// node). An update whose health check failed is OK false with
	// Outcome.State rolled-back.
	OK      bool          `json:"ok"`
	Error   string        `json:"error,omitempty"`
	Outcome *node.Outcome `json:"outcome,omitempty"`
	Drift   *node.Drift   `json:"drift,omitempty"`
	// Message says what a reinstall order set up.
	Message string `json:"message,omitempty"`
}

// LogLines is how much of a node's log its state keeps.
const LogLines = 20
