// Package transports links in every transport sim ships, so that a
// program importing it (cmd/sim does) offers all of them to --transport
// and sim serve. A new transport is a package registering itself with
// sync.RegisterTransport, and one line here.
package transports

import (
	_ "github.com/systemimager/sim/sync/auto"     // auto
	_ "github.com/systemimager/sim/sync/bt"       // bittorrent
	_ "github.com/systemimager/sim/sync/httppull" // http
	_ "github.com/systemimager/sim/sync/mcast"    // multicast
)
