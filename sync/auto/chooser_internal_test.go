package auto

import "testing"

// TestServiceChooses: a rollout's --transport auto goes through sim
// serve's advisor, so it weighs the uplink, node links, shared cores and
// learned costs the advisor was given, not the model's bare defaults.
func TestServiceChooses(t *testing.T) {
	// 4 nodes fetching 65 MB on 10 Gbit: the network says HTTP (0.2 s);
	// sharing one core with the server, their CPU says multicast.
	a := &Advisor{Uplink: 1.25e9, NodeCores: 1, SharedHost: true}
	var ch Chooser = service{a}
	all := []string{Multicast, BitTorrent}
	if got := ch.Choose(65e6, 4, all); got.Transport != Multicast {
		t.Errorf("4 nodes sharing 1 core with the server: %s (%s); want multicast (their CPU decides)", got.Transport, got.Reason)
	}
	if got := Choose(Inputs{Bytes: 65e6, Nodes: 4, Uplink: 1.25e9, Available: all}).Transport; got != HTTP {
		t.Errorf("the bare model, each node its own CPU: %s; want http", got)
	}
	a.SharedHost = false
	if got := ch.Choose(65e6, 4, all).Transport; got != HTTP {
		t.Errorf("advisor whose server is not on the nodes' core: %s; want http", got)
	}
	a.SharedHost = true
	if got := ch.Choose(65e6, 4, nil).Transport; got != HTTP {
		t.Errorf("no other transport running: %s; want http", got)
	}
}
