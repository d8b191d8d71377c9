package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"slices"
	"sort"
	"strconv"
	gosync "sync"
	"time"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/client/catalog"
	"github.com/systemimager/sim/client/install"
	"github.com/systemimager/sim/client/node"
	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
)

// Service is the fleet inside sim serve: the nodes' states, the orders
// waiting for them, the agent protocol's endpoints and the event hub.
type Service struct {
	Store *store.Store
	Log   *log.Logger

	hub Hub

	mu       gosync.Mutex
	nodes    map[string]*NodeState
	pending  map[string]*Order        // node → its outstanding order
	notify   map[string]chan struct{} // node → closed when an order comes
	waiters  map[string][]chan *ResultMsg
	handlers []func(*ResultMsg)
	dirty    bool
	offline  map[string]bool // nodes last published as offline

	// On an S3 store: the bucket's per-node documents (nil on a local
	// store), the nodes heard of since their last upload, and what and
	// when each last uploaded or loaded document said.
	docs     *store.NodeDocs
	unsent   map[string]bool
	sent     map[string]sentDoc
	lastSync time.Time

	stop chan struct{}
	done chan struct{}
	once gosync.Once
}

// New opens the fleet of st, with the states a previous server kept.
func New(st *store.Store, lg *log.Logger) *Service {
	if lg == nil {
		lg = log.New(io.Discard, "", 0)
	}
	nodes, err := load(st.Dir())
	if err != nil {
		lg.Printf("fleet: starting afresh: %v", err)
	}
	x := &Service{Store: st, Log: lg, nodes: nodes, pending: map[string]*Order{}, notify: map[string]chan struct{}{},
		waiters: map[string][]chan *ResultMsg{}, offline: map[string]bool{}, stop: make(chan struct{}), done: make(chan struct{}),
		docs: st.NodeDocs(DocKind), unsent: map[string]bool{}, sent: map[string]sentDoc{}}
	if x.docs != nil {
		// Before serving: a node that reported to another frontend
		// continues here from its state there (drift, log, commits).
		x.syncDocs()
	}
	go x.loop()
	return x
}

// On an S3 store a frontend uploads a node's state when it changed, else
// (a poll, progress) at most every PublishEvery, and loads the others'
// every SyncEvery: 500 agents polling every 30 s make about 17 PUTs a
// second, not one per poll, and a frontend sees another's state changes
// within about SyncEvery.
var (
	PublishEvery = 15 * time.Second
	SyncEvery    = 5 * time.Second
)

// sentDoc is what a node's last uploaded (or loaded) document said.
type sentDoc struct {
	at  time.Time
	sig string
}

// signature is what of s makes a change worth uploading at once: not
// LastSeen, bytes, rate, address or log, which change at every report.
func signature(s *NodeState) string {
	return fmt.Sprintf("%s|%s|%s|%s|%s|%s|%d|%s|%t|%s|%s", s.State, s.Phase, s.Image, s.Current, s.Effective, s.Previous,
		s.Drift, s.LastError, s.RebootRequired, s.Order, s.Rollout)
}

// publish uploads the states of the nodes heard of since their last
// upload: those that changed, and the rest PublishEvery after their last
// (all of them when all: the server stops).
func (x *Service) publish(all bool) {
	if x.docs == nil {
		return
	}
	now := time.Now()
	var todo []NodeState
	x.mu.Lock()
	for n := range x.unsent {
		s := x.nodes[n]
		if s == nil || s.LastSeen.IsZero() {
			delete(x.unsent, n)
			continue
		}
		if p, ok := x.sent[n]; !all && ok && p.sig == signature(s) && now.Sub(p.at) < PublishEvery {
			continue
		}
		c := *s
		c.Log = append([]string(nil), s.Log...)
		todo = append(todo, c)
		delete(x.unsent, n)
	}
	x.mu.Unlock()
	for i := range todo {
		s := &todo[i]
		b, err := json.Marshal(s)
		if err == nil {
			err = x.docs.Put(s.Name, s.LastSeen, b)
		}
		if err != nil {
			// The bucket is away: this one and the rest go at the
			// next tick, with one line in the log, not one per node.
			x.mu.Lock()
			for _, r := range todo[i:] {
				x.unsent[r.Name] = true
			}
			x.mu.Unlock()
			x.Log.Printf("fleet: upload %d node states: %v", len(todo)-i, err)
			return
		}
		x.mu.Lock()
		x.sent[s.Name] = sentDoc{now, signature(s)}
		x.mu.Unlock()
	}
}

