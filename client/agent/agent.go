// Package agent is the node's daemon, `sim agent` (ARCHITECTURE.md "Agent
// protocol"): it completes an interrupted apply at start, then reports to
// its server and carries out the server's orders (stage, update, rollback,
// drift scan) on its root through client/node, over connections it opens
// itself (a long poll: the node listens on nothing). It outlives its
// server: a server that goes away is polled again with backoff, a result
// is sent until it is taken. It does not decide anything: the server's
// rollout engine (client/rollout) does.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"strings"
	gosync "sync"
	"sync/atomic"
	"time"

	"github.com/systemimager/sim/client/fleet"
	"github.com/systemimager/sim/client/install"
	"github.com/systemimager/sim/client/node"
	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
)

// Options drive Run.
type Options struct {
	Store  *store.Store
	Root   string
	Node   string // the node's name; default installed.json's
	Remote *simsync.Remote
	// Transport opens the transport an order names ("" or "http": nil,
	// the server's own stream).
	Transport func(ctx context.Context, name string) (simsync.Transport, error)
	Log       io.Writer
	// Wait is how long a poll waits for an order; Heartbeat how often
	// the node reports when nothing happens; DriftEvery how often it
	// scans itself for drift (0: only when ordered).
	Wait, Heartbeat, DriftEvery time.Duration
	// Trace is node.Machine.Trace (the crash tests' kill points).
	Trace func(op, path string)
}

// Defaults of Options.
const (
	DefaultWait      = 25 * time.Second
	DefaultHeartbeat = 30 * time.Second
	maxBackoff       = 15 * time.Second
	progressEvery    = time.Second
)

type agent struct {
	Options
	m      *node.Machine
	remote *simsync.Remote
	rx     atomic.Int64 // response bytes received from the server

	mu      gosync.Mutex
	log     []string
	phase   string
	order   *fleet.Order
	started time.Time
	startRx int64
}

// Run is the agent until ctx ends.
func Run(ctx context.Context, o Options) error {
	if o.Log == nil {
		o.Log = io.Discard
	}
	if o.Wait <= 0 {
		o.Wait = DefaultWait
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = DefaultHeartbeat
	}
	a := &agent{Options: o}
	// Count what comes from the server, for progress reports.
	rr := o.Remote.Copy()
	c := *rr.Client
	base := c.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	c.Transport = &counting{next: base, n: &a.rx}
	rr.Client = &c
	a.remote = rr
	m, err := node.Open(o.Store, o.Root, o.Node, a.remote)
	if err != nil {
		return err
	}
	if m.Name == "" {
		return errors.New("sim agent: this node does not know its name (it was not installed by sim): give --node NAME")
	}
	m.Log, m.Trace = a, o.Trace
	m.Phase = func(p string) {
		a.mu.Lock()
		a.phase = p
		a.mu.Unlock()
	}
	a.m = m
	a.logf("node %s, root %s, server %s", m.Name, m.Root, o.Remote.URL)

	// An apply cut short (kill -9, power loss) is completed first.
	if j, _ := node.LoadJournal(o.Store.Dir()); j != nil {
		if o.Remote.Token != "" { // without one the server would refuse it
			a.report(ctx)
		}
		if _, err := m.Recover(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			a.logf("%v", err)
		}
	}
	// Only now, the journal done (that needs no server), the
	// credentials: every agent request speaks for this node, so without
	// its token there is nothing the agent may do.
	if o.Remote.Token == "" {
		tf := filepath.Join(o.Store.Dir(), install.TokenName)
		return fmt.Errorf("sim agent: node %s has no node token, and needs one (no %s, no --token-file or $SIM_TOKEN): on the server, sim token add node-%s --role node --node %s, then put the token in %s (mode 0600); or install the node with an enroll token (sim token add boot --role enroll), which leaves it its own",
			m.Name, tf, m.Name, m.Name, tf)
	}
	a.report(ctx)
	lastReport := time.Now()
	lastDrift := time.Now()
	backoff := time.Duration(0)
	down := false
	for ctx.Err() == nil {
		var ord fleet.Order
		got, err := a.remote.Poll(ctx, fmt.Sprintf("/v1/agent/orders?node=%s&wait=%g", m.Name, o.Wait.Seconds()), o.Wait, &ord)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			// A token the server refuses stays refused: polling on would
			// only hide it.
			var he *simsync.HTTPError
			if errors.As(err, &he) && (he.Code == http.StatusUnauthorized || he.Code == http.StatusForbidden) {
				return fmt.Errorf("sim agent: node %s: the server refuses this node's token: %w", m.Name, err)
			}
			backoff = min(max(2*backoff, time.Second), maxBackoff)
			if !down {
				a.logf("server unreachable (%v); trying again every %v at most", err, maxBackoff)
				down = true
			}
			sleep(ctx, jitter(backoff))
			continue
		}
		if down {
			a.logf("server %s is back", o.Remote.URL)
			down = false
			a.report(ctx)
			lastReport = time.Now()
		}
		backoff = 0
		if got {
			a.execute(ctx, &ord)
			lastReport = time.Now()
			continue
		}
		if o.DriftEvery > 0 && time.Since(lastDrift) > o.DriftEvery {
			lastDrift = time.Now()
			if d, err := m.Drift(ctx); err != nil {
				a.logf("drift scan: %v", err)
			} else if d.Count() > 0 {
				a.logf("drift: %d paths differ from %s", d.Count(), d.Commit.Short())
			}
			a.report(ctx)
			lastReport = time.Now()
		}
		if time.Since(lastReport) >= o.Heartbeat {
			a.report(ctx)
			lastReport = time.Now()
		}
	}
	a.logf("stopped")
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// jitter spreads d by ±20%, so that nodes a server restart cut off all
// at once do not all come back at once.
func jitter(d time.Duration) time.Duration {
	return d + time.Duration((rand.Float64()*0.4-0.2)*float64(d))
}

