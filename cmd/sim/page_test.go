package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	gosync "sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/client/fleet"
	"github.com/systemimager/sim/client/node"
)

// pageAgent is a node's agent reduced to the wire: it speaks the real
// agent protocol (reports, long-polled orders, results) to a real sim
// serve, and moves through an update only when the test lets it (one
// step per gate), so the page can be watched between steps.
type pageAgent struct {
	name, url, token, image string
	gate                    chan struct{}

	mu      gosync.Mutex
	current string
	// rest is what the agent reports when it has nothing to do (idle,
	// or what a failed node keeps saying).
	rest fleet.Report
}

// updateBytes is what a simulated update receives, in updateSteps steps.
const (
	updateBytes = 4_000_000
	updateSteps = 10
)

func (a *pageAgent) do(ctx context.Context, method, path string, in, out any) (int, error) {
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.url+path, body)
	if err != nil {
		return 0, err
	}
	// An admin token: accepted by the agent endpoints whether they are
	// reads (today) or need the node's own token or an admin's.
	req.Header.Set("Authorization", "Bearer "+a.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, b)
	}
	if out != nil && resp.StatusCode == http.StatusOK {
		return resp.StatusCode, json.NewDecoder(resp.Body).Decode(out)
	}
	return resp.StatusCode, nil
}

func (a *pageAgent) report(ctx context.Context, r fleet.Report) {
	r.Node, r.Image = a.name, a.image
	a.mu.Lock()
	r.Current, r.Effective = a.current, a.current
	a.mu.Unlock()
	a.do(ctx, "POST", "/v1/agent/report", r, nil)
}

// run is the agent's loop until ctx ends. A server that is down (the
// test restarts it) is asked again after a short pause: the agent's own
// retry, as the real one does.
func (a *pageAgent) run(ctx context.Context) {
	if a.rest.State == "" {
		a.rest = fleet.Report{State: node.Idle, Log: []string{a.name + ": agent started"}}
	}
	a.report(ctx, a.rest)
	for ctx.Err() == nil {
		var o fleet.Order
		code, err := a.do(ctx, "GET", "/v1/agent/orders?node="+a.name+"&wait=2", nil, &o)
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
			continue
		}
		if code == http.StatusNoContent {
			a.report(ctx, a.rest) // the heartbeat
			continue
		}
		if o.Kind != fleet.OrderUpdate || o.Target == nil {
			a.do(ctx, "POST", "/v1/agent/result", fleet.ResultMsg{Node: a.name, Order: o.ID, Kind: o.Kind, OK: true}, nil)
			continue
		}
		var log []string
		for i := 0; ; i++ {
			phase := "staging"
			if i == updateSteps {
				phase = "applying"
			}
			log = append(log, fmt.Sprintf("%s: %s %d of %d bytes", o.ID, phase, i*updateBytes/updateSteps, updateBytes))
			a.report(ctx, fleet.Report{State: node.Updating, Phase: phase, Order: o.ID, Rollout: o.Rollout,
				Bytes: int64(i * updateBytes / updateSteps), Total: updateBytes, Rate: 1.5e6, Transport: "http", Log: log})
			if i == updateSteps {
				break
			}
			select {
			case <-a.gate:
			case <-ctx.Done():
				return
			}
		}
		a.mu.Lock()
		from := node.Version{Image: a.image, Commit: mustParse(a.current), Effective: mustParse(a.current)}
		a.current = o.Target.Commit.String()
		a.mu.Unlock()
		a.do(ctx, "POST", "/v1/agent/result", fleet.ResultMsg{Node: a.name, Order: o.ID, Kind: o.Kind, OK: true,
			Outcome: &node.Outcome{Order: o.ID, Op: "update", State: node.Idle, From: from, To: o.Target.Version, Bytes: updateBytes}}, nil)
		a.rest = fleet.Report{State: node.Idle, Log: append(log, o.ID+": done")}
		a.report(ctx, a.rest)
	}
}

func mustParse(s string) chunk.ID { id, _ := chunk.Parse(s); return id }