// syncDocs loads what the other frontends uploaded and takes each node's
// state that is newer than this frontend's.
func (x *Service) syncDocs() {
	docs, err := x.docs.Load(0)
	if err != nil {
		x.Log.Printf("fleet: load the other frontends' reports: %v", err)
	}
	now := time.Now()
	var evs []NodeState
	x.mu.Lock()
	err = merge(x.nodes, docs, func(s *NodeState) {
		x.dirty = true
		x.sent[s.Name] = sentDoc{now, signature(s)} // the bucket has it
		delete(x.unsent, s.Name)
		c := *s
		c.Log = append([]string(nil), s.Log...)
		evs = append(evs, c)
	})
	x.lastSync = now
	x.mu.Unlock()
	if err != nil {
		x.Log.Printf("fleet: %v", err)
	}
	for i := range evs {
		x.hub.Publish(Event{Type: "node", Node: &evs[i]})
	}
}

// syncDue says whether the next load of the other frontends' reports is due.
func (x *Service) syncDue() bool {
	if x.docs == nil {
		return false
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	return time.Since(x.lastSync) >= SyncEvery
}

// Hub is where every change of a node or a rollout is published.
func (x *Service) Hub() *Hub { return &x.hub }

// loop saves the states when they changed (at most once a second) and
// publishes nodes going offline.
func (x *Service) loop() {
	defer close(x.done)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-x.stop:
			x.flush()
			x.publish(true)
			return
		case <-t.C:
			x.flush()
			x.publish(false)
			if x.syncDue() {
				x.syncDocs()
			}
			x.checkOffline()
		}
	}
}

func (x *Service) flush() {
	x.mu.Lock()
	if !x.dirty {
		x.mu.Unlock()
		return
	}
	cp := make(map[string]*NodeState, len(x.nodes))
	for n, s := range x.nodes {
		c := *s
		cp[n] = &c
	}
	x.dirty = false
	x.mu.Unlock()
	if err := save(x.Store.Dir(), cp); err != nil {
		x.Log.Printf("fleet: save: %v", err)
	}
}

func (x *Service) checkOffline() {
	now := time.Now()
	var evs []NodeState
	x.mu.Lock()
	for n, s := range x.nodes {
		off := s.shown(now).State == Offline
		if off != x.offline[n] {
			x.offline[n] = off
			if off {
				evs = append(evs, s.shown(now))
			}
		}
	}
	x.mu.Unlock()
	for i := range evs {
		x.hub.Publish(Event{Type: "node", Node: &evs[i]})
	}
}

// Close saves the states and stops.
func (x *Service) Close() {
	x.once.Do(func() { close(x.stop); <-x.done })
}

// update changes node name's state with fn (creating it), marks it seen
// when seen, and publishes the result.
func (x *Service) update(name string, seen bool, fn func(*NodeState)) NodeState {
	x.mu.Lock()
	s := x.nodes[name]
	if s == nil {
		s = &NodeState{Name: name, Drift: -1}
		x.nodes[name] = s
	}
	fn(s)
	if seen {
		s.LastSeen = time.Now().UTC()
		x.offline[name] = false
		if x.docs != nil {
			x.unsent[name] = true
		}
	}
	x.dirty = true
	cp := *s
	cp.Log = append([]string(nil), s.Log...)
	x.mu.Unlock()
	x.hub.Publish(Event{Type: "node", Node: &cp})
	return cp
}

// Nodes is every node the server knows (registered, or heard of), by
// name, with what it is assigned now; silent ones show as offline.
func (x *Service) Nodes() []NodeState {
	reg, _ := catalog.LoadRegistry(x.Store)
	now := time.Now()
	x.mu.Lock()
	byName := map[string]NodeState{}
	for n, s := range x.nodes {
		c := *s
		c.Log = append([]string(nil), s.Log...)
		byName[n] = c.shown(now)
	}
	x.mu.Unlock()
	if reg != nil {
		for n := range reg.Nodes {
			if _, ok := byName[n]; !ok {
				byName[n] = NodeState{Name: n, State: Unknown, Drift: -1}
			}
		}
	}
	heads := map[string]string{}
	out := make([]NodeState, 0, len(byName))
	for _, s := range byName {
		if reg != nil {
			if rn := reg.Nodes[s.Name]; rn != nil {
				s.Groups = rn.Groups
				if res, err := reg.Resolve(rn); err == nil && res.Image != "" {
					s.Image = res.Image
					h, ok := heads[res.Image]
					if !ok {
						if id, err := x.Store.Resolve(res.Image); err == nil {
							h = id.String()
						}
						heads[res.Image] = h
					}
					s.Assigned = h
				}
			}
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return NodeLess(out[i].Name, out[j].Name) })
	return out
}

