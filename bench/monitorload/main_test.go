package main

import (
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/systemimager/sim/client/fleet"
	"github.com/systemimager/sim/client/metrics"
	"github.com/systemimager/sim/client/monitor"
	"github.com/systemimager/sim/store/storetest"
	simsync "github.com/systemimager/sim/sync"
)

// TestRun: a small load against a real server (in this process, so its
// CPU is this process's): every state change arrives on the event stream,
// no report fails, the scrapes succeed, the CPU is measured.
func TestRun(t *testing.T) {
	st := storetest.New(t)
	fl := fleet.New(st, nil)
	t.Cleanup(fl.Close)
	srv := &simsync.Server{Store: st, WriteTokens: []string{"adm"}, PrivateReads: true}
	fl.Mount(srv)
	(&monitor.Monitor{Fleet: fl, Server: srv}).Mount(srv)
	(&metrics.Metrics{Fleet: fl}).Mount(t.Context(), srv)
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	tok := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tok, []byte("adm\n"), 0o600)

	res, err := run(t.Context(), []string{"-url", hs.URL, "-token-file", tok, "-pid", strconv.Itoa(os.Getpid()),
		"-agents", "20", "-every", "200ms", "-duration", "1s", "-scrape", "300ms"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", *res)
	if res.ReportErrors != 0 || res.FirstError != "" {
		t.Errorf("%d report errors (%s); want none", res.ReportErrors, res.FirstError)
	}
	if res.Changes < 20 || res.ChangesSeen != res.Changes {
		t.Errorf("%d of %d state changes seen on the stream; want all of at least 20", res.ChangesSeen, res.Changes)
	}
	if res.LatencyMaxms <= 0 || res.LatencyP95ms > res.LatencyMaxms {
		t.Errorf("latency p95 %v max %v ms; want 0 < p95 ≤ max", res.LatencyP95ms, res.LatencyMaxms)
	}
	if res.Scrapes == 0 || res.ScrapeSeries < 20 {
		t.Errorf("%d scrapes of %d series; want some, with every agent's node", res.Scrapes, res.ScrapeSeries)
	}
	if res.ServerCPUSecs <= 0 {
		t.Errorf("server CPU %v s; want it measured", res.ServerCPUSecs)
	}
	if n, _ := fl.State("load0020"); n.State != fleet.Idle && n.State != fleet.Updating {
		t.Errorf("load0020 is %q on the server; want idle or updating", n.State)
	}
}
