package metrics

import (
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/systemimager/sim/client/fleet"
	"github.com/systemimager/sim/client/rollout"
	"github.com/systemimager/sim/sync/bt"
	"github.com/systemimager/sim/sync/mcast"
)

// What a scrape reads from the live state.
var (
	dNodes       = desc("sim_nodes", "Nodes the server knows, by state (installing, updating, idle, failed, offline, rolled-back, partial, unknown).", "state")
	dLastSeen    = desc("sim_node_last_seen_age_seconds", "Seconds since the node last said anything (nodes never heard of have none).", "node")
	dNodeInfo    = desc("sim_node_info", "Always 1: the node's image, the image commit it runs (current) and the one the server assigns it (assigned).", "node", "image", "current", "assigned")
	dNodeBytes   = desc("sim_node_received_bytes", "Bytes the node reported receiving in its current or last install or update.", "node")
	dOutdated    = desc("sim_nodes_outdated", "Nodes whose current commit is not the one the server assigns them.")
	dSent        = desc("sim_transport_sent_bytes_total", "Object bytes the server sent, by transport: http (fetch and objects streams, blobs, commits, packs), bittorrent (to peers and from the web seed), multicast (datagrams).", "transport")
	dRecv        = desc("sim_server_received_bytes_total", "Wire bytes of pushes the server received.")
	dFetches     = desc("sim_server_fetches_total", "GET /v1/fetch streams served.")
	dPushes      = desc("sim_server_pushes_total", "POST /v1/push streams received.")
	dEvents      = desc("sim_events_published_total", "Events the fleet's hub published (one per change of a node or a rollout).")
	dRollouts    = desc("sim_rollouts", "Rollouts in the store, by state (running, paused, halted, done, aborted).", "state")
	dRollNodes   = desc("sim_rollout_nodes", "Nodes of each running, paused or halted rollout, by their state in it.", "rollout", "state")
	dRollProg    = desc("sim_rollout_progress_ratio", "Share of a running, paused or halted rollout's nodes that are through (done, failed or rolled back).", "rollout")
	dRollWave    = desc("sim_rollout_wave", "The wave a running, paused or halted rollout is at (0: the canary; waves when all are done).", "rollout")
	dRollWaves   = desc("sim_rollout_waves", "How many waves the rollout has.", "rollout")
	dRollFail    = desc("sim_rollout_failures", "Nodes that failed or rolled back in the rollout.", "rollout")
	dTorrents    = desc("sim_bittorrent_torrents", "Torrents the server seeds.")
	dPeers       = desc("sim_bittorrent_peers", "Peers connected to the server's seeder now (summed over torrents).")
	dTracked     = desc("sim_bittorrent_tracked_peers", "Peers announced to the server's tracker (summed over torrents).")
	dBTUp        = desc("sim_bittorrent_uploaded_bytes_total", "Payload bytes the seeder sent to peers.")
	dMcSessions  = desc("sim_multicast_sessions", "Multicast sessions the server holds (active, and the last finished), by state.", "state")
	dMcSent      = desc("sim_multicast_sent_bytes_total", "Bytes of multicast datagrams sent.")
	dMcDatagrams = desc("sim_multicast_datagrams_total", "Multicast datagrams sent.")
	dMcRepairs   = desc("sim_multicast_repair_passes_total", "Repair passes (every pass after a session's first) multicast sessions made.")
	dMcLoss      = desc("sim_multicast_loss_ratio", "Mean datagram loss its receivers reported, by session.", "session")
	dMcRecv      = desc("sim_multicast_receivers", "Receivers of the sessions not done yet, by state (registered, receiving, done, dropped, gone).", "state")
	dStoreBytes  = desc("sim_store_size_bytes", "Bytes of the store's packs.")
	dStorePacks  = desc("sim_store_packs", "Packs in the store.")
	dStoreBlobs  = desc("sim_store_blobs", "Blobs (trees and chunks) in the store's index.")
	dStoreImages = desc("sim_store_images", "Images (branches) in the store.")
	dStoreTags   = desc("sim_store_tags", "Tags in the store.")
	dScrapeErr   = desc("sim_metrics_errors", "Parts of this scrape that could not be read (see the server's log), by part.", "part")
)

// names are the sim_ metrics this package exports (Names).
var names = []string{"sim_http_requests_total", "sim_http_request_duration_seconds", "sim_http_response_bytes_total",
	"sim_install_duration_seconds", "sim_update_duration_seconds"}

