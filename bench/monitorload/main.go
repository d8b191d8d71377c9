// Command monitorload is the load of bench/monitorbench.sh: N simulated
// agents speaking the real agent protocol of client/fleet to a running
// sim serve over HTTP (each holds its long poll for orders open, as sim
// agent does, and POSTs a report every -every), while one client holds
// GET /v1/events open. It measures the server process's CPU from
// /proc/PID/stat over the measured window and the latency from a report
// that changes a node's state to that change arriving on the event
// stream, and prints one JSON document.
//
//	monitorload register -store DIR -agents N -image NAME   (before the server starts)
//	monitorload run -url URL -token-file F -pid PID [-agents N] [-every 10s] [-duration 60s]
//
// Agents authenticate with the admin token of -token-file (sim serve
// --token-file), which may act for any node, so the load runs whether or
// not the agent endpoints take node tokens.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	gosync "sync"
	"sync/atomic"
	"time"

	"github.com/systemimager/sim/client/catalog"
	"github.com/systemimager/sim/client/fleet"
	"github.com/systemimager/sim/client/metrics"
	"github.com/systemimager/sim/store"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: monitorload register|run [flags]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	var err error
	switch os.Args[1] {
	case "register":
		err = register(ctx, os.Args[2:])
	case "run":
		var res *Result
		if res, err = run(ctx, os.Args[2:]); err == nil {
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			err = enc.Encode(res)
		}
	default:
		err = fmt.Errorf("unknown command %q: want register or run", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "monitorload:", err)
		os.Exit(1)
	}
}

func nodeName(i int) string { return fmt.Sprintf("load%04d", i+1) }

// register writes N nodes into the store's registry in one commit (sim
// node add would make one commit per node), so the server's listings
// join reports with registered nodes as on a real site.
func register(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("register", flag.ContinueOnError)
	dir := fs.String("store", "", "the store `DIR` (no server may hold it)")
	n := fs.Int("agents", 1000, "nodes to register")
	image := fs.String("image", "", "their image")
	if err := fs.Parse(args); err != nil {
		return err
	}
	st, err := store.Open(*dir)
	if err != nil {
		return err
	}
	defer st.Close()
	reg, err := catalog.LoadRegistry(st)
	if err != nil {
		return err
	}
	for i := 0; i < *n; i++ {
		if err := reg.AddNode(&catalog.Node{Name: nodeName(i), Image: *image, Groups: []string{"load"}}); err != nil {
			return err
		}
	}
	_, err = reg.Save(ctx, st, fmt.Sprintf("monitorload: %d nodes", *n))
	return err
}

// Result is what run prints.
type Result struct {
	Agents         int     `json:"agents"`
	EverySeconds   float64 `json:"every_s"`
	WindowSeconds  float64 `json:"window_s"`
	Reports        int64   `json:"reports"`
	ReportErrors   int64   `json:"report_errors"`
	FirstError     string  `json:"first_error,omitempty"`
	ReportsPerSec  float64 `json:"reports_per_s"`
	Polls          int64   `json:"polls"`
	Changes        int     `json:"changes"`
	ChangesSeen    int     `json:"changes_seen"`
	Events         int64   `json:"events"`
	Snapshots      int64   `json:"snapshots"`
	LatencyP50ms   float64 `json:"latency_p50_ms"`
	LatencyP95ms   float64 `json:"latency_p95_ms"`
	LatencyMaxms   float64 `json:"latency_max_ms"`
	AllP95ms       float64 `json:"all_reports_latency_p95_ms"`
	Scrapes        int     `json:"scrapes"`
	ScrapeMaxms    float64 `json:"scrape_max_ms"`
	ScrapeBytes    int     `json:"scrape_bytes"`
	ScrapeSeries   int     `json:"scrape_series"`
	ServerCPUSecs  float64 `json:"server_cpu_s"`
	ServerCores    float64 `json:"server_cores"`
	ServerRSSMB    float64 `json:"server_rss_mb"`
	ServerPeakRSSM float64 `json:"server_peak_rss_mb"`
}

// sent is a report sent: when, and whether it changed the node's state.
type sent struct {
	at     time.Time
	change bool
	inWin  bool
}

type key struct {
	node  string
	bytes int64
}

