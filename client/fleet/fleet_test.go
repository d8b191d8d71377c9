package fleet

import (
	"context"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/store/storetest"
	simsync "github.com/systemimager/sim/sync"
)

func TestExpandNodes(t *testing.T) {
	for _, c := range []struct {
		spec string
		want []string
		err  string
	}{
		{"n1", []string{"n1"}, ""},
		{"n1,n3", []string{"n1", "n3"}, ""},
		{"n1-n3", []string{"n1", "n2", "n3"}, ""},
		{"n08-n11", []string{"n08", "n09", "n10", "n11"}, ""},
		{"rack2-n[1-2,5]", []string{"rack2-n1", "rack2-n2", "rack2-n5"}, ""},
		{"n[01-03]x", []string{"n01x", "n02x", "n03x"}, ""},
		{"n2,n1-n3", []string{"n2", "n1", "n3"}, ""},
		{"web-a", []string{"web-a"}, ""}, // a dash, no range
		{"n3-n1", nil, "goes down"},
		{"n[1-", nil, "unbalanced"},
		{"N1", nil, "invalid node name"},
		{"n1-n200000", nil, "too long"},
	} {
		got, err := ExpandNodes(c.spec)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) || !strings.Contains(err.Error(), c.spec) && !strings.Contains(err.Error(), "node list") {
				t.Errorf("%q: %v; want an error with %q", c.spec, err, c.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%q = %v %v; want %v", c.spec, got, err, c.want)
		}
	}
	if !NodeLess("n2", "n10") || NodeLess("n10", "n2") || !NodeLess("a", "b") {
		t.Error("NodeLess does not count")
	}
}

