package rollout

import (
	"errors"
	"fmt"
	"io"
	"log"
	"strings"
	gosync "sync"
	"time"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/client/catalog"
	"github.com/systemimager/sim/client/fleet"
	"github.com/systemimager/sim/client/install"
	"github.com/systemimager/sim/client/node"
	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
	"github.com/systemimager/sim/sync/auto"
)

// DefaultNodeTimeout is how long a node has to carry out an order.
const DefaultNodeTimeout = 15 * time.Minute

// Engine runs the rollouts of a store inside sim serve.
type Engine struct {
	Store   *store.Store
	Fleet   *fleet.Service
	Planner *simsync.Planner
	Log     *log.Logger
	// Transports are the names --transport may take besides auto.
	Transports []string
	// Chooser, when set, is sim serve's transport advisor: --transport
	// auto weighs the server's uplink, the nodes' links and cores and the
	// costs nodes reported; without it the model's defaults.
	Chooser auto.Chooser

	mu  gosync.Mutex
	rs  map[string]*Rollout
	est map[[2]chunk.ID]int64
	// reg is the node registry, read again at most once a second (a wave
	// of hundreds of nodes reads it once).
	reg     *catalog.Registry
	regTime time.Time

	kick chan struct{}
	stop chan struct{}
	done chan struct{}
	sub  *fleet.Subscription
	once gosync.Once
}

// New starts the engine of st: rollouts a previous server left running
// carry on (their outstanding orders are sent again; a node that carried
// one out meanwhile answers with its result).
//
// ch, when not nil, is sim serve's transport advisor (Engine.Chooser).
func New(st *store.Store, fl *fleet.Service, pl *simsync.Planner, transports []string, ch auto.Chooser, lg *log.Logger) (*Engine, error) {
	if lg == nil {
		lg = log.New(io.Discard, "", 0)
	}
	e := &Engine{Store: st, Fleet: fl, Planner: pl, Log: lg, Transports: transports, Chooser: ch, rs: map[string]*Rollout{},
		est: map[[2]chunk.ID]int64{}, kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	all, err := List(st.Dir())
	if err != nil {
		return nil, err
	}
	for _, r := range all {
		e.rs[r.ID] = r
		if r.State == Done && !r.Revert {
			continue
		}
		resent := 0
		for _, name := range sortedNodes(r) {
			ns := r.Nodes[name]
			if ns.Order != "" {
				e.resend(r, name, ns)
				resent++
			}
		}
		if r.State == Running || resent > 0 {
			e.logf(r, "", "resumed", fmt.Sprintf("server started; %s, %d orders sent again", r.State, resent))
		}
	}
	e.sub = fl.Hub().Subscribe(1024)
	fl.OnResult(e.onResult)
	go e.loop()
	return e, nil
}

// Close stops the engine (the rollouts' state is on disk).
func (e *Engine) Close() {
	e.once.Do(func() {
		close(e.stop)
		e.sub.Close()
		<-e.done
	})
}

func (e *Engine) poke() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

func (e *Engine) loop() {
	defer close(e.done)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-e.stop:
			return
		case <-t.C:
		case <-e.kick:
		case ev, ok := <-e.sub.C:
			if !ok {
				return
			}
			e.nodeEvent(ev)
			continue
		}
		e.mu.Lock()
		for _, r := range e.rs {
			e.step(r)
		}
		e.mu.Unlock()
	}
}

