package sync

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	gosync "sync"

	"github.com/spf13/pflag"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store"
)

// A Transport delivers in bulk the objects a store lacks of one commit:
// the HTTP stream of sim serve (sync/httppull), a BitTorrent swarm of the
// nodes (sync/bt), a multicast session (sync/mcast), or anything else a
// package registers. Refs and commits always come from the server over
// HTTP (Remote); a transport carries the trees and chunks.
//
// A transport writes nothing itself: every object goes into the Sink it
// is given, which verifies and stores it. It may deliver less than the
// whole commit, even nothing: FetchCommit then asks the server for exactly
// what is still missing, so a transport can make a fetch faster but never
// makes it fail for lack of data.
type Transport interface {
	// Deliver puts into sink what a store holding the have commits lacks
	// of commit want. haves[0], when there is one, is what the target
	// directory has checked out: the best base for a delta. An error
	// wrapping ErrTruncated means it delivered part (FetchCommit fetches
	// the rest over HTTP); any other error ends the fetch.
	Deliver(ctx context.Context, want chunk.ID, haves []chunk.ID, sink *Sink) (Delivery, error)
	// Finish is called once, after the fetched commit was used (checked
	// out) or the fetch failed. A transport may go on serving its peers
	// until its own linger time has passed or ctx ends; then it releases
	// everything (listeners, spools).
	Finish(ctx context.Context) error
	// String names the transport and its source in messages.
	String() string
}

// Delivery is what one Deliver did.
type Delivery struct {
	// WireBytes is what the transport received (payload bytes from the
	// network, whatever the protocol).
	WireBytes int64
	// Report holds the transport's own figures for --json output (a
	// swarm's pieces and peers, a session's loss and passes), or nil.
	Report any
}

// ChosenReport is the Report of a transport that chose another to deliver
// (sync/auto): --json shows Choice under "auto" and Inner, the chosen
// transport's own figures, under the chosen one's name, as if it had been
// named on the command line.
type ChosenReport struct {
	Choice any
	Inner  any
}

// TransportEnv is what a transport is opened with.
type TransportEnv struct {
	// Remote is the server the commit comes from.
	Remote *Remote
	// Store is the receiving store, for reading what is there already;
	// writes go through the Sink that Deliver gets.
	Store *store.Store
	// Log gets progress lines for a person (a terminal: lines rewritten
	// in place are fine when Terminal); JSON asks for JSON lines instead.
	Log      io.Writer
	Terminal bool
	JSON     bool
	// Name is this node's name, for transports that register with the
	// server (default: the host name).
	Name string
	// Open opens another transport of the same command line by name,
	// with its flags as given (set by TransportFlags): for a transport
	// that chooses among the others (sync/auto).
	Open func(ctx context.Context, name string) (Transport, error)
}

// TransportConfig is one command line's configuration of a transport:
// its flags, then Open.
type TransportConfig interface {
	// Flags adds the transport's own options (each prefixed with the
	// transport's short name, e.g. --bt-listen) to fs.
	Flags(fs *pflag.FlagSet)
	// Open returns the transport for one fetch. A bad flag value is a
	// *FlagError.
	Open(ctx context.Context, env TransportEnv) (Transport, error)
}

// ServeConfig is a transport's side inside sim serve (a seeder, a session
// manager): its flags, then Start.
type ServeConfig interface {
	Flags(fs *pflag.FlagSet)
	// Start brings the service up on srv (mounting handlers with
	// srv.Handle before the server starts serving) and runs it until ctx
	// ends or Close. It returns nil, nil when the service is switched off
	// by its flags. A bad flag value is a *FlagError.
	Start(ctx context.Context, env ServeEnv) (Service, error)
}

// ServeEnv is what a serve side starts with.
type ServeEnv struct {
	Server *Server
	// BaseURL is the server's own URL as nodes reach it, when --listen
	// names an address; else "".
	BaseURL string
	// Log gets the service's messages (sim serve's log).
	Log io.Writer
}