// State is one node's state as it was last heard of, without the
// registry's view (cheap: for the rollout engine).
func (x *Service) State(name string) (NodeState, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	s := x.nodes[name]
	if s == nil {
		return NodeState{}, false
	}
	c := *s
	c.Log = nil
	return c.shown(time.Now()), true
}

// Node is one node's state.
func (x *Service) Node(name string) (NodeState, bool) {
	for _, s := range x.Nodes() {
		if s.Name == name {
			return s, true
		}
	}
	return NodeState{}, false
}

// Send makes o the node's outstanding order (replacing one not yet
// answered); the node gets it at its next poll, or at once if it waits.
func (x *Service) Send(name string, o *Order) {
	if o.Time.IsZero() {
		o.Time = time.Now().UTC()
	}
	x.mu.Lock()
	x.pending[name] = o
	if ch := x.notify[name]; ch != nil {
		close(ch)
		delete(x.notify, name)
	}
	x.mu.Unlock()
	x.update(name, false, func(s *NodeState) { s.Order, s.Rollout = o.ID, o.Rollout })
}

// Cancel withdraws the node's outstanding order if it is id (one the node
// is already carrying out runs to its end).
func (x *Service) Cancel(name, id string) {
	x.mu.Lock()
	if o := x.pending[name]; o != nil && o.ID == id {
		delete(x.pending, name)
	}
	x.mu.Unlock()
}

// Pending is the node's outstanding order, or nil.
func (x *Service) Pending(name string) *Order {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.pending[name]
}

// OnResult adds a handler of every result (the rollout engine's); it must
// not block.
func (x *Service) OnResult(fn func(*ResultMsg)) {
	x.mu.Lock()
	x.handlers = append(x.handlers, fn)
	x.mu.Unlock()
}

// Await waits for the result of order id (sent with Send after Await was
// called, or the result may come first: see Ask).
func (x *Service) Await(ctx context.Context, id string) (*ResultMsg, error) {
	ch, done := x.waiter(id)
	defer done()
	select {
	case r := <-ch:
		return r, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// waiter registers a wait for order id's result.
func (x *Service) waiter(id string) (chan *ResultMsg, func()) {
	ch := make(chan *ResultMsg, 1)
	x.mu.Lock()
	x.waiters[id] = append(x.waiters[id], ch)
	x.mu.Unlock()
	return ch, func() {
		x.mu.Lock()
		ws := x.waiters[id]
		for i, w := range ws {
			if w == ch {
				x.waiters[id] = append(ws[:i], ws[i+1:]...)
				break
			}
		}
		if len(x.waiters[id]) == 0 {
			delete(x.waiters, id)
		}
		x.mu.Unlock()
	}
}

// InstallStatus is install.Service.OnStatus: an installing node's report.
func (x *Service) InstallStatus(who string, st install.Status) {
	name := st.Node
	if name == "" {
		name = who
	}
	x.update(name, true, func(s *NodeState) {
		s.Phase, s.Bytes, s.Total, s.Transport = st.Step, st.Bytes, 0, ""
		line := fmt.Sprintf("install %s: %s", st.Step, st.State)
		if st.Message != "" {
			line += ": " + st.Message
		}
		s.Log = appendLog(s.Log, line)
		switch st.State {
		case install.Running:
			s.State = Installing
		case install.Failed:
			s.State, s.LastError = Failed, st.Message
		case install.Done:
			s.State, s.Phase, s.LastError = Idle, "", ""
			if st.Commit != "" {
				s.Current, s.Effective, s.Previous = st.Commit, "", ""
			}
			s.Drift, s.DriftTime = 0, nil
		}
		if st.Image != "" {
			s.Image = st.Image
		}
	})
}

func appendLog(log []string, lines ...string) []string {
	log = append(log, lines...)
	if len(log) > LogLines {
		log = append([]string(nil), log[len(log)-LogLines:]...)
	}
	return log
}

// maxBody bounds what a node may post.
const maxBody = 1 << 20

// Mount serves the agent protocol on srv. Every agent endpoint needs a
// node token (or an admin token), and each that names a node (in its
// query, or its body) that node's own: a node reports, polls and answers
// only for itself (ARCHITECTURE.md "Roles and tokens"). The live view of
// the fleet is a read.
func (x *Service) Mount(srv *simsync.Server) {
	srv.HandleRole("GET /v1/agent/orders", simsync.RoleNode, http.HandlerFunc(x.serveOrders))
	srv.HandleRole("POST /v1/agent/report", simsync.RoleNode, http.HandlerFunc(x.serveReport))
	srv.HandleRole("POST /v1/agent/result", simsync.RoleNode, http.HandlerFunc(x.serveResult))
	srv.HandleRole("GET /v1/agent/assignment", simsync.RoleNode, http.HandlerFunc(x.serveAssignment))
	// A diff names no node: any node's token (or an admin's) may ask.
	srv.HandleRole("GET /v1/agent/diff", simsync.RoleNode, http.HandlerFunc(x.serveDiff))
	srv.Handle("GET /v1/fleet/nodes", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, x.Nodes())
	}))
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	json.NewEncoder(w).Encode(v)
}

