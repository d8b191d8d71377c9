package monitor

import (
	"bufio"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/systemimager/sim/client/fleet"
	"github.com/systemimager/sim/client/install"
	"github.com/systemimager/sim/store/storetest"
	simsync "github.com/systemimager/sim/sync"
)

// sse is one event read off a stream.
type sse struct{ typ, id, data string }

// stream reads a GET /v1/events response, one event (or comment, typ
// ":") at a time.
type stream struct {
	t    *testing.T
	resp *http.Response
	c    chan sse
}

func open(t *testing.T, url, token, last string) *stream {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), "GET", url+"/v1/events", nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if last != "" {
		req.Header.Set("Last-Event-ID", last)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	s := &stream{t: t, resp: resp, c: make(chan sse, 100)}
	if resp.StatusCode != 200 {
		return s
	}
	go func() {
		defer close(s.c)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		var e sse
		for sc.Scan() {
			l := sc.Text()
			switch {
			case l == "":
				if e.typ != "" {
					s.c <- e
				}
				e = sse{}
			case strings.HasPrefix(l, ":"):
				select { // heartbeats nobody waits for are dropped
				case s.c <- sse{typ: ":"}:
				default:
				}
			case strings.HasPrefix(l, "event: "):
				e.typ = l[7:]
			case strings.HasPrefix(l, "id: "):
				e.id = l[4:]
			case strings.HasPrefix(l, "data: "):
				e.data = l[6:]
			}
		}
	}()
	t.Cleanup(func() { resp.Body.Close() })
	return s
}

// next is the next event of type typ (skipping others), within 10 s.
func (s *stream) next(typ string) sse {
	s.t.Helper()
	tm := time.After(10 * time.Second)
	for {
		select {
		case e, ok := <-s.c:
			if !ok {
				s.t.Fatalf("stream ended waiting for a %q event", typ)
			}
			if e.typ == typ {
				return e
			}
		case <-tm:
			s.t.Fatalf("no %q event within 10 s", typ)
		}
	}
}

func TestEvents(t *testing.T) {
	st := storetest.New(t)
	fl := fleet.New(st, nil)
	t.Cleanup(fl.Close)
	srv := &simsync.Server{Store: st, WriteTokens: []string{"w"}, ReadTokens: []string{"r"}}
	m := &Monitor{Fleet: fl, Server: srv, Heartbeat: 50 * time.Millisecond}
	m.Mount(srv)
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close) // after the streams' bodies close (cleanups run last first)

	if s := open(t, hs.URL, "", ""); s.resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET /v1/events without the read token: %s; want 401", s.resp.Status)
	}
	s := open(t, hs.URL, "r", "")
	if ct := s.resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("Content-Type %q; want text/event-stream", ct)
	}
	snap := s.next("snapshot")
	var sn Snapshot
	if err := json.Unmarshal([]byte(snap.data), &sn); err != nil || sn.Server == "" || len(sn.Nodes) != 0 {
		t.Fatalf("first snapshot %q: %v; want one with no nodes", snap.data, err)
	}
	fl.InstallStatus("n1", install.Status{Node: "n1", Step: "fetch", State: install.Running, Bytes: 1234})
	ev := s.next("node")
	var msg Message
	if err := json.Unmarshal([]byte(ev.data), &msg); err != nil || msg.Node == nil || msg.Node.Name != "n1" || msg.Node.Bytes != 1234 || msg.Node.State != fleet.Installing {
		t.Fatalf("node event %q: %v; want n1 installing at 1234 bytes", ev.data, err)
	}
	if want := m.eventID(msg.Seq); ev.id != want {
		t.Errorf("event id %q; want %q", ev.id, want)
	}
	s.next(":") // a heartbeat comment
	s.resp.Body.Close()

	// Two changes while away: a reconnect with the last id gets just them.
	fl.InstallStatus("n1", install.Status{Node: "n1", Step: "fetch", State: install.Running, Bytes: 5000})
	fl.InstallStatus("n2", install.Status{Node: "n2", Step: "fetch", State: install.Running, Bytes: 1})
	r := open(t, hs.URL, "r", ev.id)
	for _, want := range []string{"n1", "n2"} {
		e := r.next("node")
		var mm Message
		if err := json.Unmarshal([]byte(e.data), &mm); err != nil || mm.Node == nil || mm.Node.Name != want {
			t.Fatalf("replayed event %q: %v; want %s's", e.data, err, want)
		}
	}
	select {
	case e := <-r.c:
		if e.typ == "snapshot" {
			t.Error("a resumed stream sent a snapshot; want only the missed events")
		}
	default:
	}
	// An id of another server run (a restart): a snapshot with both nodes.
	f := open(t, hs.URL, "r", "deadbeef.2")
	var fs Snapshot
	if e := f.next("snapshot"); json.Unmarshal([]byte(e.data), &fs) != nil || len(fs.Nodes) != 2 {
		t.Errorf("snapshot after a foreign id: %q; want 2 nodes", e.data)
	}
}
