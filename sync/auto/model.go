// Package auto is the transport that chooses the others: `--transport
// auto` on a node asks the server (POST /v1/transport/advice) which
// transport to use for the fetch it is about to make, and the server
// answers from what it knows at that moment: how many nodes are asking for
// the same commit, how big the delta is, its uplink, which transports it
// runs, what its multicast sessions have cost in repairs, and what a fetch
// has cost the nodes in CPU (POST /v1/transport/report). The model is
// the one of the LinuxTag testbed (ARCHITECTURE.md "Transport auto"):
//
//	http (the rsync role)   max(N·F/Us, F/Uc, Kh)                        every node pulls its own copy
//	multicast               max(F/min(Us, Uc)·r, Km) + Tm                one copy, r = sent/bytes of past sessions
//	bittorrent              max(F/Us, F/Uc, N·F/(Us+N·Uc), Kb) + Tb      Qiu–Srikant
//
// with F the delta one node lacks, N the nodes asking, Us the server's
// uplink, Uc a node's link (its upload and its download: taken equal to
// Us unless told), and Tm, Tb the fixed costs of starting a session or a
// swarm. No node receives faster than its own link (the F/Uc terms, and a
// multicast session is paced to the slowest receiver): without them a
// fast server with slow nodes sees HTTP N times too dear (4 nodes on 100
// Mbit behind 1 Gbit: the lab measured HTTP 5.5 s where N·F/Us said 2.1 s,
// and multicast chosen at 1.6 s took longer).
//
// Kt is transport t's CPU floor: a node cannot finish before it has spent
// its CPU time on the fetch, c_t·F with c_t the CPU seconds a node spends
// per byte fetched over t (learned from the nodes' reports; until then
// DefaultCPUPerByte: 16 ns/B for http and multicast, 25 for
// bittorrent). Nodes sharing C cores (network namespaces or VMs on one
// host: sim serve --auto-node-cores) finish no sooner than all their CPU
// time spread over those cores, N·c_t·F/C (never less than c_t·F); when
// the server shares them too (--auto-shared-host), so does what its
// sending costs the host, s·S_t with S_t what it sends (N·F over HTTP,
// F·r by multicast, about 1.2·F as a swarm's origin): (N·c_t·F + s·S_t)/C.
// At 16 nodes on the lab's 2 cores HTTP's N·F/Us says 8.3 s, its CPU 12 s
// (measured 11.8 s). The cheapest wins; a tie
// goes to HTTP, which needs nothing but the server.
package auto

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"
)

// Names of the transports the model weighs (their --transport names).
const (
	HTTP       = "http"
	Multicast  = "multicast"
	BitTorrent = "bittorrent"
)

// Inputs is what a choice is made from.
type Inputs struct {
	Bytes int64 // F: what one node lacks (the plan's wire estimate)
	Nodes int   // N: nodes fetching the same commit together (>= 1)
	// Uplink is the server's uplink in bytes/s (Us); NodeUplink a node's
	// link, upload and download (Uc; 0: as Us).
	Uplink, NodeUplink float64
	// Available are the transports the server runs (http always).
	Available []string
	// McastOverhead is what multicast sent per byte delivered in recent
	// sessions (1 + the repairs' share; 0 or less: none seen, 1.15
	// assumed); McastStart and BTStart are the fixed costs.
	McastOverhead       float64
	McastStart, BTStart time.Duration
	// CPUPerByte is, per transport, the CPU seconds one node spends per
	// byte it fetches over it (c_t; missing or 0: DefaultCPUPerByte).
	CPUPerByte map[string]float64
	// NodeCores is how many cores the N nodes share (C; 0: each node has
	// its own CPU).
	NodeCores float64
	// SharedHost: the server runs on those NodeCores cores too (the lab,
	// or a server in a VM beside its nodes' VMs), so what its sending
	// costs the host comes out of the nodes' CPU: ServerCPUPerByte (0:
	// DefaultServerCPUPerByte) per byte the server sends.
	SharedHost       bool
	ServerCPUPerByte float64
}

// Choice is the model's answer: the transport, why, and the predicted
// time of each transport it weighed.
type Choice struct {
	Transport string             `json:"transport"`
	Reason    string             `json:"reason"`
	Predicted map[string]float64 `json:"predicted_seconds"`
}

// Default fixed costs: a multicast session waits for its receivers to
// register (sim serve's --mcast-wait is 3 s, but the advice holds the
// nodes together first, so the session starts with all of them: about a
// second of announcements and joins remains); a swarm derives its torrent,
// announces and connects (about 2 s in the lab).
const (
	DefaultMcastStart = 1 * time.Second
	DefaultBTStart    = 2 * time.Second
	// defaultMcastOverhead is the repairs at about 1% loss on 16 nodes
	// (bench/mcastresults.md): ~15% of the blocks sent again.
	defaultMcastOverhead = 1.15
)

// DefaultCPUPerByte is what a node spends in CPU seconds per byte fetched
// over transport t until nodes have reported: a lab node's own CPU
// installing a 65 MB image with 1 to 16 nodes on 2 cores
// (bench/fleetresults.md, 2026-12-06): HTTP 0.96–1.13 CPU-s, multicast
// 1.0–1.3, BitTorrent 1.4–1.9 (at 50 nodes every way cost 1.8–2.2: the
// contention of 50 processes on 2 cores, and the bench's 200 MiB memory
// limit).
func DefaultCPUPerByte(t string) float64 {
	switch t {
	case HTTP, Multicast:
		return 16e-9
	case BitTorrent:
		return 25e-9
	}
	return 0
}