// allowed is the one check of every node's request: a valid node name,
// one the query agrees with (a report's or result's body names its node,
// and the agent names it in the query too, which Require checked), and
// credentials that may speak for it.
func (x *Service) allowed(w http.ResponseWriter, r *http.Request, name string) bool {
	if err := catalog.CheckNodeName(name); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return false
	}
	if q := r.URL.Query().Get("node"); q != "" && q != name {
		http.Error(w, fmt.Sprintf("node %s in the query, %s in the body", q, name), http.StatusBadRequest)
		return false
	}
	return simsync.AllowNode(w, r, name)
}

func host(r *http.Request) string {
	h, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return h
}

// MaxWait bounds a long poll.
const MaxWait = 60 * time.Second

func (x *Service) serveOrders(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("node")
	if !x.allowed(w, r, name) {
		return
	}
	wait := 25 * time.Second
	if s := r.URL.Query().Get("wait"); s != "" {
		n, err := strconv.ParseFloat(s, 64)
		if err != nil || n < 0 {
			http.Error(w, "wait: want seconds", http.StatusBadRequest)
			return
		}
		wait = min(time.Duration(n*float64(time.Second)), MaxWait)
	}
	addr := host(r)
	x.update(name, true, func(s *NodeState) { s.Address = addr })
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		x.mu.Lock()
		o := x.pending[name]
		var ch chan struct{}
		if o == nil {
			if ch = x.notify[name]; ch == nil {
				ch = make(chan struct{})
				x.notify[name] = ch
			}
		}
		x.mu.Unlock()
		if o != nil {
			writeJSON(w, o)
			return
		}
		select {
		case <-ch:
		case <-timer.C:
			w.WriteHeader(http.StatusNoContent)
			return
		case <-r.Context().Done():
			return
		}
	}
}

func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return false
	}
	return true
}

