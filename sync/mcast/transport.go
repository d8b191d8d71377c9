package mcast

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/url"
	"os"
	"time"

	"github.com/spf13/pflag"

	"github.com/systemimager/sim/chunk"
	simsync "github.com/systemimager/sim/sync"
	"github.com/systemimager/sim/sync/units"
)

// Multicast registers as "multicast": a node asks sim serve for the
// session of the commit it wants (POST /v1/mcast/open) and receives with
// the other nodes installing the same commit; sim serve runs the sessions
// (a Manager).
func init() {
	simsync.RegisterTransport(simsync.TransportKind{
		Name: "multicast", Help: "receive from a multicast session of the server with the other nodes installing the same REF; the rest over HTTP",
		Node:  func() simsync.TransportConfig { return &nodeFlags{} },
		Serve: func() simsync.ServeConfig { return &serveFlags{} },
	})
}

// SenderFlags are the sender options of sim serve (prefix "mcast-") and
// of sim multicast send (no prefix).
type SenderFlags struct {
	prefix             string
	group, rate, iface string
	fec                string
	wait               time.Duration
	minReceivers       int
	mtu, ttl, passes   int
}

// Add adds the flags to f, each name prefixed with prefix.
func (o *SenderFlags) Add(f *pflag.FlagSet, prefix string) {
	o.prefix = prefix
	f.StringVar(&o.group, prefix+"group", DefaultGroup, "multicast `ADDR:PORT` (sessions at once take the next addresses)")
	f.StringVar(&o.rate, prefix+"rate", "0", "cap the send `RATE` (200Mbit, 1Gbit, 25M = 25 MB/s; 0: as fast as the receivers' reports allow)")
	f.StringVar(&o.iface, prefix+"iface", "", "send on this `INTERFACE` (default: the one that routes to the receivers)")
	f.DurationVar(&o.wait, prefix+"wait", 3*time.Second, "how long a session takes registrations before sending")
	f.IntVar(&o.minReceivers, prefix+"min-receivers", 0, "start sending as soon as `N` receivers registered")
	f.IntVar(&o.mtu, prefix+"mtu", 0, "datagram size cap (default: the interface's MTU, jumbo frames included)")
	f.IntVar(&o.ttl, prefix+"ttl", 1, "multicast TTL (1: the local network)")
	f.IntVar(&o.passes, prefix+"passes", DefaultPasses, "passes at most: the first and the repairs; the rest goes over HTTP")
	f.StringVar(&o.fec, prefix+"fec", "auto", "forward error correction: `auto` (repair shards per 128 data blocks, sized to the loss the receivers report), off, or R/K (R repair shards per K data blocks, K up to 128, e.g. 6/128)")
}

// Config checks the flags and returns the Manager configuration; bad
// values are *sync.FlagError. Messages go to logw.
func (o *SenderFlags) Config(logw io.Writer, logPrefix string) (Config, error) {
	var cfg Config
	bad := func(flag, value string, err error) (Config, error) {
		return cfg, &simsync.FlagError{Flag: o.prefix + flag, Value: value, Err: err}
	}
	g, err := net.ResolveUDPAddr("udp4", o.group)
	if err != nil || g.IP == nil || !g.IP.IsMulticast() || g.Port == 0 {
		return bad("group", o.group, errors.New("want an IPv4 multicast ADDR:PORT"))
	}
	rate, err := units.ParseRate(o.rate)
	if err != nil {
		return bad("rate", "", err)
	}
	if rate != 0 && rate.Bits() < 8000 {
		return bad("rate", o.rate, errors.New("below 8kbit"))
	}
	if o.iface != "" {
		if cfg.Iface, err = net.InterfaceByName(o.iface); err != nil {
			return bad("iface", o.iface, err)
		}
	}
	switch {
	case o.mtu != 0 && (o.mtu < 576 || o.mtu > 9000):
		return bad("mtu", fmt.Sprint(o.mtu), errors.New("want 576..9000"))
	case o.ttl < 1 || o.ttl > 255:
		return bad("ttl", fmt.Sprint(o.ttl), errors.New("want 1..255"))
	case o.passes < 1 || o.passes > 100:
		return bad("passes", fmt.Sprint(o.passes), errors.New("want 1..100"))
	case o.minReceivers < 0:
		return bad("min-receivers", fmt.Sprint(o.minReceivers), errors.New("want 0 or more"))
	case o.wait < 0:
		return bad("wait", o.wait.String(), errors.New("want 0 or more"))
	}
	if cfg.FEC, err = ParseFEC(o.fec); err != nil {
		return bad("fec", o.fec, err)
	}
	cfg.Group, cfg.RateBits, cfg.Wait, cfg.MinReceivers = g, rate.Bits(), o.wait, o.minReceivers
	cfg.MTU, cfg.TTL, cfg.MaxPasses = o.mtu, o.ttl, o.passes
	cfg.Log = log.New(logw, logPrefix, log.LstdFlags)
	return cfg, nil
}