// DefaultServerCPUPerByte is what a byte the server sends costs a host
// it shares with its nodes beyond the nodes' own processes: its HTTP
// handler, TCP on both ends, the virtual links and their shaping. The lab
// (16 nodes installing 65 MB over HTTP, 2 cores) spent 8 CPU-s outside the
// node processes for the 1.05 GB the server sent.
const DefaultServerCPUPerByte = 7.5e-9

// btOriginShare is what a swarm's origin sends per byte a node lacks
// with super-seeding (1.12–1.2 in the lab at 16 nodes).
const btOriginShare = 1.2

// CPUFloor is the least time a node needs for its CPU work on a fetch of
// f bytes at c CPU seconds per byte, n nodes sharing cores cores (0: each
// its own).
func CPUFloor(c, f float64, n int, cores float64) float64 {
	own := c * f
	if cores <= 0 {
		return own
	}
	return math.Max(own, float64(max(n, 1))*own/cores)
}

// Choose applies the model.
func Choose(in Inputs) Choice {
	n := float64(max(in.Nodes, 1))
	f := float64(max(in.Bytes, 0))
	us := in.Uplink
	if us <= 0 {
		us = 125e6 // 1 Gbit/s
	}
	uc := in.NodeUplink
	if uc <= 0 {
		uc = us
	}
	r := in.McastOverhead
	if r <= 0 {
		r = defaultMcastOverhead
	}
	ms, bs := in.McastStart, in.BTStart
	if ms <= 0 {
		ms = DefaultMcastStart
	}
	if bs <= 0 {
		bs = DefaultBTStart
	}
	// floor: no node receives its F faster than its own link
	floor := f / uc
	net := map[string]float64{HTTP: math.Max(n*f/us, floor)}
	start := map[string]float64{}
	for _, t := range in.Available {
		switch t {
		case Multicast:
			net[Multicast] = f / math.Min(us, uc) * r
			start[Multicast] = ms.Seconds()
		case BitTorrent:
			net[BitTorrent] = math.Max(math.Max(f/us, floor), n*f/(us+n*uc))
			start[BitTorrent] = bs.Seconds()
		}
	}
	// What the server sends for each: a copy per node, one session's
	// (with its repairs), the origin's share of a swarm.
	sent := map[string]float64{HTTP: n * f, Multicast: f * r, BitTorrent: f * math.Min(n, btOriginShare)}
	sc := in.ServerCPUPerByte
	if sc <= 0 {
		sc = DefaultServerCPUPerByte
	}
	p := map[string]float64{}
	netOnly := map[string]float64{}
	cpuBound := map[string]bool{}
	for t, v := range net {
		c := in.CPUPerByte[t]
		if c <= 0 {
			c = DefaultCPUPerByte(t)
		}
		k := CPUFloor(c, f, in.Nodes, in.NodeCores)
		if in.SharedHost && in.NodeCores > 0 {
			k = math.Max(k, (n*c*f+sc*sent[t])/in.NodeCores)
		}
		cpuBound[t] = k > v
		p[t] = math.Max(v, k) + start[t]
		netOnly[t] = v + start[t]
	}
	best, netBest := cheapest(p), cheapest(netOnly)
	var parts []string
	names := make([]string, 0, len(p))
	for t := range p {
		names = append(names, t)
	}
	sort.Slice(names, func(i, j int) bool {
		if p[names[i]] != p[names[j]] {
			return p[names[i]] < p[names[j]]
		}
		return names[i] < names[j]
	})
	for _, t := range names {
		part := fmt.Sprintf("%s %.1f s", t, p[t])
		if cpuBound[t] {
			part += " (cpu-bound)"
		}
		parts = append(parts, part)
	}
	nodeLink := ""
	if in.NodeUplink > 0 {
		nodeLink = ", nodes at " + rate(uc)
	}
	if in.NodeCores > 0 {
		cores := "cores"
		if in.NodeCores == 1 {
			cores = "core"
		}
		nodeLink += fmt.Sprintf(", sharing %g %s", in.NodeCores, cores)
		if in.SharedHost {
			nodeLink += " with the server"
		}
	}
	node := "nodes"
	if in.Nodes == 1 {
		node = "node"
	}
	reason := fmt.Sprintf("%d %s asking for %s at %s%s: predicted %s", max(in.Nodes, 1), node,
		human(f), rate(us), nodeLink, strings.Join(parts, ", "))
	if best != netBest {
		reason += fmt.Sprintf("; cpu-bound: the nodes' CPU decided (the network alone: %s %.1f s)", netBest, netOnly[netBest])
	}
	return Choice{Transport: best, Predicted: p, Reason: reason}
}

// cheapest is the transport of p predicted fastest; ties go to HTTP, then
// multicast.
func cheapest(p map[string]float64) string {
	best := HTTP
	for _, t := range []string{Multicast, BitTorrent} {
		if v, ok := p[t]; ok && v < p[best] {
			best = t
		}
	}
	return best
}

func human(b float64) string {
	switch {
	case b >= 1e9:
		return fmt.Sprintf("%.1f GB", b/1e9)
	case b >= 1e6:
		return fmt.Sprintf("%.1f MB", b/1e6)
	case b >= 1e3:
		return fmt.Sprintf("%.1f kB", b/1e3)
	}
	return fmt.Sprintf("%.0f B", b)
}

func rate(bps float64) string {
	bits := bps * 8
	if bits >= 1e9 {
		return fmt.Sprintf("%.3g Gbit/s", bits/1e9)
	}
	return fmt.Sprintf("%.3g Mbit/s", bits/1e6)
}