// advance lets agent a take n steps of its update.
func (a *pageAgent) advance(t *testing.T, n int) {
	t.Helper()
	for range n {
		select {
		case a.gate <- struct{}{}:
		case <-time.After(20 * time.Second):
			t.Fatalf("agent %s took no step in 20 s (no order?)", a.name)
		}
	}
}

// servePage runs sim serve on store at addr (fixed, so a restart keeps
// the page's URL) and returns the process once it serves.
func servePage(t *testing.T, store, addr string, extra ...string) *exec.Cmd {
	t.Helper()
	c := simProcess(append([]string{"--store", store, "serve", "--listen", addr, "--no-bittorrent"}, extra...)...)
	stderr, _ := c.StderrPipe()
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Process.Signal(syscall.SIGTERM); c.Wait() })
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		if strings.Contains(sc.Text(), "serving") {
			go func() {
				for sc.Scan() {
				}
			}()
			return c
		}
	}
	t.Fatal("sim serve did not start")
	return nil
}

func chromium(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("no chromium (apt-get install chromium; make deps does): the fleet page's browser test skips")
	return ""
}

// pageRow is a node's row as the page shows it.
type pageRow struct {
	Name, State, Commit string
	Bytes               int64
}

// pageView is what the test reads off the page.
type pageView struct {
	Rows     []pageRow
	Rollouts map[string]string // id → state
	Buttons  []string          // data-act/data-rollout of the action buttons
	Role     string
	Conn     string
	Server   string
	Marker   int // set once after loading: a reload would lose it
	DrawMs   float64
	Armed    string // the text of an armed (pressed once) button
	Problem  string
}

const readPage = `(() => ({
  Rows: [...document.querySelectorAll('#rows tr.node')].map(tr => ({
    Name: tr.dataset.node, State: tr.dataset.state,
    Commit: tr.children[6].textContent,
    Bytes: Number((tr.querySelector('.progress') || {dataset: {bytes: -1}}).dataset.bytes)})),
  Rollouts: Object.fromEntries([...document.querySelectorAll('#rollouts .rollout')].map(r => [r.dataset.rollout, r.dataset.rstate])),
  Buttons: [...document.querySelectorAll('button[data-act]')].map(b => b.dataset.act + (b.dataset.revert ? '+revert' : '') + ' ' + b.dataset.rollout),
  Role: document.getElementById('role').textContent,
  Conn: document.getElementById('conn').dataset.conn,
  Server: document.getElementById('server').textContent,
  Marker: window.simTestMarker || 0,
  DrawMs: Number(document.documentElement.dataset.drawMs || 0),
  Armed: (document.querySelector('button.armed') || {textContent: ''}).textContent,
  Problem: document.getElementById('problem').hidden ? '' : document.getElementById('problem').textContent,
}))()`

