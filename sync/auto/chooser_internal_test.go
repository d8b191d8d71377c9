package auto

import "testing"

// TestServiceChooses: a rollout's --transport auto goes through sim
// serve's advisor, so it weighs the uplink, node links, shared cores and
// learned costs the advisor was given, not the model's bare defaults.
func TestServiceChooses(t *testing.T) {
	a := &Advisor{Uplink: 125e6, NodeLink: 12.5e6, NodeCores: 2}
	var ch Chooser = service{a}
	all := []string{Multicast, BitTorrent}
	if got := ch.Choose(65e6, 50, all).Transport; got != HTTP {
		t.Errorf("50 nodes sharing 2 cores: %s; want http (their CPU decides)", got)
	}
	if got := Choose(Inputs{Bytes: 65e6, Nodes: 50, Uplink: 125e6, NodeUplink: 12.5e6, Available: all}).Transport; got != Multicast {
		t.Errorf("the same nodes with their own CPUs: %s; want multicast", got)
	}
	a.NodeCores = 0
	if got := ch.Choose(65e6, 50, all).Transport; got != Multicast {
		t.Errorf("advisor without shared cores: %s; want multicast", got)
	}
	if got := ch.Choose(65e6, 50, nil).Transport; got != HTTP {
		t.Errorf("no other transport running: %s; want http", got)
	}
}