// serveFlags is sim serve's multicast side: the session manager.
type serveFlags struct {
	o    SenderFlags
	seal string
}

func (x *serveFlags) Flags(f *pflag.FlagSet) {
	x.o.Add(f, "mcast-")
	f.StringVar(&x.seal, "mcast-seal", "auto", "multicast: encrypt sessions: `auto` (when reads need a token: --read-token), on, off")
}

// Start runs the Manager; its handler answers /v1/mcast/. The Service is
// the *Manager (sim multicast send run inside the server opens sessions
// on it).
func (x *serveFlags) Start(_ context.Context, env simsync.ServeEnv) (simsync.Service, error) {
	cfg, err := x.o.Config(env.Log, "sim serve: ")
	if err != nil {
		return nil, err
	}
	switch x.seal {
	case "auto":
		// private reads: what is multicast is private too, and anyone
		// on the segment receives the group
		cfg.Sealed = env.Server.ReadsClosed()
	case "on":
		cfg.Sealed = true
	case "off":
	default:
		return nil, &simsync.FlagError{Flag: "mcast-seal", Value: x.seal, Err: errors.New("want auto, on or off")}
	}
	if cfg.Sealed {
		cfg.Log.Printf("multicast: sessions sealed (data encrypted; each session's key only in its document, behind the read token)")
	}
	m := NewManager(env.Server.Store, env.Server.Planner, cfg)
	m.Mount(env.Server)
	return m, nil
}

// nodeFlags is a node's --mcast-* options.
type nodeFlags struct {
	group, iface string
	timeout      time.Duration
}

func (t *nodeFlags) Flags(f *pflag.FlagSet) {
	f.StringVar(&t.group, "mcast-group", "", "multicast: listen on `ADDR:PORT` for a session announcing REF (sent by `sim multicast send`) instead of asking the server for one")
	f.StringVar(&t.iface, "mcast-iface", "", "multicast: receive on this `INTERFACE` (default: the one that routes to the server)")
	f.DurationVar(&t.timeout, "mcast-timeout", 15*time.Second, "multicast: give up (and fetch over HTTP) after this long without a datagram")
}

func (t *nodeFlags) Open(_ context.Context, env simsync.TransportEnv) (simsync.Transport, error) {
	n := &Node{Remote: env.Remote, Timeout: t.timeout, Name: env.Name, Log: env.Log, JSON: env.JSON}
	if t.group != "" {
		g, err := net.ResolveUDPAddr("udp4", t.group)
		if err != nil || !g.IP.IsMulticast() {
			return nil, &simsync.FlagError{Flag: "mcast-group", Value: t.group, Err: errors.New("want an IPv4 multicast ADDR:PORT")}
		}
		n.Group = g
	}
	if t.iface != "" {
		ifi, err := net.InterfaceByName(t.iface)
		if err != nil {
			return nil, &simsync.FlagError{Flag: "mcast-iface", Value: t.iface, Err: err}
		}
		n.Iface = ifi
	}
	if n.Name == "" {
		n.Name, _ = os.Hostname()
	}
	return n, nil
}

// Node is the multicast transport of a node (sync.Transport).
type Node struct {
	Remote *simsync.Remote
	// Group, if set, is listened on for the first session announcing the
	// wanted commit (one started by hand); else the server is asked.
	Group *net.UDPAddr
	// Iface receives; nil: the interface that routes to the server.
	Iface   *net.Interface
	Timeout time.Duration
	Name    string
	// Log gets progress lines (JSON lines with JSON); nil: none.
	Log  io.Writer
	JSON bool

	tamper func([]byte) // tests: ReceiveConfig.tamper
}

var _ simsync.Transport = (*Node)(nil)

func (t *Node) String() string { return "multicast" }

