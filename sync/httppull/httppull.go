// Package httppull is the HTTP transport (`--transport http`, the
// default): the node asks sim serve for one stream of everything it lacks
// of a commit, a delta on the commits it has (ARCHITECTURE.md "HTTP
// protocol"), and the sink stores it as it arrives. It is SystemImager's
// rsync role, without the per-file protocol: one request per update, and
// a response a plain HTTP cache can serve to every node making the same
// update.
//
// It registers itself with sync.RegisterTransport as "http".
package httppull

import (
	"context"

	"github.com/spf13/pflag"

	"github.com/systemimager/sim/chunk"
	simsync "github.com/systemimager/sim/sync"
)

func init() {
	simsync.RegisterTransport(simsync.TransportKind{
		Name: "http", Help: "one stream from the server (the default)",
		Node: func() simsync.TransportConfig { return config{} },
	})
}

type config struct{}

func (config) Flags(*pflag.FlagSet) {}

func (config) Open(_ context.Context, env simsync.TransportEnv) (simsync.Transport, error) {
	return &Transport{Remote: env.Remote}, nil
}

// Transport streams from the server.
type Transport struct {
	Remote *simsync.Remote
}

var _ simsync.Transport = (*Transport)(nil)

// Deliver asks for the stream of what a store with haves lacks of want.
func (t *Transport) Deliver(ctx context.Context, want chunk.ID, haves []chunk.ID, sink *simsync.Sink) (simsync.Delivery, error) {
	ds, err := t.Remote.Fetch(ctx, want, haves, sink)
	return simsync.Delivery{WireBytes: ds.WireBytes}, err
}

// Finish has nothing to release.
func (t *Transport) Finish(context.Context) error { return nil }

func (t *Transport) String() string { return "http" }
