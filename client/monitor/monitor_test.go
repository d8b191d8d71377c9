package monitor

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	gosync "sync"
	"testing"
	"time"

	"github.com/systemimager/sim/client"
	"github.com/systemimager/sim/client/fleet"
	"github.com/systemimager/sim/client/install"
	"github.com/systemimager/sim/store/storetest"
	simsync "github.com/systemimager/sim/sync"
	"github.com/systemimager/sim/sync/mcast"
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

// TestPageAndFigures: the page and its assets are served without a token
// even when reads are closed (they carry no data; the data stays behind
// the token), with a Content-Security-Policy that allows nothing but the
// server; a stream sends "swarms" when a multicast session changes and
// "refs" when an image moves, and a resumed stream is told both at once.
func TestPageAndFigures(t *testing.T) {
	st := storetest.New(t)
	fl := fleet.New(st, nil)
	t.Cleanup(fl.Close)
	srv := &simsync.Server{Store: st, ReadTokens: []string{"r"}}
	var mu gosync.Mutex
	sessions := []mcast.SessionInfo{}
	m := &Monitor{Fleet: fl, Server: srv, Heartbeat: time.Hour, FiguresEvery: 20 * time.Millisecond,
		Sessions: func() []mcast.SessionInfo { mu.Lock(); defer mu.Unlock(); return slices.Clone(sessions) }}
	m.Mount(srv)
	MountPage(srv)
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)

	for path, want := range map[string][2]string{
		"/":             {"text/html", "<title>sim fleet</title>"},
		"/ui/app.js":    {"text/javascript", "/v1/events"},
		"/ui/style.css": {"text/css", "--failed"},
	} {
		resp, err := http.Get(hs.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), want[0]) || !strings.Contains(string(b), want[1]) {
			t.Errorf("GET %s without a token: %s, %s, %d bytes; want 200, %s holding %q", path, resp.Status, resp.Header.Get("Content-Type"), len(b), want[0], want[1])
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "connect-src 'self'") {
			t.Errorf("GET %s: Content-Security-Policy %q", path, csp)
		}
	}
	for path, code := range map[string]int{"/ui/nosuch.js": 404, "/v1/monitor": 401, "/nosuch": 404} {
		if resp, err := http.Get(hs.URL + path); err != nil || resp.StatusCode != code {
			t.Errorf("GET %s without a token: %v %v; want %d", path, resp.Status, err, code)
		}
	}

	s := open(t, hs.URL, "r", "")
	if e := s.next("snapshot"); !strings.Contains(e.data, `"sessions":[]`) || !strings.Contains(e.data, `"torrents":[]`) {
		t.Errorf("snapshot %s: want empty torrents and sessions", e.data)
	}
	mu.Lock()
	sessions = append(sessions, mcast.SessionInfo{ID: "0000abcd", State: "sending", SentBytes: 1000, Members: []mcast.MemberInfo{{Name: "n1", LossPct: 1.5}}})
	mu.Unlock()
	var sw Swarms
	if e := s.next("swarms"); json.Unmarshal([]byte(e.data), &sw) != nil || len(sw.Sessions) != 1 || sw.Sessions[0].ID != "0000abcd" || sw.Sessions[0].Members[0].LossPct != 1.5 {
		t.Fatalf("swarms event %s: want session 0000abcd with n1 at 1.5%% loss", e.data)
	}
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "motd"), []byte("hi\n"), 0o644)
	id, _, err := client.Commit(t.Context(), st, src, client.CommitOptions{Image: "img"})
	if err != nil {
		t.Fatal(err)
	}
	var rf Refs
	e := s.next("refs")
	if json.Unmarshal([]byte(e.data), &rf) != nil || rf.Images["img"] != id.String() {
		t.Fatalf("refs event %s: want img at %s", e.data, id)
	}
	// A stream resumed from a node event's id has the figures at once,
	// before their next look (an hour away on this monitor).
	srv2 := &simsync.Server{Store: st, ReadTokens: []string{"r"}}
	m2 := &Monitor{Fleet: fl, Server: srv2, Heartbeat: time.Hour, FiguresEvery: time.Hour, Sessions: m.Sessions}
	m2.Mount(srv2)
	hs2 := httptest.NewServer(srv2)
	t.Cleanup(hs2.Close)
	s2 := open(t, hs2.URL, "r", "")
	s2.next("snapshot")
	fl.InstallStatus("n1", install.Status{Node: "n1", Step: "fetch", State: install.Running})
	ne := s2.next("node")
	s2.resp.Body.Close()
	r := open(t, hs2.URL, "r", ne.id)
	if e := r.next("swarms"); !strings.Contains(e.data, "0000abcd") {
		t.Errorf("resumed stream's swarms %s: want the session", e.data)
	}
	if e := r.next("refs"); !strings.Contains(e.data, id.String()) {
		t.Errorf("resumed stream's refs %s: want img", e.data)
	}
}
