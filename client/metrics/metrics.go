package metrics

import (
	"context"
	"io"
	"log"
	"strconv"
	"strings"
	gosync "sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/systemimager/sim/client/fleet"
	"github.com/systemimager/sim/client/rollout"
	simsync "github.com/systemimager/sim/sync"
	"github.com/systemimager/sim/sync/bt"
	"github.com/systemimager/sim/sync/mcast"
)

// Metrics is the metrics of one sim serve.
type Metrics struct {
	Server *simsync.Server
	Fleet  *fleet.Service
	// Rollouts, when set, gives running rollouts' freshest state (else
	// their files are read).
	Rollouts *rollout.Engine
	// Services are sim serve's running services by name: "bittorrent"
	// (the seeder) and "multicast" (*mcast.Manager) add their figures.
	Services map[string]simsync.Service
	Log      *log.Logger

	reg *prometheus.Registry

	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	respB    *prometheus.CounterVec
	install  *prometheus.HistogramVec
	update   *prometheus.HistogramVec

	mu tally
}

// tally holds what Observe and the scrape share.
type tally struct {
	gosync.Mutex
	// packBytes and seedBytes are the response bytes of GET
	// /v1/packs/{id} (HTTP transport) and of the web seed (BitTorrent).
	packBytes, seedBytes int64
	// Sums over torrents and sessions, which come and go.
	btUp, mcSent, mcDatagrams, mcRepairs running
}

// Route patterns whose bytes count for a transport besides the API's
// own streams.
const (
	packRoute    = "GET /v1/packs/{id}"
	webSeedRoute = "GET " + bt.Prefix + "seed/"
)

// Mount registers everything, counts srv's requests (srv.Observe) and
// serves GET /metrics on srv as a read (the read token when reads are
// closed). The durations of installs and updates are taken from the
// fleet's events until ctx ends.
func (m *Metrics) Mount(ctx context.Context, srv *simsync.Server) {
	if m.Server == nil {
		m.Server = srv
	}
	if m.Log == nil {
		m.Log = log.New(io.Discard, "", 0)
	}
	reg := prometheus.NewRegistry()
	m.reg = reg
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sim_http_requests_total",
		Help: "HTTP requests answered, by route (the ServeMux pattern; none: no route matched) and status code."}, []string{"route", "code"})
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "sim_http_request_duration_seconds",
		Help:    "Time to answer an HTTP request, by route (streams and long polls last as long as they stream or wait).",
		Buckets: []float64{.001, .005, .01, .05, .1, .5, 1, 5, 30, 120, 600}}, []string{"route"})
	m.respB = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sim_http_response_bytes_total",
		Help: "Bytes of HTTP response bodies sent, by route."}, []string{"route"})
	m.install = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "sim_install_duration_seconds",
		Help:    "Time from a node's first install status to its last, by outcome (done, failed).",
		Buckets: []float64{10, 30, 60, 120, 300, 600, 1200, 1800, 3600}}, []string{"outcome"})
	m.update = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "sim_update_duration_seconds",
		Help:    "Time from an update order sent (or a node reporting updating) to its end, by outcome (done, failed, rolled-back, partial).",
		Buckets: []float64{1, 2, 5, 10, 30, 60, 120, 300, 600, 1800}}, []string{"outcome"})
	for _, o := range []string{"done", "failed"} {
		m.install.WithLabelValues(o)
	}
	for _, o := range []string{"done", "failed", "rolled-back"} {
		m.update.WithLabelValues(o)
	}
	reg.MustRegister(m.requests, m.duration, m.respB, m.install, m.update, (*collector)(m))

	prev := srv.Observe
	srv.Observe = func(pattern string, status int, bytes int64, d time.Duration) {
		if prev != nil {
			prev(pattern, status, bytes, d)
		}
		m.observe(pattern, status, bytes, d)
	}
	srv.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: m.Log}))
	if m.Fleet != nil {
		sub := m.Fleet.Hub().Subscribe(4096)
		go m.follow(ctx, sub)
	}
}

// Registry is where every metric is (for tests and embedding).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

func (m *Metrics) observe(pattern string, status int, bytes int64, d time.Duration) {
	route := pattern
	if route == "" {
		route = "none"
	}
	m.requests.WithLabelValues(route, strconv.Itoa(status)).Inc()
	m.duration.WithLabelValues(route).Observe(d.Seconds())
	m.respB.WithLabelValues(route).Add(float64(bytes))
	switch {
	case pattern == packRoute:
		m.mu.Lock()
		m.mu.packBytes += bytes
		m.mu.Unlock()
	case strings.HasPrefix(pattern, webSeedRoute):
		m.mu.Lock()
		m.mu.seedBytes += bytes
		m.mu.Unlock()
	}
}

// running sums per-item counters whose items come and go (torrents
// retired, sessions forgotten): an item that is gone keeps the last
// value seen, so the sum never goes down. One that restarts under the
// same key counts as a new item.
type running struct {
	last map[string]float64
	gone float64
}

func (r *running) sum(cur map[string]float64) float64 {
	for k, v := range r.last {
		if now, ok := cur[k]; !ok || now < v {
			r.gone += v
		}
	}
	r.last = cur
	t := r.gone
	for _, v := range cur {
		t += v
	}
	return t
}

// seeder is the BitTorrent seeder of sim serve, if it runs.
func (m *Metrics) seeder() *bt.Seeder {
	if s, ok := m.Services["bittorrent"].(interface{ Seeder() *bt.Seeder }); ok {
		return s.Seeder()
	}
	return nil
}

// multicast is the multicast manager of sim serve, if it runs.
func (m *Metrics) multicast() *mcast.Manager {
	mg, _ := m.Services["multicast"].(*mcast.Manager)
	return mg
}

// follow times installs and updates from the fleet's node events until
// ctx ends. A subscription that falls behind loses events: a duration
// whose start or end was lost is not observed (never a wrong one).
func (m *Metrics) follow(ctx context.Context, sub *fleet.Subscription) {
	defer sub.Close()
	type run struct {
		update bool
		start  time.Time
	}
	runs := map[string]run{}
	for {
		var e fleet.Event
		select {
		case <-ctx.Done():
			return
		case e = <-sub.C:
		}
		if e.Missed > 0 {
			clear(runs)
		}
		n := e.Node
		if e.Type != "node" || n == nil {
			continue
		}
		r, busy := runs[n.Name]
		switch {
		case n.State == fleet.Installing:
			if !busy || r.update {
				runs[n.Name] = run{false, e.Time}
			}
		case n.State == fleet.Updating || (n.Order != "" && orderKind(n.Order) == fleet.OrderUpdate):
			if !busy || !r.update {
				runs[n.Name] = run{true, e.Time}
			}
		case !busy || n.State == fleet.Offline:
			// Silent for a while: it may come back to finish.
		case n.Order == "" || !r.update:
			outcome := n.State
			if outcome == fleet.Idle {
				outcome = "done"
			}
			d := e.Time.Sub(r.start).Seconds()
			if r.update {
				m.update.WithLabelValues(outcome).Observe(d)
			} else {
				m.install.WithLabelValues(outcome).Observe(d)
			}
			delete(runs, n.Name)
		}
	}
}

// orderKind is the kind an order id names: ROLLOUT.NODE.KINDn.
func orderKind(id string) string {
	k := id[strings.LastIndexByte(id, '.')+1:]
	return strings.TrimRight(k, "0123456789")
}