// Write makes the agent an io.Writer for the machine's log: each line
// goes to the log and into the tail sent with reports.
func (a *agent) Write(p []byte) (int, error) {
	a.Log.Write(p)
	a.mu.Lock()
	for _, l := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		a.log = append(a.log, strings.TrimPrefix(l, "sim: "))
	}
	if len(a.log) > fleet.LogLines {
		a.log = append([]string(nil), a.log[len(a.log)-fleet.LogLines:]...)
	}
	a.mu.Unlock()
	return len(p), nil
}

func (a *agent) logf(format string, args ...any) {
	fmt.Fprintf(a, "sim agent: "+format+"\n", args...)
}

// state is the report of what the node is and does now.
func (a *agent) state() fleet.Report {
	rep := fleet.Report{Node: a.m.Name}
	s, err := a.m.Status()
	if err != nil {
		rep.State, rep.LastError = node.Failed, err.Error()
	} else {
		rep.State, rep.LastError, rep.RebootRequired, rep.Drift = s.Status, s.LastError, s.RebootRequired, s.Drift
		rep.Image, rep.Current, rep.Effective = s.Current.Image, idString(s.Current.Commit), idString(s.Current.Effective)
		if s.Previous != nil {
			rep.Previous = idString(s.Previous.Commit)
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.order != nil {
		rep.State, rep.Phase, rep.Order, rep.Rollout = node.Updating, a.phase, a.order.ID, a.order.Rollout
		rep.Total, rep.Transport = a.order.Planned, a.order.Transport
		rep.Bytes = a.rx.Load() - a.startRx
		if el := time.Since(a.started).Seconds(); el > 0 {
			rep.Rate = float64(rep.Bytes) / el
		}
		if a.phase == "" {
			rep.Phase = a.order.Kind
		}
	}
	rep.Log = append([]string(nil), a.log...)
	return rep
}

func idString(id interface {
	IsZero() bool
	String() string
}) string {
	if id.IsZero() {
		return ""
	}
	return id.String()
}

// report sends the node's state; failures are left to the next one.
func (a *agent) report(ctx context.Context) {
	rep := a.state()
	rr := a.remote.Copy()
	rr.Retries = 0
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rr.PostJSON(cctx, "/v1/agent/report?node="+rep.Node, rep, nil)
}

// execute carries out one order and sends its result.
func (a *agent) execute(ctx context.Context, o *fleet.Order) {
	res := &fleet.ResultMsg{Node: a.m.Name, Order: o.ID, Kind: o.Kind}
	// An order done already (redelivered after a restart of either
	// side) is answered with what it gave.
	if s, err := node.LoadState(a.Store.Dir()); err == nil && s.LastOrder == o.ID && s.LastResult != nil {
		if j, _ := node.LoadJournal(a.Store.Dir()); j == nil {
			res.Outcome = s.LastResult
			if o.Kind == fleet.OrderRollback {
				res.OK = s.LastResult.State == node.RolledBack
			} else {
				res.OK = s.LastResult.State == node.Idle && s.LastResult.Error == ""
			}
			if !res.OK {
				res.Error = fmt.Sprintf("%s: %s", a.m.Name, s.LastResult.Error)
			}
			a.send(ctx, res)
			return
		}
	}
	a.mu.Lock()
	a.order, a.phase, a.started, a.startRx = o, "", time.Now(), a.rx.Load()
	a.mu.Unlock()
	stop := a.progress(ctx)
	var err error
	switch o.Kind {
	case fleet.OrderUpdate, fleet.OrderStage:
		if o.Target == nil {
			err = errors.New("order without a target")
			break
		}
		var tr simsync.Transport
		if o.Transport != "" && o.Transport != simsync.DefaultTransport && a.Transport != nil {
			if tr, err = a.Transport(ctx, o.Transport); err != nil {
				err = fmt.Errorf("transport %s: %w", o.Transport, err)
				break
			}
		}
		a.logf("order %s: %s to %s (%s)", o.ID, o.Kind, o.Target.Commit.Short(), o.Target.Image)
		res.Outcome, err = a.m.Update(ctx, o.Target, node.UpdateOptions{Transport: tr, Health: o.Health,
			HealthTimeout: time.Duration(o.HealthTimeout * float64(time.Second)), Order: o.ID, StageOnly: o.Kind == fleet.OrderStage})
		if tr != nil {
			// After the result is sent: a swarm's peers may still
			// want what this node holds (its --seed-time bounds it).
			defer tr.Finish(ctx)
		}
		if err == nil && res.Outcome != nil && res.Outcome.State == node.RolledBack {
			err = errors.New(res.Outcome.Error)
		}
	case fleet.OrderRollback:
		a.logf("order %s: roll back (%s)", o.ID, o.Reason)
		reason := o.Reason
		if reason == "" {
			reason = "rolled back by the server"
		}
		res.Outcome, err = a.m.Rollback(ctx, o.ID, reason)
	case fleet.OrderDrift:
		res.Drift, err = a.m.Drift(ctx)
	case fleet.OrderReinstall:
		a.logf("order %s: reinstall from the local disk (kexec %v)", o.ID, o.Kexec)
		res.Message, err = a.prepareReinstall(ctx, o)
	default:
		err = fmt.Errorf("unknown order kind %q", o.Kind)
	}
	stop()
	a.mu.Lock()
	a.order, a.phase = nil, ""
	a.mu.Unlock()
	if ctx.Err() != nil {
		return // stopped: the journal (if any) is completed at the next start
	}
	res.OK = err == nil
	if err != nil {
		res.Error = fmt.Sprintf("%s: %v", a.m.Name, err)
		a.logf("order %s: %v", o.ID, err)
	}
	a.send(ctx, res)
	a.report(ctx)
	if o.Kind == fleet.OrderReinstall && err == nil {
		// Only now, the server told: the node goes into its installer.
		a.rebootForReinstall(o.Kexec)
	}
}

// progress reports every second while an order runs (a quick one sends
// only its result); the returned func stops it.
func (a *agent) progress(ctx context.Context) func() {
	done := make(chan struct{})
	var wg gosync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				a.report(ctx)
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// send delivers a result, trying again with backoff while the server is
// away (it is needed: the rollout waits for it).
func (a *agent) send(ctx context.Context, res *fleet.ResultMsg) {
	backoff := time.Second
	for ctx.Err() == nil {
		err := a.remote.PostJSON(ctx, "/v1/agent/result?node="+res.Node, res, nil)
		if err == nil {
			return
		}
		var he *simsync.HTTPError
		if errors.As(err, &he) && !he.Transient() {
			a.logf("result of %s refused: %v", res.Order, err)
			return
		}
		sleep(ctx, jitter(backoff))
		backoff = min(2*backoff, maxBackoff)
	}
}

// counting counts the response bytes of every request.
type counting struct {
	next http.RoundTripper
	n    *atomic.Int64
}

func (c *counting) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := c.next.RoundTrip(r)
	if err == nil && resp.Body != nil {
		resp.Body = &countBody{resp.Body, c.n}
	}
	return resp, err
}

type countBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}