// A subscriber that does not read never holds up the publisher; it
// learns how many events it lost.
func TestHubSlowSubscriber(t *testing.T) {
	var h Hub
	slow := h.Subscribe(1)
	fast := h.Subscribe(1000)
	done := make(chan struct{})
	go func() {
		for i := 0; i < 500; i++ {
			h.Publish(Event{Type: "node", Node: &NodeState{Name: "n1"}})
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Publish blocked on a slow subscriber")
	}
	if n := len(fast.C); n != 500 {
		t.Errorf("fast subscriber got %d events; want 500", n)
	}
	first := <-slow.C
	h.Publish(Event{Type: "rollout"})
	next := <-slow.C
	if first.Seq != 1 || next.Missed != 499 || next.Seq != 501 {
		t.Errorf("slow subscriber: first %d, then %d having missed %d; want 1, then 501 having missed 499", first.Seq, next.Seq, next.Missed)
	}
	slow.Close()
	if _, open := <-slow.C; open {
		t.Error("Close left C open")
	}
	h.Publish(Event{}) // no subscriber left behind to block on
}

// addToken makes a token of role (for node) in st, as sim token add does.
func addToken(t *testing.T, st *store.Store, name, role, node string) string {
	t.Helper()
	tok, err := simsync.NewToken()
	if err != nil {
		t.Fatal(err)
	}
	if err := st.AddToken(store.Token{Name: name, Role: role, Node: node, Created: time.Now()}, simsync.TokenHash(tok)); err != nil {
		t.Fatal(err)
	}
	return tok
}

// The agent protocol over a real server: a node polls and gets its
// order, its result reaches the waiter. Every agent endpoint needs the
// node's own token or an admin token: without a token 401, with another
// node's, a read or an enroll token 403, each saying which node; the
// live view stays a read.
func TestAgentProtocol(t *testing.T) {
	st := storetest.New(t)
	x := New(st, nil)
	defer x.Close()
	srv := &simsync.Server{Store: st, WriteTokens: []string{"w"}}
	x.Mount(srv)
	hs := httptest.NewServer(srv)
	defer hs.Close()
	toks := map[string]string{
		"":       "",
		"n1":     addToken(t, st, "node-n1", "node", "n1"),
		"n2":     addToken(t, st, "node-n2", "node", "n2"),
		"admin":  addToken(t, st, "ops", "admin", ""),
		"enroll": addToken(t, st, "boot", "enroll", ""),
		"read":   addToken(t, st, "reader", "read", ""),
		"legacy": "w", // --token-file's: admin
	}
	remote := func(who string) *simsync.Remote {
		r, _ := simsync.NewRemote(hs.URL, toks[who])
		r.Retries = 0
		return r
	}
	report := func(n string) Report { return Report{Node: n, State: "idle", Current: strings.Repeat("a", 64)} }
	result := func(n string) ResultMsg { return ResultMsg{Node: n, Order: "none." + n, Kind: OrderDrift, OK: true} }
	for _, c := range []struct {
		who, what string
		call      func(r *simsync.Remote) error
		want      string // "" for success, else in the error
	}{
		{"", "report n1", func(r *simsync.Remote) error {
			return r.PostJSON(t.Context(), "/v1/agent/report?node=n1", report("n1"), nil)
		}, "401 Unauthorized: POST /v1/agent/report needs the node token of n1 (or an admin token): this node has none; on the server: sim token add node-n1 --role node --node n1, into /var/lib/sim/token on the node"},
		{"", "report n1, body only", func(r *simsync.Remote) error { return r.PostJSON(t.Context(), "/v1/agent/report", report("n1"), nil) }, "401"},
		{"", "orders n1", func(r *simsync.Remote) error {
			_, err := r.Poll(t.Context(), "/v1/agent/orders?node=n1&wait=0", time.Second, new(Order))
			return err
		}, "401 Unauthorized: GET /v1/agent/orders needs the node token of n1"},
		{"", "assignment n1", func(r *simsync.Remote) error {
			return r.GetJSON(t.Context(), "/v1/agent/assignment?node=n1", new(map[string]any))
		}, "401"},
		{"", "diff", func(r *simsync.Remote) error {
			return r.GetJSON(t.Context(), "/v1/agent/diff?to="+strings.Repeat("0", 64), new(map[string]any))
		}, "401 Unauthorized: GET /v1/agent/diff needs a node token"},
		{"n2", "report n1", func(r *simsync.Remote) error {
			return r.PostJSON(t.Context(), "/v1/agent/report?node=n1", report("n1"), nil)
		}, "403 Forbidden: POST /v1/agent/report needs the node token of n1 (or an admin token); token node-n2 (role node, node n2) may not"},
		{"n2", "report n1 in the body, n2 in the query", func(r *simsync.Remote) error {
			return r.PostJSON(t.Context(), "/v1/agent/report?node=n2", report("n1"), nil)
		}, "400"},
		{"n2", "report n1, body only", func(r *simsync.Remote) error { return r.PostJSON(t.Context(), "/v1/agent/report", report("n1"), nil) },
			"403 Forbidden: POST /v1/agent/report for n1 needs that node's token (or an admin token); token node-n2 (role node, node n2) may not"},
		{"n2", "orders n1", func(r *simsync.Remote) error {
			_, err := r.Poll(t.Context(), "/v1/agent/orders?node=n1&wait=0", time.Second, new(Order))
			return err
		}, "403 Forbidden: GET /v1/agent/orders needs the node token of n1"},
		{"n2", "result n1", func(r *simsync.Remote) error {
			return r.PostJSON(t.Context(), "/v1/agent/result?node=n1", result("n1"), nil)
		}, "403"},
		{"n2", "assignment n1", func(r *simsync.Remote) error {
			return r.GetJSON(t.Context(), "/v1/agent/assignment?node=n1", new(map[string]any))
		}, "403"},
		{"enroll", "report n1", func(r *simsync.Remote) error {
			return r.PostJSON(t.Context(), "/v1/agent/report?node=n1", report("n1"), nil)
		}, "403 Forbidden: POST /v1/agent/report needs the node token of n1 (or an admin token); token boot (role enroll) may not"},
		{"enroll", "orders n1", func(r *simsync.Remote) error {
			_, err := r.Poll(t.Context(), "/v1/agent/orders?node=n1&wait=0", time.Second, new(Order))
			return err
		}, "403"},
		{"enroll", "diff", func(r *simsync.Remote) error {
			return r.GetJSON(t.Context(), "/v1/agent/diff?to="+strings.Repeat("0", 64), new(map[string]any))
		}, "403"},
		{"read", "report n1", func(r *simsync.Remote) error {
			return r.PostJSON(t.Context(), "/v1/agent/report?node=n1", report("n1"), nil)
		}, "403"},
		{"n1", "report n1", func(r *simsync.Remote) error {
			return r.PostJSON(t.Context(), "/v1/agent/report?node=n1", report("n1"), nil)
		}, ""},
		{"n1", "orders n1", func(r *simsync.Remote) error {
			_, err := r.Poll(t.Context(), "/v1/agent/orders?node=n1&wait=0", time.Second, new(Order))
			return err
		}, ""},
		{"n1", "result n1", func(r *simsync.Remote) error {
			return r.PostJSON(t.Context(), "/v1/agent/result?node=n1", result("n1"), nil)
		}, ""},
		{"admin", "report n2", func(r *simsync.Remote) error {
			return r.PostJSON(t.Context(), "/v1/agent/report?node=n2", report("n2"), nil)
		}, ""},
		{"admin", "orders n2", func(r *simsync.Remote) error {
			_, err := r.Poll(t.Context(), "/v1/agent/orders?node=n2&wait=0", time.Second, new(Order))
			return err
		}, ""},
		{"legacy", "report n3", func(r *simsync.Remote) error {
			return r.PostJSON(t.Context(), "/v1/agent/report?node=n3", report("n3"), nil)
		}, ""},
		// The live view is a read: anyone, on a server with open reads.
		{"", "fleet nodes", func(r *simsync.Remote) error { return r.GetJSON(t.Context(), "/v1/fleet/nodes", new([]NodeState)) }, ""},
		{"enroll", "fleet nodes", func(r *simsync.Remote) error { return r.GetJSON(t.Context(), "/v1/fleet/nodes", new([]NodeState)) }, ""},
	} {
		err := c.call(remote(c.who))
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s with token %q: %v; want it done", c.what, c.who, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s with token %q: %v; want an error with %q", c.what, c.who, err, c.want)
		}
	}
	for n, want := range map[string]bool{"n1": true, "n2": true, "n3": true} {
		if s, ok := x.State(n); ok != want || s.State != "idle" || s.LastSeen.IsZero() {
			t.Errorf("%s after its reports: %+v %v", n, s, ok)
		}
	}
	r := remote("n1")
	// A poll waits; the order comes while it does.
	got := make(chan Order, 1)
	go func() {
		var o Order
		if ok, err := r.Poll(context.Background(), "/v1/agent/orders?node=n1&wait=20", 20*time.Second, &o); err != nil || !ok {
			t.Errorf("poll: %v %v", ok, err)
		}
		got <- o
	}()
	time.Sleep(100 * time.Millisecond)
	wait := make(chan *ResultMsg, 1)
	go func() { res, _ := x.Await(context.Background(), "drift.n1.1"); wait <- res }()
	time.Sleep(50 * time.Millisecond)
	x.Send("n1", &Order{ID: "drift.n1.1", Kind: OrderDrift})
	if o := <-got; o.ID != "drift.n1.1" || o.Kind != OrderDrift {
		t.Errorf("polled %+v", o)
	}
	if err := r.PostJSON(t.Context(), "/v1/agent/result", ResultMsg{Node: "n1", Order: "drift.n1.1", Kind: OrderDrift, OK: true}, nil); err != nil {
		t.Fatal(err)
	}
	if res := <-wait; res == nil || !res.OK {
		t.Errorf("result: %+v", res)
	}
	if x.Pending("n1") != nil {
		t.Error("an answered order is still outstanding")
	}
	// Nothing for a node: 204 after its wait.
	var o Order
	if ok, err := r.Poll(t.Context(), "/v1/agent/orders?node=n1&wait=0.1", time.Second, &o); ok || err != nil {
		t.Errorf("empty poll: %v %v", ok, err)
	}
	if err := r.PostJSON(t.Context(), "/v1/agent/report", map[string]any{"node": "n1", "bogus": 1}, nil); err == nil || !strings.Contains(err.Error(), "400") {
		t.Errorf("a report with an unknown field: %v; want 400", err)
	}
	// The view survives the server.
	x.Close()
	saved, err := Load(st)
	if err != nil || saved["n1"].State != "idle" {
		t.Errorf("fleet.json: %+v %v", saved["n1"], err)
	}
}