// Service is a running serve side.
type Service interface {
	Close()
}

// TransportKind is a registered transport.
type TransportKind struct {
	// Name is what --transport takes; Help one line about it.
	Name, Help string
	// Node makes a fresh node-side configuration; Serve, if not nil, a
	// fresh server-side one.
	Node  func() TransportConfig
	Serve func() ServeConfig
}

var registry struct {
	gosync.Mutex
	kinds map[string]TransportKind
}

// RegisterTransport makes a transport available to --transport and, with
// a Serve side, to sim serve. Transports register in their package's init
// (as database/sql drivers do); registering a name twice panics.
func RegisterTransport(k TransportKind) {
	registry.Lock()
	defer registry.Unlock()
	if registry.kinds == nil {
		registry.kinds = map[string]TransportKind{}
	}
	if _, dup := registry.kinds[k.Name]; dup {
		panic("sync: transport " + k.Name + " registered twice")
	}
	registry.kinds[k.Name] = k
}

// Transports lists the registered transports by name.
func Transports() []TransportKind {
	registry.Lock()
	defer registry.Unlock()
	out := make([]TransportKind, 0, len(registry.kinds))
	for _, k := range registry.kinds {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// ErrUnknownTransport is returned for a --transport name nobody registered.
var ErrUnknownTransport = errors.New("unknown transport")

// FlagError is a bad value of a command-line flag: the command line is
// wrong, not the operation.
type FlagError struct {
	Flag, Value string
	Err         error
}

func (e *FlagError) Error() string {
	if e.Value != "" {
		return "--" + e.Flag + " " + e.Value + ": " + e.Err.Error()
	}
	return "--" + e.Flag + ": " + e.Err.Error()
}
func (e *FlagError) Unwrap() error { return e.Err }

// TransportFlags is --transport NAME with every registered transport's
// own flags, for a command that fetches objects.
type TransportFlags struct {
	name  string
	cfgs  map[string]TransportConfig
	names []string
}

// DefaultTransport is the transport used without --transport.
const DefaultTransport = "http"

// Add adds the flags to fs.
func (f *TransportFlags) Add(fs *pflag.FlagSet) {
	f.cfgs = map[string]TransportConfig{}
	f.names = nil
	var help []string
	for _, k := range Transports() {
		c := k.Node()
		c.Flags(fs)
		f.cfgs[k.Name] = c
		f.names = append(f.names, k.Name)
		help = append(help, k.Name+": "+k.Help)
	}
	fs.StringVar(&f.name, "transport", DefaultTransport, "how objects travel: `NAME` ("+strings.Join(help, "; ")+")")
}

// Name is the chosen transport's name.
func (f *TransportFlags) Name() string { return f.name }

// Open opens the chosen transport.
func (f *TransportFlags) Open(ctx context.Context, env TransportEnv) (Transport, error) {
	return f.OpenNamed(ctx, f.name, env)
}

// OpenNamed opens transport name with its flags as given: for a daemon
// whose orders name the transport of each fetch (sim agent).
func (f *TransportFlags) OpenNamed(ctx context.Context, name string, env TransportEnv) (Transport, error) {
	c, ok := f.cfgs[name]
	if !ok {
		return nil, &FlagError{Flag: "transport", Value: name, Err: fmt.Errorf("%w (have %s)", ErrUnknownTransport, strings.Join(f.names, ", "))}
	}
	chooser := name
	env.Open = func(ctx context.Context, other string) (Transport, error) {
		if other == chooser {
			return nil, fmt.Errorf("transport %s cannot open itself", other)
		}
		e := env
		e.Open = nil
		return f.OpenNamed(ctx, other, e)
	}
	return c.Open(ctx, env)
}

// Names lists the registered transports' names.
func (f *TransportFlags) Names() []string { return append([]string(nil), f.names...) }