// nodeEvent follows a node's progress on an order of a rollout.
func (e *Engine) nodeEvent(ev fleet.Event) {
	s := ev.Node
	if ev.Type != "node" || s == nil || s.Order == "" || s.State != fleet.Updating {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	r := e.rs[rolloutOf(s.Order)]
	if r == nil {
		return
	}
	ns := r.Nodes[s.Name]
	if ns == nil || ns.Order != s.Order || ns.terminal() || ns.Reverting {
		return
	}
	state := map[string]string{"staging": Staging, "applying": Applying, "checking": Checking, "rolling-back": Checking}[s.Phase]
	if state != "" && state != ns.State {
		ns.State = state
		ns.Bytes = s.Bytes
		e.save(r)
		e.publish(r, s.Name, state, "")
	}
}

func rolloutOf(order string) string {
	id, _, _ := strings.Cut(order, ".")
	return id
}

func sortedNodes(r *Rollout) []string {
	var out []string
	for _, w := range r.Waves {
		out = append(out, w...)
	}
	return out
}

func (e *Engine) logf(r *Rollout, node, event, reason string) {
	if err := appendLog(e.Store.Dir(), r.ID, Entry{Time: time.Now().UTC(), Node: node, Event: event, Reason: reason}); err != nil {
		e.Log.Printf("rollout %s: log: %v", r.ID, err)
	}
	msg := event
	if node != "" {
		msg = node + ": " + msg
	}
	if reason != "" {
		msg += ": " + reason
	}
	e.Log.Printf("rollout %s: %s", r.ID, msg)
}

func (e *Engine) publish(r *Rollout, node, nodeState, msg string) {
	e.Fleet.Hub().Publish(fleet.Event{Type: "rollout", Rollout: &fleet.RolloutEvent{ID: r.ID, State: r.State, Commit: r.Commit,
		Node: node, NodeState: nodeState, Message: msg}})
}

func (e *Engine) save(r *Rollout) {
	r.Updated = time.Now().UTC()
	if err := save(e.Store.Dir(), r); err != nil {
		e.Log.Printf("%v", err)
	}
}

// budget says whether r has failed more nodes than it may.
func (r *Rollout) overBudget() bool { return r.Failures-r.Accepted > r.Spec.MaxFailures }

func (e *Engine) halt(r *Rollout, reason string) {
	r.State, r.Reason = Halted, reason
	e.logf(r, "", "halted", reason)
	e.save(r)
	e.publish(r, "", "", reason)
}

// failures lists the failed nodes and why, for a halt's reason.
func (r *Rollout) failureList() string {
	var parts []string
	for _, name := range sortedNodes(r) {
		if ns := r.Nodes[name]; ns.State == NodeFailed || ns.State == RolledBack {
			parts = append(parts, fmt.Sprintf("%s %s: %s", name, ns.State, ns.Error))
		}
	}
	return strings.Join(parts, "; ")
}

// step moves r on as far as it can now: orders for the nodes that need
// one, timeouts, the next wave, the end.
func (e *Engine) step(r *Rollout) {
	if r.State == Aborted && r.Revert {
		e.stepRevert(r)
		return
	}
	if r.State != Running {
		return
	}
	changed := false
	defer func() {
		if changed {
			e.save(r)
		}
	}()
	waiting := func(names []string, kind string) bool {
		busy := false
		for _, name := range names {
			ns := r.Nodes[name]
			if ns.terminal() || (kind == fleet.OrderStage && ns.Staged) {
				continue
			}
			busy = true
			if ns.Order == "" {
				e.send(r, name, ns, kind)
				changed = true
			} else if e.timedOut(r, name, ns) {
				changed = true
			}
		}
		return busy
	}
	if r.overBudget() {
		where := "while staging"
		if r.Wave < len(r.Waves) && (r.Staged || !r.Spec.StageFirst) {
			where = "in " + waveName(r, r.Wave)
			if waveDone(r, r.Wave) {
				where = "after " + waveName(r, r.Wave)
			}
		}
		e.halt(r, fmt.Sprintf("%s: %s failed, more than --max-failures %d: %s", where, nodesN(r.Failures-r.Accepted), r.Spec.MaxFailures, r.failureList()))
		return
	}
	if r.Spec.StageFirst && !r.Staged {
		if waiting(sortedNodes(r), fleet.OrderStage) {
			return
		}
		r.Staged, changed = true, true
		e.logf(r, "", "staged", "every node has the update; applying wave by wave")
		if r.overBudget() {
			e.halt(r, fmt.Sprintf("staging failed on %s, more than --max-failures %d: %s", nodesN(r.Failures-r.Accepted), r.Spec.MaxFailures, r.failureList()))
			return
		}
	}
	for r.Wave < len(r.Waves) {
		if waiting(r.Waves[r.Wave], fleet.OrderUpdate) {
			return
		}
		if r.overBudget() {
			e.halt(r, fmt.Sprintf("after %s: %s failed, more than --max-failures %d: %s", waveName(r, r.Wave), nodesN(r.Failures-r.Accepted), r.Spec.MaxFailures, r.failureList()))
			return
		}
		e.logf(r, "", "wave done", waveName(r, r.Wave))
		r.Wave++
		changed = true
		if r.Wave < len(r.Waves) {
			e.logf(r, "", "wave started", fmt.Sprintf("%s: %s", waveName(r, r.Wave), strings.Join(r.Waves[r.Wave], ",")))
		}
	}
	r.State = Done
	c := r.Counts()
	r.Reason = fmt.Sprintf("%d done, %d failed, %d rolled back", c[NodeDone], c[NodeFailed], c[RolledBack])
	changed = true
	e.logf(r, "", "done", r.Reason)
	e.publish(r, "", "", r.Reason)
}

func waveDone(r *Rollout, w int) bool {
	for _, n := range r.Waves[w] {
		if !r.Nodes[n].terminal() {
			return false
		}
	}
	return true
}

func nodesN(n int) string {
	if n == 1 {
		return "1 node"
	}
	return fmt.Sprintf("%d nodes", n)
}

func waveName(r *Rollout, i int) string {
	if i == 0 && r.Spec.Canary > 0 {
		return "the canary"
	}
	if r.Spec.Canary > 0 {
		return fmt.Sprintf("wave %d", i)
	}
	return fmt.Sprintf("wave %d", i+1)
}

// stepRevert sends the rollbacks of abort --revert.
func (e *Engine) stepRevert(r *Rollout) {
	changed, busy := false, false
	for _, name := range sortedNodes(r) {
		ns := r.Nodes[name]
		switch {
		case ns.Reverting:
			busy = true
			if e.timedOut(r, name, ns) {
				ns.Reverting, changed = false, true
			}
		case ns.State == NodeDone && !ns.Reverted && ns.Order == "":
			e.send(r, name, ns, fleet.OrderRollback)
			ns.Reverting, busy, changed = true, true, true
		case ns.Order != "" && !ns.terminal():
			busy = true // finishing the update it had; reverted after
		}
	}
	if !busy {
		r.Revert, changed = false, true
		e.logf(r, "", "reverted", fmt.Sprintf("%d nodes rolled back", r.Counts()[RolledBack]))
	}
	if changed {
		e.save(r)
	}
}

// timedOut fails a node that did not answer its order in time.
func (e *Engine) timedOut(r *Rollout, name string, ns *NodeStatus) bool {
	limit := time.Duration(r.Spec.NodeTimeout * float64(time.Second))
	if limit <= 0 {
		limit = DefaultNodeTimeout
	}
	if ns.Sent.IsZero() || time.Since(ns.Sent) < limit {
		return false
	}
	e.Fleet.Cancel(name, ns.Order)
	ns.Order = ""
	ns.Error = fmt.Sprintf("%s: no answer within %v (is it up? sim nodes)", name, limit)
	if ns.Reverting {
		e.logf(r, name, "revert failed", ns.Error)
		return true
	}
	ns.State = NodeFailed
	r.Failures++
	e.logf(r, name, NodeFailed, ns.Error)
	e.publish(r, name, NodeFailed, ns.Error)
	return true
}

// send gives node name its next order of kind.
func (e *Engine) send(r *Rollout, name string, ns *NodeStatus, kind string) {
	ns.Attempt++
	ns.Order = fmt.Sprintf("%s.%s.%s%d", r.ID, name, kind, ns.Attempt)
	ns.Sent = time.Now().UTC()
	ns.Error = ""
	if kind != fleet.OrderRollback {
		ns.State = Staging
		if ns.Staged && kind == fleet.OrderUpdate {
			ns.State = Applying
		}
	}
	e.resend(r, name, ns)
	reason := ""
	if o := e.Fleet.Pending(name); o != nil && o.Transport != "" {
		reason = "through " + o.Transport
	}
	e.logf(r, name, kind+" sent", reason)
	e.publish(r, name, ns.State, kind)
}

// resend (re)builds node name's outstanding order and hands it to the
// fleet.
func (e *Engine) resend(r *Rollout, name string, ns *NodeStatus) {
	kind := orderKind(ns.Order)
	o := &fleet.Order{ID: ns.Order, Kind: kind, Rollout: r.ID, Health: r.Spec.Health, HealthTimeout: r.Spec.HealthTimeout}
	if kind == fleet.OrderRollback {
		o.Reason = fmt.Sprintf("rollout %s reverted", r.ID)
	} else {
		t, err := e.target(r, name)
		if err != nil {
			ns.State, ns.Order, ns.Error = NodeFailed, "", fmt.Sprintf("%s: %v", name, err)
			r.Failures++
			e.logf(r, name, NodeFailed, ns.Error)
			return
		}
		o.Target = t
		o.Transport, o.Planned = e.transport(r, name)
	}
	e.Fleet.Send(name, o)
}

func orderKind(id string) string {
	parts := strings.Split(id, ".")
	k := parts[len(parts)-1]
	return strings.TrimRight(k, "0123456789")
}

// target is what node name is to become in r: r's commit, with the
// node's overrides and identity as the server assigns them now.
func (e *Engine) target(r *Rollout, name string) (*node.Target, error) {
	id, err := chunk.Parse(r.Commit)
	if err != nil {
		return nil, err
	}
	t := &node.Target{Version: node.Version{Image: r.Image, Commit: id}}
	reg, err := e.registry()
	if err != nil {
		return nil, err
	}
	cfg, err := install.AssignmentIn(e.Store, reg, name, "", "")
	switch {
	case err == nil:
		t.Overrides, t.Identity = cfg.Overrides, cfg
		cfg.Commit, cfg.Image = id, r.Image
	case errors.Is(err, install.ErrUnknownNode):
		// A node that joined by name: the image alone.
	default:
		return nil, err
	}
	return t, nil
}

func (e *Engine) registry() (*catalog.Registry, error) {
	if e.reg != nil && time.Since(e.regTime) < time.Second {
		return e.reg, nil
	}
	reg, err := catalog.LoadRegistry(e.Store)
	if err != nil {
		return nil, err
	}
	e.reg, e.regTime = reg, time.Now()
	return reg, nil
}

// transport picks how node name fetches, and its estimated bytes. With
// auto, the rollout knows what a server's advisor would have to gather:
// the wave fetches together, so the model (sync/auto) weighs the wave's
// size and the node's delta.
func (e *Engine) transport(r *Rollout, name string) (string, int64) {
	want, _ := chunk.Parse(r.Commit)
	planned := e.estimate(want, e.current(name))
	t := r.Spec.Transport
	if t == "auto" {
		ns := r.Nodes[name]
		wave := r.Waves[min(ns.Wave, len(r.Waves)-1)]
		if r.Spec.StageFirst && !r.Staged {
			wave = sortedNodes(r)
		}
		var avail []string
		for _, x := range []string{auto.BitTorrent, auto.Multicast} {
			if contains(e.Transports, x) {
				avail = append(avail, x)
			}
		}
		if e.Chooser != nil {
			t = e.Chooser.Choose(planned, len(wave), avail).Transport
		} else {
			t = auto.Choose(auto.Inputs{Bytes: planned, Nodes: len(wave), Available: avail}).Transport
		}
	}
	return t, planned
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// current is the image commit the node last reported.
func (e *Engine) current(name string) chunk.ID {
	if s, ok := e.Fleet.State(name); ok {
		if id, err := chunk.Parse(s.Current); err == nil {
			return id
		}
	}
	return chunk.ID{}
}

// estimate is what a node on have would fetch of want (cached).
func (e *Engine) estimate(want, have chunk.ID) int64 {
	k := [2]chunk.ID{want, have}
	if n, ok := e.est[k]; ok {
		return n
	}
	var haves []chunk.ID
	if !have.IsZero() {
		haves = []chunk.ID{have}
	}
	var n int64
	if pl, err := e.Planner.Plan(want, haves); err == nil {
		n, _ = e.Planner.Estimate(pl)
	}
	e.est[k] = n
	return n
}

// onResult takes a node's answer to an order of a rollout.
func (e *Engine) onResult(res *fleet.ResultMsg) {
	e.mu.Lock()
	defer e.mu.Unlock()
	r := e.rs[rolloutOf(res.Order)]
	if r == nil {
		return
	}
	ns := r.Nodes[res.Node]
	if ns == nil || ns.Order != res.Order {
		return // an order withdrawn or timed out meanwhile
	}
	ns.Order = ""
	// What the node received for this rollout: its staging and its
	// update (the live figure of its reports is replaced).
	if o := res.Outcome; o != nil && res.Kind != fleet.OrderRollback {
		ns.Bytes = ns.StagedBytes + o.Bytes
		if res.Kind == fleet.OrderStage {
			ns.StagedBytes = o.Bytes
		}
	}
	event, reason := "", ""
	switch res.Kind {
	case fleet.OrderStage:
		if res.OK {
			ns.Staged, ns.State, event = true, Pending, "staged"
		} else {
			ns.State, ns.Error, event, reason = NodeFailed, res.Error, NodeFailed, res.Error
			r.Failures++
		}
	case fleet.OrderUpdate:
		switch {
		case res.OK:
			ns.State, ns.Commit, event = NodeDone, r.Commit, NodeDone
		case res.Outcome != nil && res.Outcome.State == node.RolledBack:
			ns.State, ns.Error, event, reason = RolledBack, res.Error, RolledBack, res.Error
			ns.Commit = res.Outcome.From.Commit.String()
			if h := res.Outcome.Health; h != "" {
				reason += "\n" + h
			}
			r.Failures++
		default:
			ns.State, ns.Error, event, reason = NodeFailed, res.Error, NodeFailed, res.Error
			r.Failures++
		}
	case fleet.OrderRollback:
		ns.Reverting = false
		if res.OK {
			ns.Reverted, ns.State, event = true, RolledBack, "reverted"
			if o := res.Outcome; o != nil {
				ns.Commit = o.To.Commit.String()
			}
		} else {
			ns.Error, event, reason = res.Error, "revert failed", res.Error
		}
	}
	e.logf(r, res.Node, event, reason)
	e.save(r)
	e.publish(r, res.Node, ns.State, reason)
	e.poke()
}

// ErrBusy is returned when a node is in another rollout still going.
var ErrBusy = errors.New("busy")

// Start begins a rollout of spec and returns it; it fails, naming what is
// wrong, before any order is given.
func (e *Engine) Start(spec Spec) (*Rollout, error) {
	if len(spec.Nodes) == 0 {
		return nil, errors.New("rollout: no nodes selected")
	}
	id, err := e.Store.Resolve(spec.Ref)
	if err != nil {
		return nil, fmt.Errorf("rollout: %w", err)
	}
	c, err := e.Store.Commit(id)
	if err != nil {
		return nil, err
	}
	if catalog.IsSpecial(c.Image) {
		return nil, fmt.Errorf("rollout: %s is a catalog document (%s), not a system image", spec.Ref, c.Image)
	}
	if spec.Transport == "" {
		spec.Transport = simsync.DefaultTransport
	}
	if spec.Transport != "auto" && !contains(e.Transports, spec.Transport) {
		return nil, fmt.Errorf("rollout: --transport %s: want auto or one of %s", spec.Transport, strings.Join(e.Transports, ", "))
	}
	if spec.MaxFailures < 0 {
		return nil, fmt.Errorf("rollout: --max-failures %d: want 0 or more", spec.MaxFailures)
	}
	if spec.NodeTimeout <= 0 {
		spec.NodeTimeout = DefaultNodeTimeout.Seconds()
	}
	waves, err := Waves(spec.Nodes, spec.Canary, spec.Wave)
	if err != nil {
		return nil, err
	}
	known := map[string]bool{}
	for _, s := range e.Fleet.Nodes() {
		known[s.Name] = true
	}
	var unknown []string
	for _, n := range spec.Nodes {
		if !known[n] {
			unknown = append(unknown, n)
		}
	}
	if len(unknown) > 0 {
		return nil, fmt.Errorf("rollout: unknown nodes (neither registered nor ever heard of): %s", strings.Join(unknown, ", "))
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	next := 1
	for rid, r := range e.rs {
		next = max(next, idNum(rid)+1)
		if r.State == Done || r.State == Aborted {
			continue
		}
		for _, n := range spec.Nodes {
			if _, in := r.Nodes[n]; in {
				return nil, fmt.Errorf("rollout: node %s is in rollout %s (%s): %w; wait for it, or abort it (sim rollout abort %s)", n, r.ID, r.State, ErrBusy, r.ID)
			}
		}
	}
	now := time.Now().UTC()
	r := &Rollout{ID: fmt.Sprintf("r%d", next), State: Running, Commit: id.String(), Image: c.Image, Created: now,
		Spec: spec, Waves: waves, Nodes: map[string]*NodeStatus{}}
	for w, names := range waves {
		for _, n := range names {
			ns := &NodeStatus{State: Pending, Wave: w}
			if cur := e.current(n); !cur.IsZero() {
				ns.Commit, ns.Previous = cur.String(), cur.String()
			}
			r.Nodes[n] = ns
		}
	}
	e.rs[r.ID] = r
	e.save(r)
	e.logf(r, "", "started", fmt.Sprintf("%s (%s) to %d nodes (%s) in %d waves; canary %d, wave %s, max failures %d, transport %s%s",
		spec.Ref, id.Short(), len(spec.Nodes), spec.Select, len(waves), spec.Canary, orAll(spec.Wave), spec.MaxFailures, spec.Transport,
		map[bool]string{true: ", staged first", false: ""}[spec.StageFirst]))
	if !spec.StageFirst {
		e.logf(r, "", "wave started", fmt.Sprintf("%s: %s", waveName(r, 0), strings.Join(waves[0], ",")))
	}
	e.publish(r, "", "", "started")
	e.step(r)
	return r.clone(), nil
}

func orAll(w string) string {
	if w == "" {
		return "all"
	}
	return w
}

// Get is rollout id as it is now.
func (e *Engine) Get(id string) (*Rollout, error) {
	if err := CheckID(id); err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	r := e.rs[id]
	if r == nil {
		return nil, fmt.Errorf("%w %s", ErrNoRollout, id)
	}
	return r.clone(), nil
}

// Pause stops r from giving new orders (those given run to their end).
func (e *Engine) Pause(id string) (*Rollout, error) {
	return e.change(id, func(r *Rollout) error {
		if r.State != Running {
			return fmt.Errorf("rollout %s is %s, not running", id, r.State)
		}
		r.State = Paused
		e.logf(r, "", "paused", "")
		return nil
	})
}

// Resume continues a paused or halted rollout; a halted one's failures so
// far are accepted (it halts again only after more than --max-failures
// new ones).
func (e *Engine) Resume(id string) (*Rollout, error) {
	return e.change(id, func(r *Rollout) error {
		switch r.State {
		case Paused:
		case Halted:
			r.Accepted = r.Failures
		default:
			return fmt.Errorf("rollout %s is %s: only a paused or halted rollout resumes", id, r.State)
		}
		r.State, r.Reason = Running, ""
		e.logf(r, "", "resumed", "")
		return nil
	})
}

// Abort ends r: orders not yet taken are withdrawn; with revert, every
// node r updated is rolled back to where it was (also after r is done).
func (e *Engine) Abort(id string, revert bool) (*Rollout, error) {
	return e.change(id, func(r *Rollout) error {
		if r.State == Aborted && !revert {
			return fmt.Errorf("rollout %s is aborted already", id)
		}
		if r.State == Done && !revert {
			return fmt.Errorf("rollout %s is done: nothing to abort (abort --revert rolls its nodes back)", id)
		}
		for name, ns := range r.Nodes {
			if ns.Order != "" && e.Fleet.Pending(name) != nil && e.Fleet.Pending(name).ID == ns.Order {
				e.Fleet.Cancel(name, ns.Order)
				ns.Order = ""
				if !ns.terminal() {
					ns.State = Pending
				}
			}
		}
		r.State, r.Revert = Aborted, revert
		r.Reason = "aborted"
		if revert {
			r.Reason = "aborted and reverted"
		}
		e.logf(r, "", "aborted", map[bool]string{true: "reverting its nodes", false: ""}[revert])
		return nil
	})
}

func (e *Engine) change(id string, fn func(*Rollout) error) (*Rollout, error) {
	if err := CheckID(id); err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	r := e.rs[id]
	if r == nil {
		return nil, fmt.Errorf("%w %s", ErrNoRollout, id)
	}
	if err := fn(r); err != nil {
		return nil, err
	}
	e.save(r)
	e.publish(r, "", "", r.State)
	e.step(r)
	return r.clone(), nil
}
