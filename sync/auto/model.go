// Package auto is the transport that chooses the others: `--transport
// auto` on a node asks the server (POST /v1/transport/advice) which
// transport to use for the fetch it is about to make, and the server
// answers from what it knows at that moment: how many nodes are asking for
// the same commit, how big the delta is, its uplink, which transports it
// runs, and what its multicast sessions have cost in repairs. The model is
// the one of the LinuxTag testbed (ARCHITECTURE.md "Transport auto"):
//
//	http (the rsync role)   max(N·F/Us, F/Uc)                  every node pulls its own copy
//	multicast               F/min(Us, Uc)·r + Tm               one copy, r = sent/bytes of past sessions
//	bittorrent              max(F/Us, F/Uc, N·F/(Us+N·Uc)) + Tb   Qiu–Srikant
//
// with F the delta one node lacks, N the nodes asking, Us the server's
// uplink, Uc a node's link (its upload and its download: taken equal to
// Us unless told), and Tm, Tb the fixed costs of starting a session or a
// swarm. No node receives faster than its own link (the F/Uc terms, and a
// multicast session is paced to the slowest receiver): without them a
// fast server with slow nodes sees HTTP N times too dear (4 nodes on 100
// Mbit behind 1 Gbit: the lab measured HTTP 5.5 s where N·F/Us said 2.1 s,
// and multicast chosen at 1.6 s took longer). The cheapest wins; a tie
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
	p := map[string]float64{HTTP: math.Max(n*f/us, floor)}
	for _, t := range in.Available {
		switch t {
		case Multicast:
			p[Multicast] = f/math.Min(us, uc)*r + ms.Seconds()
		case BitTorrent:
			p[BitTorrent] = math.Max(math.Max(f/us, floor), n*f/(us+n*uc)) + bs.Seconds()
		}
	}
	best := HTTP
	for _, t := range []string{Multicast, BitTorrent} {
		if v, ok := p[t]; ok && v < p[best] {
			best = t
		}
	}
	var parts []string
	names := make([]string, 0, len(p))
	for t := range p {
		names = append(names, t)
	}
	sort.Slice(names, func(i, j int) bool { return p[names[i]] < p[names[j]] })
	for _, t := range names {
		parts = append(parts, fmt.Sprintf("%s %.1f s", t, p[t]))
	}
	nodeLink := ""
	if in.NodeUplink > 0 {
		nodeLink = ", nodes at " + rate(uc)
	}
	node := "nodes"
	if in.Nodes == 1 {
		node = "node"
	}
	return Choice{Transport: best, Predicted: p,
		Reason: fmt.Sprintf("%d %s asking for %s at %s%s: predicted %s", max(in.Nodes, 1), node,
			human(f), rate(us), nodeLink, strings.Join(parts, ", "))}
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