// Finish has nothing to release: the session's socket closed with Deliver.
func (t *Node) Finish(context.Context) error { return nil }

// Deliver receives what the session delivers into sink. It never fails
// the fetch for multicast's sake (only a cancelled ctx ends it): what did
// not arrive, FetchCommit asks for over HTTP. The Delivery's Report is
// the Result.
func (t *Node) Deliver(ctx context.Context, want chunk.ID, haves []chunk.ID, sink *simsync.Sink) (simsync.Delivery, error) {
	res, err := t.receive(ctx, want, haves, sink)
	if ctx.Err() != nil {
		return simsync.Delivery{}, ctx.Err()
	}
	d := simsync.Delivery{WireBytes: res.WireBytes, Report: res}
	if t.Log == nil {
		return d, nil
	}
	if err != nil {
		fmt.Fprintf(t.Log, "multicast: %v; fetching over HTTP\n", err)
	}
	if t.JSON {
		b, _ := json.Marshal(map[string]any{"multicast": res})
		fmt.Fprintf(t.Log, "%s\n", b)
	} else if err == nil {
		how := "complete"
		switch {
		case res.Complete:
		case res.Dropped:
			how = "dropped by the sender (too much loss); the rest over HTTP"
		default:
			how = "incomplete; the rest over HTTP"
		}
		fmt.Fprintf(t.Log, "multicast: session %s %s: %s of %s in %.1f s, %d datagrams, loss %.1f%%, %d passes\n",
			res.Session, how, units.Bytes(res.GotBytes), units.Bytes(res.NeedBytes), res.Seconds, res.Datagrams, res.LossPct, res.Pass)
	}
	return d, nil
}

func (t *Node) receive(ctx context.Context, want chunk.ID, haves []chunk.ID, sink *simsync.Sink) (Result, error) {
	cfg := ReceiveConfig{Want: want, Haves: haves, Has: sink.Has, Timeout: t.Timeout, Name: t.Name, tamper: t.tamper}
	if t.Group != nil {
		cfg.Group = t.Group
	} else {
		o, err := OpenRemote(ctx, t.Remote, want)
		if err != nil {
			return Result{}, err
		}
		if cfg.Group, err = net.ResolveUDPAddr("udp4", o.Group); err != nil {
			return Result{}, fmt.Errorf("server's group %q: %w", o.Group, err)
		}
		if cfg.Session, err = ParseSession(o.Session); err != nil {
			return Result{}, err
		}
		if cfg.Key, err = o.SealKey(); err != nil {
			return Result{}, err
		}
	}
	var err error
	if cfg.Iface = t.Iface; cfg.Iface == nil {
		if cfg.Iface, err = ifaceTowards(t.Remote.Base()); err != nil {
			return Result{}, err
		}
	}
	if t.Log != nil && !t.JSON {
		start := time.Now()
		cfg.Progress = func(r Result) {
			pct := 0.0
			if r.NeedBytes > 0 {
				pct = 100 * float64(r.GotBytes) / float64(r.NeedBytes)
			}
			fmt.Fprintf(t.Log, "multicast: %4.0fs pass %d: %s of %s (%.0f%%), %d datagrams, loss %.1f%%\n",
				time.Since(start).Seconds(), r.Pass, units.Bytes(r.GotBytes), units.Bytes(r.NeedBytes), pct, r.Datagrams, r.LossPct)
		}
	}
	return Receive(ctx, cfg, sink)
}

// ifaceTowards is the interface the kernel routes to the server's host.
func ifaceTowards(raw string) (*net.Interface, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	addrs, err := net.LookupIP(u.Hostname())
	if err != nil {
		return nil, fmt.Errorf("multicast: %s: %w", u.Hostname(), err)
	}
	for _, a := range addrs {
		if a.To4() == nil {
			continue
		}
		c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: a, Port: 9})
		if err != nil {
			continue
		}
		local := c.LocalAddr().(*net.UDPAddr).IP
		c.Close()
		ifs, _ := net.Interfaces()
		for i := range ifs {
			as, _ := ifs[i].Addrs()
			for _, x := range as {
				if n, ok := x.(*net.IPNet); ok && n.IP.Equal(local) {
					return &ifs[i], nil
				}
			}
		}
	}
	return nil, errors.New("multicast: no interface routes to " + u.Hostname() + " (use --mcast-iface)")
}