func (x *Service) serveReport(w http.ResponseWriter, r *http.Request) {
	var rep Report
	if !decodeBody(w, r, &rep) || !x.allowed(w, r, rep.Node) {
		return
	}
	addr := host(r)
	x.update(rep.Node, true, func(s *NodeState) {
		s.State, s.Phase, s.Order, s.Rollout = rep.State, rep.Phase, rep.Order, rep.Rollout
		s.Image, s.Current, s.Effective, s.Previous = firstNonEmpty(rep.Image, s.Image), rep.Current, rep.Effective, rep.Previous
		s.Bytes, s.Total, s.Rate, s.Transport = rep.Bytes, rep.Total, rep.Rate, rep.Transport
		s.RebootRequired, s.LastError, s.Address = rep.RebootRequired, rep.LastError, addr
		if rep.Drift != nil {
			t := rep.Drift.Time
			s.Drift, s.DriftTime = rep.Drift.Count, &t
		}
		if len(rep.Log) > 0 {
			s.Log = appendLog(nil, rep.Log...)
		}
	})
	w.WriteHeader(http.StatusNoContent)
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func (x *Service) serveResult(w http.ResponseWriter, r *http.Request) {
	var res ResultMsg
	if !decodeBody(w, r, &res) || !x.allowed(w, r, res.Node) {
		return
	}
	x.Result(&res)
	w.WriteHeader(http.StatusNoContent)
}

// Result takes a node's answer to an order: the order is no longer
// outstanding, the node's state follows, the handlers and waiters get it.
func (x *Service) Result(res *ResultMsg) {
	x.mu.Lock()
	if o := x.pending[res.Node]; o != nil && o.ID == res.Order {
		delete(x.pending, res.Node)
	}
	handlers := slices.Clone(x.handlers)
	waiters := x.waiters[res.Order]
	delete(x.waiters, res.Order)
	x.mu.Unlock()
	x.update(res.Node, true, func(s *NodeState) {
		if s.Order == res.Order {
			s.Order = ""
		}
		if o := res.Outcome; o != nil {
			s.State, s.Phase = o.State, ""
			s.Image, s.Current, s.Effective = firstNonEmpty(o.To.Image, s.Image), o.To.Commit.String(), o.To.Effective.String()
			if o.State == node.RolledBack && res.Kind == OrderUpdate {
				s.Current, s.Effective = o.From.Commit.String(), o.From.Effective.String()
			}
			s.Bytes, s.RebootRequired = o.Bytes, o.RebootRequired
		}
		if res.OK {
			s.LastError = ""
		} else {
			s.LastError = res.Error
		}
		if d := res.Drift; d != nil {
			now := time.Now().UTC()
			s.Drift, s.DriftTime = d.Count(), &now
		}
	})
	for _, h := range handlers {
		h(res)
	}
	for _, ch := range waiters {
		ch <- res
	}
}

func (x *Service) serveAssignment(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("node")
	if !x.allowed(w, r, name) {
		return
	}
	cfg, err := install.Assignment(x.Store, name, "", "")
	if err != nil {
		code := http.StatusBadRequest
		if errors.Is(err, install.ErrUnknownNode) || errors.Is(err, store.ErrNotFound) {
			code = http.StatusNotFound
		}
		http.Error(w, err.Error(), code)
		return
	}
	writeJSON(w, cfg)
}

func (x *Service) serveDiff(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	to, err := chunk.Parse(q.Get("to"))
	if err != nil {
		http.Error(w, "to: "+err.Error(), http.StatusBadRequest)
		return
	}
	var from chunk.ID
	if f := q.Get("from"); f != "" {
		if from, err = chunk.Parse(f); err != nil {
			http.Error(w, "from: "+err.Error(), http.StatusBadRequest)
			return
		}
	}
	d, err := node.ImageDiff(x.Store, from, to)
	if err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, store.ErrNotFound) {
			code = http.StatusNotFound
		}
		http.Error(w, err.Error(), code)
		return
	}
	writeJSON(w, d)
}

// Ask gives each node an order of kind (a drift scan) and waits up to
// timeout for all the answers. A node that does not answer in time gets
// a result with an error naming it (its order is withdrawn); one node
// never holds up the others beyond timeout.
func (x *Service) Ask(ctx context.Context, names []string, kind string, timeout time.Duration) map[string]*ResultMsg {
	return x.AskOrder(ctx, names, Order{Kind: kind}, timeout)
}

// AskOrder is Ask with an order like tmpl (its kind and options; each
// node's gets its own ID).
func (x *Service) AskOrder(ctx context.Context, names []string, tmpl Order, timeout time.Duration) map[string]*ResultMsg {
	kind := tmpl.Kind
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	out := map[string]*ResultMsg{}
	var mu gosync.Mutex
	var wg gosync.WaitGroup
	stamp := time.Now().UnixNano()
	for _, n := range names {
		id := fmt.Sprintf("%s.%s.%d", kind, n, stamp)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ch, done := x.waiter(id)
			defer done()
			o := tmpl
			o.ID = id
			x.Send(n, &o)
			var r *ResultMsg
			select {
			case r = <-ch:
			case <-ctx.Done():
			}
			if r == nil {
				x.Cancel(n, id)
				what := "no answer"
				if s, ok := x.State(n); ok && s.State == Offline {
					what = "offline, no answer"
				} else if !ok {
					what = "never heard of, no answer"
				}
				r = &ResultMsg{Node: n, Order: id, Kind: kind, Error: fmt.Sprintf("%s: %s within %v", n, what, timeout)}
			}
			mu.Lock()
			out[n] = r
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}