func desc(name, help string, labels ...string) *prometheus.Desc {
	names = append(names, name)
	return prometheus.NewDesc(name, help, labels, nil)
}

// Names are the names of every sim_ metric GET /metrics may carry;
// some only while what they measure exists (a rollout running, a
// multicast session with receivers, a node heard of).
func Names() []string { return slices.Sorted(slices.Values(names)) }

var allDescs = []*prometheus.Desc{dNodes, dLastSeen, dNodeInfo, dNodeBytes, dOutdated, dSent, dRecv, dFetches, dPushes,
	dEvents, dRollouts, dRollNodes, dRollProg, dRollWave, dRollWaves, dRollFail, dTorrents, dPeers, dTracked, dBTUp,
	dMcSessions, dMcSent, dMcDatagrams, dMcRepairs, dMcLoss, dMcRecv, dStoreBytes, dStorePacks, dStoreBlobs, dStoreImages,
	dStoreTags, dScrapeErr}

// Every state a series is always exported for, at 0 when none is in it:
// a dashboard's panel has its lines from the start.
var (
	nodeStates    = []string{fleet.Installing, fleet.Updating, fleet.Idle, fleet.Failed, fleet.Offline, fleet.RolledBack, fleet.Partial, fleet.Unknown}
	rolloutStates = []string{rollout.Running, rollout.Paused, rollout.Halted, rollout.Done, rollout.Aborted}
	rollNodeState = []string{rollout.Pending, rollout.Staging, rollout.Applying, rollout.Checking, rollout.NodeDone, rollout.NodeFailed, rollout.RolledBack}
	mcastStates   = []string{"waiting", "sending", "collecting", "done"}
)

// collector reads the live state at scrape time.
type collector Metrics

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
}