// SubscribeAfter gives the events after a sequence number while the ring
// holds them all, and says so when it does not.
func TestHubSubscribeAfter(t *testing.T) {
	var h Hub
	for i := 0; i < 5; i++ {
		h.Publish(Event{Type: "node"})
	}
	s, missed, ok := h.SubscribeAfter(3, 10)
	if !ok || len(missed) != 2 || missed[0].Seq != 4 || missed[1].Seq != 5 {
		t.Errorf("after 3 of 5: %v %+v; want events 4 and 5", ok, missed)
	}
	h.Publish(Event{Type: "node"})
	if e := <-s.C; e.Seq != 6 {
		t.Errorf("live event after the replay: seq %d; want 6", e.Seq)
	}
	s.Close()
	if s, _, ok := h.SubscribeAfter(99, 1); ok {
		t.Error("after a sequence number the hub never gave: ok; want a snapshot")
	} else {
		s.Close()
	}
	for i := 0; i < HubHistory; i++ {
		h.Publish(Event{Type: "node"})
	}
	last := h.Seq()
	if s, _, ok := h.SubscribeAfter(last-HubHistory-1, 1); ok {
		t.Errorf("after %d, beyond the ring: ok; want a snapshot", last-HubHistory-1)
	} else {
		s.Close()
	}
	s, missed, ok = h.SubscribeAfter(last-HubHistory, 1)
	if !ok || len(missed) != HubHistory || missed[0].Seq != last-HubHistory+1 || missed[len(missed)-1].Seq != last {
		t.Fatalf("the whole ring: ok %v, %d events; want %d ending at %d", ok, len(missed), HubHistory, last)
	}
	for i := 1; i < len(missed); i++ {
		if missed[i].Seq != missed[i-1].Seq+1 {
			t.Fatalf("ring out of order at %d: %d after %d", i, missed[i].Seq, missed[i-1].Seq)
		}
	}
	s.Close()
}