// TestFleetPage: headless Chromium opens the fleet page of a real sim
// serve while a rollout of six nodes runs (agents speaking the real
// protocol over loopback): the rows appear, states and progress change
// without a reload, there are no action buttons without the admin token
// (anonymous or a read token), there are with it, pressing abort aborts
// the rollout, and the page reconnects by itself to a restarted server;
// 500 more nodes show; on a server with closed reads the page asks for a
// token and works with a read token. Everything the page loads comes
// from the server. With SIM_SCREENSHOT=FILE (make screenshot) a
// screenshot of the rollout mid-wave goes to FILE: the README's
// bench/monitor-page.png; a plain test run leaves the tree alone.
func TestFleetPage(t *testing.T) {
	chrome := chromium(t)
	st := newStore(t)
	src := filepath.Join(t.TempDir(), "src")
	writeFiles(t, src, map[string]string{"etc/motd": "v1\n", "usr/bin/tool": strings.Repeat("x", 50000)})
	ok(t, st, "commit", src, "--image", "deb", "-m", "v1")
	ok(t, st, "tag", "v1", "deb")
	writeFiles(t, src, map[string]string{"etc/motd": "v2\n"})
	ok(t, st, "commit", src, "--image", "deb", "-m", "v2")
	ok(t, st, "tag", "v2", "deb")
	v1 := head(t, st, "v1")
	ok(t, st, "group", "add", "compute", "--image", "deb")
	names := []string{"n1", "n2", "n3", "n4", "n5", "n6"}
	for i, n := range names {
		ok(t, st, "node", "add", n, "--group", "compute", "--mac", fmt.Sprintf("52:54:00:00:0e:%02x", i+1))
	}
	// Two nodes outside the rollout: one failed, with drift.
	ok(t, st, "group", "add", "login", "--image", "deb")
	ok(t, st, "node", "add", "l1", "--group", "login", "--mac", "52:54:00:00:0e:21")
	ok(t, st, "node", "add", "l2", "--group", "login", "--mac", "52:54:00:00:0e:22")
	readTok := lastLine(ok(t, st, "token", "add", "viewer", "--role", "read"))
	const adminTok = "page-admin-token"
	tokens := filepath.Join(t.TempDir(), "tokens")
	os.WriteFile(tokens, []byte(adminTok+"\n"), 0o600)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	url := "http://" + addr
	server := servePage(t, st, addr, "--token-file", tokens)

	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	agents := map[string]*pageAgent{}
	var wg gosync.WaitGroup
	for _, n := range names {
		a := &pageAgent{name: n, url: url, token: adminTok, image: "deb", current: v1, gate: make(chan struct{})}
		agents[n] = a
		wg.Add(1)
		go func() { defer wg.Done(); a.run(ctx) }()
	}
	const l1Error = "l1: health check failed: systemctl is-active slurmd: inactive"
	for _, a := range []*pageAgent{
		{name: "l1", rest: fleet.Report{State: node.Failed, LastError: l1Error, Drift: &node.DriftSummary{Time: time.Now().UTC(), Count: 3, Modified: 3},
			Log: []string{"l1: update to v1 failed", l1Error}}},
		{name: "l2", rest: fleet.Report{State: node.Idle, Drift: &node.DriftSummary{Time: time.Now().UTC()}}},
	} {
		a.url, a.token, a.image, a.current = url, adminTok, "deb", v1
		wg.Add(1)
		go func() { defer wg.Done(); a.run(ctx) }()
	}
	defer func() { stop(); wg.Wait() }()

	// The browser: headless, no sandbox (root in CI), its own profile.
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chrome), chromedp.NoSandbox,
		chromedp.WindowSize(1400, 900), chromedp.UserDataDir(t.TempDir()))
	actx, cancelA := chromedp.NewExecAllocator(ctx, opts...)
	defer cancelA()
	bctx, cancelB := chromedp.NewContext(actx)
	defer cancelB()
	var (
		mu       gosync.Mutex
		requests []string
		jsErrors []string
	)
	if err := chromedp.Listen(bctx, func(ev any) {
		mu.Lock()
		defer mu.Unlock()
		switch e := ev.(type) {
		case *network.EventRequestWillBeSent:
			requests = append(requests, e.Request.URL)
		case *runtime.EventExceptionThrown:
			d := e.ExceptionDetails
			msg := d.Text
			if d.Exception != nil && d.Exception.Description != "" {
				msg += " " + d.Exception.Description
			}
			jsErrors = append(jsErrors, fmt.Sprintf("%s:%d: %s", d.URL, d.LineNumber+1, msg))
		}
	}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := chromedp.Do(bctx, chromedp.Navigate(url+"/")); err != nil {
		t.Fatalf("open the page: %v", err)
	}
	t.Logf("chromium up, page loaded in %.1fs", time.Since(start).Seconds())
	eval := func(js string) {
		t.Helper()
		if _, err := chromedp.Run(bctx, chromedp.Evaluate[any](js)); err != nil {
			t.Fatalf("%s: %v", js, err)
		}
	}
	// wait reads the page until cond holds (the page changes only through
	// its event stream: nothing here reloads it).
	var view pageView
	wait := func(what string, cond func(v pageView) bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			v, err := chromedp.Run(bctx, chromedp.Evaluate[pageView](readPage))
			if err != nil {
				t.Fatalf("read the page: %v", err)
			}
			view = v
			if cond(v) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("page: %s: not within 20 s; it shows %+v", what, v)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	row := func(v pageView, name string) pageRow {
		for _, r := range v.Rows {
			if r.Name == name {
				return r
			}
		}
		return pageRow{}
	}

	wait("eight nodes: l1 failed (first), the others idle, assigned v2, on v1", func(v pageView) bool {
		if len(v.Rows) != len(names)+2 || v.Conn != "live" || v.Role == "" || v.Rows[0].Name != "l1" || v.Rows[0].State != node.Failed {
			return false
		}
		for _, r := range v.Rows[1:] {
			if r.State != node.Idle || !strings.Contains(r.Commit, "v2 → v1") {
				return false
			}
		}
		return true
	})
	// A click on a row shows the node's log; the group filter narrows.
	if err := chromedp.Do(bctx, chromedp.Click(chromedp.CSS(`tr.node[data-node="l1"]`))); err != nil {
		t.Fatal(err)
	}
	logRow := ""
	wait("l1's log row with its error", func(pageView) bool {
		logRow, _ = chromedp.Run(bctx, chromedp.Evaluate[string](`document.querySelector('tr.log[data-log-for="l1"]')?.textContent || ''`))
		return strings.Contains(logRow, l1Error) && strings.Contains(logRow, "update to v1 failed")
	})
	eval(`(s => { s.value = 'compute'; s.dispatchEvent(new Event('change')); })(document.getElementById('f-group'))`)
	wait("only the compute group", func(v pageView) bool { return len(v.Rows) == len(names) })
	eval(`(s => { s.value = ''; s.dispatchEvent(new Event('change')); })(document.getElementById('f-group'))`)
	eval(`window.simTestMarker = 7`)
	firstServer := view.Server
	if !strings.Contains(view.Role, "read") || len(view.Buttons) != 0 {
		t.Errorf("anonymous: role %q, buttons %v; want read and none", view.Role, view.Buttons)
	}

	rid := lastLine(ok(t, st, "rollout", "start", "v2", "--group", "compute", "--canary", "1", "--wave", "2"))
	wait("the rollout running, n1 updating from 0 bytes", func(v pageView) bool {
		return v.Rollouts[rid] == "running" && row(v, "n1").State == node.Updating && row(v, "n1").Bytes == 0
	})
	agents["n1"].advance(t, 4)
	wait("n1 at 40%", func(v pageView) bool { return row(v, "n1").Bytes == 4*updateBytes/updateSteps })
	agents["n1"].advance(t, updateSteps-4)
	wait("n1 done on v2, the next wave updating", func(v pageView) bool {
		n1 := row(v, "n1")
		return n1.State == node.Idle && strings.Contains(n1.Commit, "v2 ✓") &&
			row(v, "n2").State == node.Updating && row(v, "n3").State == node.Updating
	})
	agents["n2"].advance(t, 3)
	agents["n3"].advance(t, 7)
	wait("n2 at 30%, n3 at 70%", func(v pageView) bool {
		return row(v, "n2").Bytes == 3*updateBytes/updateSteps && row(v, "n3").Bytes == 7*updateBytes/updateSteps
	})
	if view.Marker != 7 {
		t.Fatal("the page was reloaded")
	}
	if len(view.Buttons) != 0 {
		t.Errorf("buttons without the admin token: %v", view.Buttons)
	}

	// A read token: the page says so, still no actions.
	setToken := func(tok string) {
		t.Helper()
		if err := chromedp.Do(bctx, chromedp.SendKeys(chromedp.CSS("#token"), tok), chromedp.Click(chromedp.CSS(`#tokenform button[type="submit"]`))); err != nil {
			t.Fatalf("enter a token: %v", err)
		}
	}
	setToken(readTok)
	wait("the read token's role", func(v pageView) bool { return strings.Contains(v.Role, "viewer: read") && v.Conn == "live" })
	if len(view.Buttons) != 0 {
		t.Errorf("buttons with a read token: %v", view.Buttons)
	}
	setToken(adminTok)
	wait("the admin's buttons", func(v pageView) bool {
		return strings.Contains(v.Role, "admin") && strings.Contains(strings.Join(v.Buttons, ","), "abort "+rid)
	})
	if want := []string{"pause " + rid, "abort " + rid, "abort+revert " + rid}; strings.Join(view.Buttons, ",") != strings.Join(want, ",") {
		t.Errorf("admin buttons %v; want %v", view.Buttons, want)
	}
	// The picture for the README: the rollout mid-wave, bars half full.
	shot, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	if len(shot) < 1000 || !bytes.HasPrefix(shot, []byte("\x89PNG")) {
		t.Errorf("screenshot: %d bytes, not a PNG", len(shot))
	}
	if f := os.Getenv("SIM_SCREENSHOT"); f != "" {
		if err := os.WriteFile(f, shot, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot: %s (%d bytes)", f, len(shot))
	}

	// Abort: pressed twice (the first press arms it).
	abort := chromedp.CSS(`button[data-act="abort"][data-rollout="` + rid + `"]:not([data-revert])`)
	if err := chromedp.Do(bctx, chromedp.Click(abort)); err != nil {
		t.Fatal(err)
	}
	wait("the abort button armed", func(v pageView) bool { return v.Armed == "abort "+rid+"?" && v.Rollouts[rid] == "running" })
	if err := chromedp.Do(bctx, chromedp.Click(abort)); err != nil {
		t.Fatal(err)
	}
	wait("the rollout aborted", func(v pageView) bool { return v.Rollouts[rid] == "aborted" })
	var status struct{ State string }
	decodeJSON(t, ok(t, st, "rollout", "status", rid, "--json"), &status)
	if status.State != "aborted" {
		t.Errorf("after the page's abort the server says %s is %s", rid, status.State)
	}

	// The server restarts: the page finds it again by itself, with the
	// new run's snapshot.
	server.Process.Signal(syscall.SIGTERM)
	server.Wait()
	wait("the page noticing", func(v pageView) bool { return v.Conn != "live" })
	servePage(t, st, addr, "--token-file", tokens)
	wait("the page back on the new server run", func(v pageView) bool {
		return v.Conn == "live" && v.Server != firstServer && len(v.Rows) == len(names)+2 && v.Rollouts[rid] == "aborted"
	})
	if view.Marker != 7 {
		t.Fatal("the page was reloaded")
	}

	// 500 more nodes report at once (one event each): the page keeps up
	// (it draws at most once a frame) and its filters still work.
	const many = 500
	t0 := time.Now()
	var rw gosync.WaitGroup
	for w := range 10 {
		rw.Add(1)
		go func() {
			defer rw.Done()
			for i := w; i < many; i += 10 {
				a := &pageAgent{name: fmt.Sprintf("s%03d", i), url: url, token: adminTok, image: "deb", current: v1}
				state := node.Idle
				if i%50 == 0 {
					state = node.Failed
				}
				a.report(ctx, fleet.Report{State: state})
			}
		}()
	}
	rw.Wait()
	posted := time.Since(t0)
	wait("508 rows", func(v pageView) bool { return len(v.Rows) == len(names)+2+many })
	shown, drawMs := time.Since(t0), view.DrawMs
	// One node changing among 508: only its row is rebuilt.
	(&pageAgent{name: "s007", url: url, token: adminTok, image: "deb", current: v1}).report(ctx,
		fleet.Report{State: node.Updating, Phase: "staging", Bytes: 1000, Total: 2000})
	wait("s007 updating", func(v pageView) bool { return row(v, "s007").State == node.Updating })
	oneMs := view.DrawMs
	eval(`(s => { s.value = 'failed'; s.dispatchEvent(new Event('change')); })(document.getElementById('f-state'))`)
	wait("the 11 failed nodes", func(v pageView) bool { return len(v.Rows) == 1+many/50 })
	t.Logf("%d nodes reported in %.2fs; the page showed all %d rows %.2fs after the first report (that draw: %.1f ms; one node changing: %.1f ms)",
		many, posted.Seconds(), len(names)+2+many, shown.Seconds(), drawMs, oneMs)

	// A server whose reads are closed: the page, served without a token,
	// says what it needs; with a read token it shows the fleet.
	st2 := newStore(t)
	read2 := lastLine(ok(t, st2, "token", "add", "viewer", "--role", "read"))
	l, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr2 := l.Addr().String()
	l.Close()
	url2 := "http://" + addr2
	servePage(t, st2, addr2, "--token-file", tokens, "--read-token")
	c1 := &pageAgent{name: "c1", url: url2, token: adminTok, image: "deb"}
	if _, err := c1.do(ctx, "POST", "/v1/agent/report", fleet.Report{Node: "c1", State: node.Idle}, nil); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(bctx, chromedp.Navigate(url2+"/")); err != nil {
		t.Fatalf("open the closed server's page: %v", err)
	}
	wait("the page asking for a token", func(v pageView) bool {
		return v.Conn == "offline" && strings.Contains(v.Problem, "needs a read token") && len(v.Rows) == 0
	})
	setToken(read2)
	wait("c1 with the read token", func(v pageView) bool {
		return v.Conn == "live" && len(v.Rows) == 1 && v.Rows[0].Name == "c1" && strings.Contains(v.Role, "viewer: read") && len(v.Buttons) == 0
	})

	mu.Lock()
	defer mu.Unlock()
	for _, u := range requests {
		if !strings.HasPrefix(u, url+"/") && !strings.HasPrefix(u, url2+"/") && !strings.HasPrefix(u, "data:") {
			t.Errorf("the page fetched %s: not from its server", u)
		}
	}
	if len(jsErrors) > 0 {
		t.Errorf("JavaScript errors: %v", jsErrors)
	}
	t.Logf("%d requests, all to %s or %s; whole test %.1fs", len(requests), url, url2, time.Since(start).Seconds())
}

func isDir(p string) bool { fi, err := os.Stat(p); return err == nil && fi.IsDir() }

// TestServeNoUI: sim serve serves the fleet page at / unless --no-ui;
// the API it reads stays either way.
func TestServeNoUI(t *testing.T) {
	st := newStore(t)
	for _, c := range []struct {
		flags []string
		page  int
	}{{nil, http.StatusOK}, {[]string{"--no-ui"}, http.StatusNotFound}} {
		url, srv := startServerProcess(t, st, append([]string{"--no-bittorrent"}, c.flags...)...)
		for path, want := range map[string]int{"/": c.page, "/ui/app.js": c.page, "/v1/monitor": http.StatusOK} {
			resp, err := http.Get(url + path)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != want {
				t.Errorf("serve %v: GET %s: %s; want %d", c.flags, path, resp.Status, want)
			}
		}
		srv.Process.Signal(syscall.SIGTERM)
		srv.Wait()
	}
}

// TestServeSwarmFigures: sim serve hands its seeder's swarms to the live
// view: once a node asks for a commit's torrent, GET /v1/monitor lists
// it (and the multicast sessions, none yet, as an empty list).
func TestServeSwarmFigures(t *testing.T) {
	st := newStore(t)
	src := filepath.Join(t.TempDir(), "src")
	writeFiles(t, src, map[string]string{"etc/motd": "v1\n", "usr/bin/tool": strings.Repeat("y", 300000)})
	id := lastLine(ok(t, st, "commit", src, "--image", "deb"))
	url, _ := startServerProcess(t, st, "--bt-listen", "127.0.0.1:0")
	resp, err := http.Get(url + "/v1/bt/torrent?want=" + id)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/bt/torrent: %s", resp.Status)
	}
	var snap struct {
		Torrents []struct {
			Want  string
			Bytes int64
		}
		Sessions []any
	}
	resp, err = http.Get(url + "/v1/monitor")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&snap); err != nil {
		t.Fatal(err)
	}
	if len(snap.Torrents) != 1 || snap.Torrents[0].Want != id || snap.Torrents[0].Bytes == 0 || snap.Sessions == nil {
		t.Errorf("monitor's swarms: %+v; want one torrent of %s and an empty list of sessions", snap, id)
	}
}