func gauge(d *prometheus.Desc, v float64, labels ...string) prometheus.Metric {
	return prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

func counter(d *prometheus.Desc, v float64, labels ...string) prometheus.Metric {
	return prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	m := (*Metrics)(c)
	errs := map[string]float64{"store": 0, "rollouts": 0}
	if m.Fleet != nil {
		c.nodes(ch)
		ch <- counter(dEvents, float64(m.Fleet.Hub().Seq()))
		c.rollouts(ch, errs)
	}
	st := m.Server.Stats()
	// The seeder and the manager are asked before the lock: Observe, on
	// every request's way out, waits for it.
	seeder, mg := m.seeder(), m.multicast()
	var ts []bt.TorrentStatus
	if seeder != nil {
		ts = seeder.Status()
	}
	var ss []mcast.SessionInfo
	if mg != nil {
		ss = mg.Sessions()
	}
	var out []prometheus.Metric
	m.mu.Lock()
	httpB := float64(st.BytesOut + m.mu.packBytes)
	btB := float64(m.mu.seedBytes)
	var mcB float64
	if seeder != nil {
		up := map[string]float64{}
		peers, tracked := 0, 0
		for _, t := range ts {
			up[t.InfoHash] = float64(t.Uploaded)
			peers += t.Peers
			tracked += t.Tracked
		}
		u := m.mu.btUp.sum(up)
		btB += u
		out = append(out, gauge(dTorrents, float64(len(ts))), gauge(dPeers, float64(peers)),
			gauge(dTracked, float64(tracked)), counter(dBTUp, u))
	}
	if mg != nil {
		var mo []prometheus.Metric
		mo, mcB = c.multicast(ss)
		out = append(out, mo...)
	}
	m.mu.Unlock()
	for _, x := range out {
		ch <- x
	}
	ch <- counter(dSent, httpB, "http")
	ch <- counter(dSent, btB, "bittorrent")
	ch <- counter(dSent, mcB, "multicast")
	ch <- counter(dRecv, float64(st.BytesIn))
	ch <- counter(dFetches, float64(st.Fetches))
	ch <- counter(dPushes, float64(st.Pushes))
	c.store(ch, errs)
	for part, n := range errs {
		ch <- gauge(dScrapeErr, n, part)
	}
}

func (c *collector) nodes(ch chan<- prometheus.Metric) {
	now := time.Now()
	by := map[string]int{}
	outdated := 0
	for _, n := range c.Fleet.Nodes() {
		by[n.State]++
		if !n.LastSeen.IsZero() {
			ch <- gauge(dLastSeen, now.Sub(n.LastSeen).Seconds(), n.Name)
		}
		ch <- gauge(dNodeInfo, 1, n.Name, n.Image, n.Current, n.Assigned)
		ch <- gauge(dNodeBytes, float64(n.Bytes), n.Name)
		if n.Assigned != "" && n.Current != n.Assigned {
			outdated++
		}
	}
	for _, s := range nodeStates {
		ch <- gauge(dNodes, float64(by[s]), s)
		delete(by, s)
	}
	for s, n := range by { // a state this package does not know yet
		ch <- gauge(dNodes, float64(n), s)
	}
	ch <- gauge(dOutdated, float64(outdated))
}

func (c *collector) rollouts(ch chan<- prometheus.Metric, errs map[string]float64) {
	all, err := rollout.List(c.Fleet.Store.Dir())
	if err != nil {
		c.Log.Printf("metrics: rollouts: %v", err)
		errs["rollouts"]++
	}
	by := map[string]int{}
	for _, r := range all {
		if c.Rollouts != nil {
			if cur, err := c.Rollouts.Get(r.ID); err == nil {
				r = cur
			}
		}
		by[r.State]++
		if r.State != rollout.Running && r.State != rollout.Paused && r.State != rollout.Halted {
			continue
		}
		counts := r.Counts()
		through := counts[rollout.NodeDone] + counts[rollout.NodeFailed] + counts[rollout.RolledBack]
		for _, s := range rollNodeState {
			ch <- gauge(dRollNodes, float64(counts[s]), r.ID, s)
		}
		prog := 0.0
		if len(r.Nodes) > 0 {
			prog = float64(through) / float64(len(r.Nodes))
		}
		ch <- gauge(dRollProg, prog, r.ID)
		ch <- gauge(dRollWave, float64(r.Wave), r.ID)
		ch <- gauge(dRollWaves, float64(len(r.Waves)), r.ID)
		ch <- gauge(dRollFail, float64(r.Failures), r.ID)
	}
	for _, s := range rolloutStates {
		ch <- gauge(dRollouts, float64(by[s]), s)
	}
}

// multicast is the sessions' figures and their bytes sent (the caller
// holds m.mu: the sums are kept across scrapes).
func (c *collector) multicast(ss []mcast.SessionInfo) ([]prometheus.Metric, float64) {
	var out []prometheus.Metric
	sent, dgrams, repairs := map[string]float64{}, map[string]float64{}, map[string]float64{}
	states, recv := map[string]int{}, map[string]int{}
	for _, s := range ss {
		sent[s.ID], dgrams[s.ID] = float64(s.SentBytes), float64(s.Datagrams)
		repairs[s.ID] = float64(max(s.Pass-1, 0))
		states[s.State]++
		if len(s.Members) > 0 {
			var loss float64
			for _, mb := range s.Members {
				loss += mb.LossPct / 100
			}
			out = append(out, gauge(dMcLoss, loss/float64(len(s.Members)), s.ID))
		}
		if s.State != "done" {
			for _, mb := range s.Members {
				recv[mb.State]++
			}
		}
	}
	for _, s := range mcastStates {
		out = append(out, gauge(dMcSessions, float64(states[s]), s))
	}
	for _, s := range []string{"registered", "receiving", "done", "dropped", "gone"} {
		out = append(out, gauge(dMcRecv, float64(recv[s]), s))
	}
	b := c.mu.mcSent.sum(sent)
	out = append(out, counter(dMcSent, b), counter(dMcDatagrams, c.mu.mcDatagrams.sum(dgrams)),
		counter(dMcRepairs, c.mu.mcRepairs.sum(repairs)))
	return out, b
}

func (c *collector) store(ch chan<- prometheus.Metric, errs map[string]float64) {
	st := c.Server.Store
	n, err := st.Count()
	if err == nil {
		ch <- gauge(dStoreBytes, float64(n.PackBytes))
		ch <- gauge(dStorePacks, float64(n.Packs))
		ch <- gauge(dStoreBlobs, float64(n.Blobs))
	}
	ims, ierr := st.Images()
	if ierr == nil {
		ch <- gauge(dStoreImages, float64(len(ims)))
	}
	tags, terr := st.Tags()
	if terr == nil {
		ch <- gauge(dStoreTags, float64(len(tags)))
	}
	for _, e := range []error{err, ierr, terr} {
		if e != nil {
			c.Log.Printf("metrics: store: %v", e)
			errs["store"]++
		}
	}
}