func run(ctx context.Context, args []string) (*Result, error) {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	url := fs.String("url", "http://127.0.0.1:7480", "the server")
	tokenFile := fs.String("token-file", "", "an admin token `FILE` (first line)")
	pid := fs.Int("pid", 0, "the server's process id (its CPU is measured)")
	n := fs.Int("agents", 1000, "simulated agents")
	every := fs.Duration("every", 10*time.Second, "each agent reports this often")
	window := fs.Duration("duration", 60*time.Second, "the measured window, after every agent started")
	changeEvery := fs.Int("change-every", 3, "every Nth report of an agent changes its state (idle ↔ updating)")
	poll := fs.Bool("poll", true, "hold each agent's long poll for orders open, as sim agent does")
	scrapeEvery := fs.Duration("scrape", 15*time.Second, "GET /metrics this often, as Prometheus would (0: never)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if *pid <= 0 {
		return nil, errors.New("-pid: the server's process id is needed")
	}
	token := ""
	if *tokenFile != "" {
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			return nil, err
		}
		token, _, _ = strings.Cut(strings.TrimSpace(string(b)), "\n")
	}
	tr := &http.Transport{MaxIdleConns: 4 * *n, MaxIdleConnsPerHost: 4 * *n, IdleConnTimeout: time.Minute}
	hc := &http.Client{Transport: tr}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var (
		mu      gosync.Mutex
		pending = map[key]sent{}
		lat     []float64 // state changes in the window, ms
		all     []float64 // every report in the window, ms
		seen    int
		res     = Result{Agents: *n, EverySeconds: every.Seconds(), WindowSeconds: window.Seconds()}
	)
	var reports, errs, polls, events, snaps atomic.Int64
	var firstErr atomic.Value

	// The open page: GET /v1/events, read as a browser's EventSource would.
	req, _ := http.NewRequestWithContext(ctx, "GET", *url+"/v1/events", nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET /v1/events: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /v1/events: %s", resp.Status)
	}
	streamDone := make(chan error, 1)
	go func() {
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 64<<20)
		var typ string
		for sc.Scan() {
			l := sc.Bytes()
			switch {
			case bytes.HasPrefix(l, []byte("event: ")):
				typ = string(l[7:])
			case bytes.HasPrefix(l, []byte("data: ")):
				now := time.Now()
				switch typ {
				case "snapshot":
					snaps.Add(1)
				case "node":
					events.Add(1)
					var msg struct {
						Node *fleet.NodeState `json:"node"`
					}
					if json.Unmarshal(l[6:], &msg) != nil || msg.Node == nil {
						continue
					}
					k := key{msg.Node.Name, msg.Node.Bytes}
					mu.Lock()
					if s, ok := pending[k]; ok {
						delete(pending, k)
						ms := float64(now.Sub(s.at).Microseconds()) / 1000
						if s.inWin {
							all = append(all, ms)
							if s.change {
								lat = append(lat, ms)
								seen++
							}
						}
					}
					mu.Unlock()
				}
			}
		}
		streamDone <- sc.Err()
	}()

	post := func(rep *fleet.Report) error {
		b, _ := json.Marshal(rep)
		req, _ := http.NewRequestWithContext(ctx, "POST", *url+"/v1/agent/report", bytes.NewReader(b))
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			return fmt.Errorf("POST /v1/agent/report: %s", resp.Status)
		}
		return nil
	}
	longPoll := func(name string) {
		for ctx.Err() == nil {
			req, _ := http.NewRequestWithContext(ctx, "GET", *url+"/v1/agent/orders?wait=25&node="+name, nil)
			if token != "" {
				req.Header.Set("Authorization", "Bearer "+token)
			}
			resp, err := hc.Do(req)
			if err != nil {
				if ctx.Err() == nil {
					time.Sleep(time.Second)
				}
				continue
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			polls.Add(1)
		}
	}

	// Prometheus, when it scrapes.
	scrapeDone := make(chan struct{})
	go func() {
		defer close(scrapeDone)
		if *scrapeEvery <= 0 {
			return
		}
		t := time.NewTicker(*scrapeEvery)
		defer t.Stop()
		for {
			select {
			case <-t.C:
			case <-ctx.Done():
				return
			}
			t0 := time.Now()
			m, err := metrics.Get(ctx, *url, token)
			if err != nil {
				if ctx.Err() == nil {
					firstErr.CompareAndSwap(nil, err.Error())
				}
				continue
			}
			ms := float64(time.Since(t0).Microseconds()) / 1000
			series := 0
			for _, f := range m.Families {
				series += len(f.GetMetric())
			}
			mu.Lock()
			res.Scrapes++
			res.ScrapeMaxms = max(res.ScrapeMaxms, ms)
			res.ScrapeBytes, res.ScrapeSeries = len(m.Text), series
			mu.Unlock()
		}
	}()

	start := time.Now()
	winStart := start.Add(*every) // every agent has started by then
	winEnd := winStart.Add(*window)
	var wg gosync.WaitGroup
	for i := 0; i < *n; i++ {
		name := nodeName(i)
		offset := time.Duration(int64(*every) * int64(i) / int64(*n))
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-time.After(offset):
			case <-ctx.Done():
				return
			}
			if *poll {
				go longPoll(name)
			}
			t := time.NewTicker(*every)
			defer t.Stop()
			state := fleet.Idle
			for k := int64(1); ; k++ {
				change := k > 1 && *changeEvery > 0 && k%int64(*changeEvery) == 0
				if change {
					if state == fleet.Idle {
						state = fleet.Updating
					} else {
						state = fleet.Idle
					}
				}
				rep := &fleet.Report{Node: name, State: state, Image: "deb", Bytes: k, Transport: "http"}
				if state == fleet.Updating {
					rep.Phase = "staging"
				}
				now := time.Now()
				if now.After(winEnd) {
					return
				}
				mu.Lock()
				pending[key{name, k}] = sent{at: now, change: change, inWin: now.After(winStart)}
				mu.Unlock()
				if err := post(rep); err != nil {
					if ctx.Err() != nil {
						return
					}
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				} else {
					reports.Add(1)
				}
				select {
				case <-t.C:
				case <-ctx.Done():
					return
				}
			}
		}()
	}

	// The server's CPU over the window.
	if err := sleepUntil(ctx, winStart); err != nil {
		return nil, err
	}
	cpu0, err := cpuSeconds(*pid)
	if err != nil {
		return nil, err
	}
	r0 := reports.Load()
	t0 := time.Now()
	if err := sleepUntil(ctx, winEnd); err != nil {
		return nil, err
	}
	cpu1, err := cpuSeconds(*pid)
	if err != nil {
		return nil, err
	}
	el := time.Since(t0).Seconds()
	res.WindowSeconds = el
	res.ServerCPUSecs = cpu1 - cpu0
	res.ServerCores = res.ServerCPUSecs / el
	res.ReportsPerSec = float64(reports.Load()-r0) / el
	res.ServerRSSMB, res.ServerPeakRSSM = rss(*pid)
	// The last reports' events: give them a few seconds to arrive.
	wg.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		mu.Lock()
		left := 0
		for _, s := range pending {
			if s.inWin && s.change {
				left++
			}
		}
		mu.Unlock()
		if left == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	<-scrapeDone
	select {
	case <-streamDone:
	case <-time.After(2 * time.Second):
	}
	mu.Lock()
	defer mu.Unlock()
	res.Reports, res.ReportErrors, res.Polls, res.Events, res.Snapshots = reports.Load(), errs.Load(), polls.Load(), events.Load(), snaps.Load()
	if e, ok := firstErr.Load().(string); ok {
		res.FirstError = e
	}
	res.ChangesSeen = seen
	for _, s := range pending {
		if s.inWin && s.change {
			res.Changes++ // never arrived
		}
	}
	res.Changes += seen
	res.LatencyP50ms, res.LatencyP95ms, res.LatencyMaxms = quantile(lat, 0.5), quantile(lat, 0.95), quantile(lat, 1)
	res.AllP95ms = quantile(all, 0.95)
	return &res, nil
}

func sleepUntil(ctx context.Context, t time.Time) error {
	select {
	case <-time.After(time.Until(t)):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// cpuSeconds is utime+stime of process pid (/proc/PID/stat fields 14
// and 15, in clock ticks of 1/100 s on Linux).
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("server process: %w", err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: utime %q stime %q", pid, f[11], f[12])
	}
	return (ut + st) / 100, nil
}

// rss is the process's resident and peak resident memory, MB.
func rss(pid int) (now, peak float64) {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 {
			v, _ := strconv.ParseFloat(f[1], 64)
			switch f[0] {
			case "VmRSS:":
				now = v / 1024
			case "VmHWM:":
				peak = v / 1024
			}
		}
	}
	return now, peak
}

// quantile of xs (q = 1: the maximum); 0 for none.
func quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	i := int(q*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}
