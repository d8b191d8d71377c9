package main

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
)

// A transport moves objects from a server's store into a node's: HTTP
// (the server streams them), BitTorrent (the nodes swap them) or IP
// multicast (the server sends them once to a group). Each lives in its
// own file and registers itself in init, with its own flags, so the
// commands that fetch (checkout --from, pull) offer all of them through
// one --transport flag.
type transport interface {
	// flags adds the transport's own options to a command.
	flags(c *cobra.Command)
	// open returns what fetches objects for st from the server r names.
	// Refs and commits always come from r (HTTP); the transport carries
	// the objects, and FetchCommit fills whatever it did not deliver
	// through r's Objects. finish runs after the fetch succeeded and
	// before the checkout (e.g. a BitTorrent node keeps seeding there, in
	// the background); it may be nil.
	open(ctx context.Context, e *env, st *store.Store, r *simsync.Remote) (tr simsync.Transport, finish func(context.Context) error, err error)
}

type transportKind struct {
	name, help string
	new        func() transport
}

var transportKinds = map[string]transportKind{}

func registerTransport(k transportKind) { transportKinds[k.name] = k }

func init() {
	registerTransport(transportKind{name: "http", help: "stream from the server (the default)", new: func() transport { return httpTransport{} }})
}

type httpTransport struct{}

func (httpTransport) flags(*cobra.Command) {}
func (httpTransport) open(_ context.Context, _ *env, _ *store.Store, r *simsync.Remote) (simsync.Transport, func(context.Context) error, error) {
	return r, nil, nil
}

// transportFlags is --transport and every transport's own flags.
type transportFlags struct {
	name  string
	all   map[string]transport
	names []string // of all, sorted
}

func (f *transportFlags) add(c *cobra.Command) {
	f.all = map[string]transport{}
	f.names = nil
	for n := range transportKinds {
		f.names = append(f.names, n)
	}
	sort.Strings(f.names)
	var help []string
	for _, n := range f.names {
		t := transportKinds[n].new()
		f.all[n] = t
		t.flags(c)
		help = append(help, n+": "+transportKinds[n].help)
	}
	c.Flags().StringVar(&f.name, "transport", "http", "how objects travel: `NAME` ("+strings.Join(help, "; ")+")")
}

// open opens the chosen transport for a fetch from r into st.
func (f *transportFlags) open(ctx context.Context, e *env, st *store.Store, r *simsync.Remote) (simsync.Transport, func(context.Context) error, error) {
	t, ok := f.all[f.name]
	if !ok {
		return nil, nil, usageError{fmt.Errorf("unknown transport %q (have %s)", f.name, strings.Join(f.names, ", "))}
	}
	return t.open(ctx, e, st, r)
}

// A serveExtension runs inside sim serve beside the HTTP API: the
// BitTorrent seeder and tracker, the multicast session manager. Each
// registers itself in init with its own flags.
type serveExtension interface {
	flags(c *cobra.Command)
	// start brings the extension up; it may mount handlers on srv.Extra
	// (before the server starts serving) and run goroutines until ctx
	// ends. url is the server's own base URL as nodes reach it when
	// --listen names an address, else "". stop is called on shutdown.
	start(ctx context.Context, e *env, st *store.Store, srv *simsync.Server, url string) (stop func(), err error)
}

var serveExtensions []func() serveExtension

func registerServeExtension(f func() serveExtension) { serveExtensions = append(serveExtensions, f) }
