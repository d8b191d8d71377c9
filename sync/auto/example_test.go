package auto_test

import (
	"fmt"

	"github.com/systemimager/sim/sync/auto"
)

// The lab of bench/fleetbench.sh at 50 nodes: a 1 Gbit/s server, nodes
// on 100 Mbit/s, all in network namespaces on one 2-core machine
// with the server (sim serve --auto-uplink 1Gbit --auto-node-rate 100Mbit
// --auto-node-cores 2 --auto-shared-host), installing a 65 MB image.
func ExampleChoose() {
	c := auto.Choose(auto.Inputs{Bytes: 65e6, Nodes: 50, Uplink: 125e6, NodeUplink: 12.5e6, NodeCores: 2, SharedHost: true,
		Available: []string{auto.BitTorrent, auto.Multicast}})
	fmt.Println(c.Transport)
	fmt.Println(c.Reason)
	// The README's example: 16 nodes with their own CPUs behind 10 Gbit/s.
	c = auto.Choose(auto.Inputs{Bytes: 65.2e6, Nodes: 16, Uplink: 1.25e9, Available: []string{auto.BitTorrent, auto.Multicast}})
	fmt.Println(c.Transport)
	fmt.Println(c.Reason)
	// Output:
	// multicast
	// 50 nodes asking for 65.0 MB at 1 Gbit/s, nodes at 100 Mbit/s, sharing 2 cores with the server: predicted multicast 27.3 s (cpu-bound), http 38.2 s (cpu-bound), bittorrent 42.9 s (cpu-bound)
	// http
	// 16 nodes asking for 65.2 MB at 10 Gbit/s: predicted http 1.0 s (cpu-bound), multicast 2.0 s (cpu-bound), bittorrent 3.6 s (cpu-bound)
}
