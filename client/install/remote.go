package install

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"time"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
)

// The install protocol, node side: ask who this machine is, report every
// step.

// Who identifies the installing machine to the server.
type Who struct {
	Node, MAC string
	// Image, if set, is installed instead of the node's own image.
	Image string
}

func (w Who) query() url.Values {
	q := url.Values{}
	for k, v := range map[string]string{"node": w.Node, "mac": w.MAC, "image": w.Image} {
		if v != "" {
			q.Set(k, v)
		}
	}
	return q
}

// GetConfig asks the server r what this machine gets. The network may
// still be settling right after DHCP: transient failures are retried for
// about half a minute.
func GetConfig(ctx context.Context, r *simsync.Remote, who Who) (*Config, error) {
	rr := r.Copy()
	rr.Retries = 5
	var cfg Config
	if err := rr.GetJSON(ctx, "/v1/install/config?"+who.query().Encode(), &cfg); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// PostStatus reports s to the server r. A server that cannot be reached
// does not stop the install (the console has the same lines): the error
// is only returned.
func PostStatus(ctx context.Context, r *simsync.Remote, s Status) error {
	rr := r.Copy()
	rr.Retries = 1
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	return rr.PostJSON(ctx, "/v1/install/status", s, nil)
}

// FromServer installs this machine from the server r as the netboot
// initrd does: it asks who this machine is, then runs Run, reporting
// every step to the server; failures before the install starts are
// reported too, so the server always learns why a node stopped. fetch
// brings a commit into the node's store through the caller's transport.
func FromServer(ctx context.Context, r *simsync.Remote, who Who, o Options, fetch func(ctx context.Context, st *store.Store, id chunk.ID) (simsync.PullStats, error)) (*Result, error) {
	report := func(s Status) { PostStatus(ctx, r, s) }
	cfg, err := GetConfig(ctx, r, who)
	if err != nil {
		err = fmt.Errorf("install: ask %s who this machine is (%s): %w", r.URL, who.query().Encode(), err)
		report(Status{Node: who.Node, MAC: who.MAC, Image: who.Image, Step: "config", State: Failed, Message: err.Error(), Time: time.Now().UTC()})
		return nil, err
	}
	// The node's own token: the one the server minted for it, else the
	// boot token if it is this node's own already (a per-node initrd's,
	// or sim.token= of a node token naming it). Never a shared one: a
	// boot token left on every node would let each speak for all.
	o.Token = cfg.Token
	if o.Token == "" && r.Token != "" && cfg.Node != "" {
		var p simsync.Principal
		if err := r.GetJSON(ctx, "/v1/whoami", &p); err == nil && p.Role == simsync.RoleNode && p.Node == cfg.Node {
			o.Token = r.Token
		}
	}
	if o.Token != "" && o.Token != r.Token {
		// The rest of the install reports as the node it now is.
		rr := r.Copy()
		rr.Token = o.Token
		report = func(s Status) { PostStatus(ctx, rr, s) }
	}
	o.Config, o.Server, o.Fetch, o.Report = cfg, r.URL, fetch, report
	if o.Log == nil {
		o.Log = io.Discard
	}
	return Run(ctx, o)
}
