package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	gosync "sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
	"github.com/systemimager/sim/sync/mcast"
)

// Multicast (issue #6): sim serve runs a session manager (a serve
// extension) that nodes ask for a session with POST /v1/mcast/open;
// `sim checkout --from URL --transport multicast` receives through it;
// `sim multicast send` starts a session by hand and `sim multicast
// sessions` lists them.

func init() {
	registerTransport(transportKind{name: "multicast",
		help: "receive from a multicast session of the server with the other nodes installing the same REF; the rest over HTTP",
		new:  func() transport { return &mcastTransport{} }})
	registerServeExtension(func() serveExtension { return &mcastServe{} })
}

// managers are the running servers' session managers by store, so that
// command lines forwarded to sim serve reach its sessions.
var managers = struct {
	gosync.Mutex
	m map[*store.Store]*mcast.Manager
}{m: map[*store.Store]*mcast.Manager{}}

func managerOf(st *store.Store) *mcast.Manager {
	managers.Lock()
	defer managers.Unlock()
	return managers.m[st]
}

// mcastConfig is the sender options shared by serve and multicast send.
type mcastConfig struct {
	group, rate, iface string
	wait               time.Duration
	minReceivers       int
	mtu, ttl, passes   int
}

func (o *mcastConfig) add(c *cobra.Command, prefix string) {
	f := c.Flags()
	f.StringVar(&o.group, prefix+"group", mcast.DefaultGroup, "multicast `ADDR:PORT` (sessions at once take the next addresses)")
	f.StringVar(&o.rate, prefix+"rate", "500mbit", "maximum send `RATE` (200mbit, 1gbit), lowered while most receivers report loss")
	f.StringVar(&o.iface, prefix+"iface", "", "send on this `INTERFACE` (default: the one that routes to the receivers)")
	f.DurationVar(&o.wait, prefix+"wait", 3*time.Second, "how long a session takes registrations before sending")
	f.IntVar(&o.minReceivers, prefix+"min-receivers", 0, "start sending as soon as `N` receivers registered")
	f.IntVar(&o.mtu, prefix+"mtu", 0, "datagram size cap (default: the interface's MTU, jumbo frames included)")
	f.IntVar(&o.ttl, prefix+"ttl", 1, "multicast TTL (1: the local network)")
	f.IntVar(&o.passes, prefix+"passes", mcast.DefaultPasses, "passes at most: the first and the repairs; the rest goes over HTTP")
}

func (o *mcastConfig) config(logw io.Writer, prefix string) (mcast.Config, error) {
	var cfg mcast.Config
	g, err := net.ResolveUDPAddr("udp4", o.group)
	if err != nil || g.IP == nil || !g.IP.IsMulticast() || g.Port == 0 {
		return cfg, usageError{fmt.Errorf("--%sgroup %q: want an IPv4 multicast ADDR:PORT", prefix, o.group)}
	}
	rate, err := mcast.ParseRate(o.rate)
	if err != nil {
		return cfg, usageError{fmt.Errorf("--%srate: %v", prefix, err)}
	}
	if o.iface != "" {
		if cfg.Iface, err = net.InterfaceByName(o.iface); err != nil {
			return cfg, usageError{fmt.Errorf("--%siface %s: %v", prefix, o.iface, err)}
		}
	}
	if o.mtu != 0 && (o.mtu < 576 || o.mtu > 9000) {
		return cfg, usageError{fmt.Errorf("--%smtu %d: want 576..9000", prefix, o.mtu)}
	}
	if o.ttl < 1 || o.ttl > 255 || o.passes < 1 || o.passes > 100 || o.minReceivers < 0 || o.wait < 0 {
		return cfg, usageError{fmt.Errorf("--%sttl (1..255), --%spasses (1..100), --%smin-receivers, --%swait must be sensible", prefix, prefix, prefix, prefix)}
	}
	cfg.Group, cfg.RateBits, cfg.Wait, cfg.MinReceivers = g, rate, o.wait, o.minReceivers
	cfg.MTU, cfg.TTL, cfg.MaxPasses = o.mtu, o.ttl, o.passes
	cfg.Log = log.New(logw, "sim: ", log.LstdFlags)
	return cfg, nil
}

// ---------------------------------------------------------------- serve ---

type mcastServe struct {
	o mcastConfig
}

func (x *mcastServe) flags(c *cobra.Command) { x.o.add(c, "mcast-") }

func (x *mcastServe) start(_ context.Context, e *env, st *store.Store, srv *simsync.Server, _ string) (func(), error) {
	cfg, err := x.o.config(e.stderr, "mcast-")
	if err != nil {
		return nil, err
	}
	cfg.Log = log.New(e.stderr, "sim serve: ", log.LstdFlags)
	if srv.Planner == nil {
		srv.Planner = simsync.NewPlanner(st) // shared: have sets are cached per commit
	}
	m := mcast.NewManager(st, srv.Planner, cfg)
	srv.Extra["/v1/mcast/"] = m.Handler()
	managers.Lock()
	managers.m[st] = m
	managers.Unlock()
	return func() {
		managers.Lock()
		delete(managers.m, st)
		managers.Unlock()
		m.Close()
	}, nil
}

// ------------------------------------------------------------ transport ---

type mcastTransport struct {
	group, iface string
	timeout      time.Duration

	r  *simsync.Remote
	st *store.Store
	e  *env
}

func (t *mcastTransport) flags(c *cobra.Command) {
	f := c.Flags()
	f.StringVar(&t.group, "mcast-group", "", "multicast: listen on `ADDR:PORT` for a session announcing REF (sent by `sim multicast send`) instead of asking the server for one")
	f.StringVar(&t.iface, "mcast-iface", "", "multicast: receive on this `INTERFACE` (default: the one that routes to the server)")
	f.DurationVar(&t.timeout, "mcast-timeout", 15*time.Second, "multicast: give up (and fetch over HTTP) after this long without a datagram")
}

func (t *mcastTransport) open(_ context.Context, e *env, st *store.Store, r *simsync.Remote) (simsync.Transport, func(context.Context) error, error) {
	if t.group != "" {
		if g, err := net.ResolveUDPAddr("udp4", t.group); err != nil || !g.IP.IsMulticast() {
			return nil, nil, usageError{fmt.Errorf("--mcast-group %q: want an IPv4 multicast ADDR:PORT", t.group)}
		}
	}
	if t.iface != "" {
		if _, err := net.InterfaceByName(t.iface); err != nil {
			return nil, nil, usageError{fmt.Errorf("--mcast-iface %s: %v", t.iface, err)}
		}
	}
	t.r, t.st, t.e = r, st, e
	return t, nil, nil
}

func (t *mcastTransport) String() string { return t.r.String() + " (multicast)" }

func (t *mcastTransport) Commit(ctx context.Context, id chunk.ID) ([]byte, error) {
	return t.r.Commit(ctx, id)
}

func (t *mcastTransport) Objects(ctx context.Context, ids []chunk.ID, rcv simsync.Receiver) (simsync.DecodeStats, error) {
	return t.r.Objects(ctx, ids, rcv)
}

// Fetch receives what multicast delivers; it never fails the fetch for
// multicast's sake: whatever did not arrive, FetchCommit asks over HTTP.
func (t *mcastTransport) Fetch(ctx context.Context, want chunk.ID, haves []chunk.ID, rcv simsync.Receiver) (simsync.DecodeStats, error) {
	var ds simsync.DecodeStats
	res, err := t.receive(ctx, want, haves, rcv)
	if ctx.Err() != nil {
		return ds, ctx.Err()
	}
	ds.Blobs, ds.WireBytes = res.Blobs, res.WireBytes
	if err != nil {
		fmt.Fprintf(t.e.stderr, "multicast: %v; fetching over HTTP\n", err)
	}
	if t.e.json {
		b, _ := json.Marshal(map[string]any{"multicast": res})
		fmt.Fprintf(t.e.stderr, "%s\n", b)
	} else if err == nil {
		how := "complete"
		switch {
		case res.Complete:
		case res.Dropped:
			how = "dropped by the sender (too much loss); the rest over HTTP"
		default:
			how = "incomplete; the rest over HTTP"
		}
		fmt.Fprintf(t.e.stderr, "multicast: session %s %s: %s of %s in %.1f s, %d datagrams, loss %.1f%%, %d passes\n",
			res.Session, how, fmtBytes(res.GotBytes), fmtBytes(res.NeedBytes), res.Seconds, res.Datagrams, res.LossPct, res.Pass)
	}
	return ds, nil
}

func (t *mcastTransport) receive(ctx context.Context, want chunk.ID, haves []chunk.ID, rcv simsync.Receiver) (mcast.Result, error) {
	cfg := mcast.ReceiveConfig{Want: want, Haves: haves, Has: t.st.HasMany, Timeout: t.timeout}
	cfg.Name, _ = os.Hostname()
	if t.group != "" {
		cfg.Group, _ = net.ResolveUDPAddr("udp4", t.group)
	} else {
		o, err := mcast.OpenRemote(ctx, t.r.Client, t.r.URL, t.r.Token, want)
		if err != nil {
			return mcast.Result{}, err
		}
		if cfg.Group, err = net.ResolveUDPAddr("udp4", o.Group); err != nil {
			return mcast.Result{}, fmt.Errorf("server's group %q: %w", o.Group, err)
		}
		if cfg.Session, err = mcast.ParseSession(o.Session); err != nil {
			return mcast.Result{}, err
		}
	}
	var err error
	if t.iface != "" {
		cfg.Iface, err = net.InterfaceByName(t.iface)
	} else {
		cfg.Iface, err = ifaceTowards(t.r.URL)
	}
	if err != nil {
		return mcast.Result{}, err
	}
	if !t.e.json {
		start := time.Now()
		cfg.Progress = func(r mcast.Result) {
			pct := 0.0
			if r.NeedBytes > 0 {
				pct = 100 * float64(r.GotBytes) / float64(r.NeedBytes)
			}
			fmt.Fprintf(t.e.stderr, "multicast: %4.0fs pass %d: %s of %s (%.0f%%), %d datagrams, loss %.1f%%\n",
				time.Since(start).Seconds(), r.Pass, fmtBytes(r.GotBytes), fmtBytes(r.NeedBytes), pct, r.Datagrams, r.LossPct)
		}
	}
	return mcast.Receive(ctx, cfg, rcv)
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
	return nil, fmt.Errorf("multicast: no interface routes to %s (use --mcast-iface)", u.Hostname())
}

// -------------------------------------------------------------- command ---

func newMulticastCommand(e *env) *cobra.Command {
	c := &cobra.Command{
		Use:   "multicast",
		Short: "Send an image to many nodes at once by IP multicast, and list sessions",
	}
	c.AddCommand(newMulticastSendCommand(e), newMulticastSessionsCommand(e))
	return c
}

func newMulticastSendCommand(e *env) *cobra.Command {
	var o mcastConfig
	c := &cobra.Command{
		Use:   "send REF",
		Short: "Multicast what the registered nodes lack of REF, then repair what they missed",
		Long: `Start a multicast session for REF and wait for it to end. Nodes register
(sim checkout --from URL --transport multicast REF DIR) during --wait, or
until --min-receivers did; the session then sends the union of what they
lack, repairs what they report missing for up to --passes passes, and ends;
what a node still lacks it fetches over HTTP. While sim serve holds the
store, this runs inside it and nodes find the session through the server;
otherwise nodes listen with --mcast-group and need an HTTP server (e.g. a
mirror) for commits and what multicast did not deliver.`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cfg, err := o.config(e.stderr, "")
			if err != nil {
				return err
			}
			return e.withStore(func(st *store.Store) error {
				want, err := st.Resolve(args[0])
				if err != nil {
					return err
				}
				m := managerOf(st)
				opts := mcast.OpenOptions{Wait: cfg.Wait, MinReceivers: cfg.MinReceivers, RateBits: cfg.RateBits}
				if m == nil {
					m = mcast.NewManager(st, simsync.NewPlanner(st), cfg)
					defer m.Close()
				}
				s, err := m.Open(want, opts)
				if err != nil {
					return err
				}
				fmt.Fprintf(e.stderr, "multicast: session %08x for %s on %s\n", s.ID, want.Short(), s.Group)
				t := time.NewTicker(2 * time.Second)
				defer t.Stop()
				for {
					select {
					case <-c.Context().Done():
						return c.Context().Err()
					case <-s.Done():
						inf := s.Info()
						if e.json {
							return e.printJSON(inf)
						}
						printSessions(e.stdout, []mcast.SessionInfo{inf})
						return s.Err()
					case <-t.C:
						if !e.json {
							inf := s.Info()
							fmt.Fprintf(e.stderr, "multicast: %s, pass %d, %s sent, %d members\n", inf.State, inf.Pass, fmtBytes(inf.SentBytes), len(inf.Members))
						}
					}
				}
			})
		},
	}
	o.add(c, "")
	e.addJSONFlag(c)
	return c
}

func newMulticastSessionsCommand(e *env) *cobra.Command {
	var rf remoteFlags
	c := &cobra.Command{
		Use:   "sessions [URL]",
		Short: "List the multicast sessions of a server with their members and states",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			var ss []mcast.SessionInfo
			if len(args) == 1 {
				r, err := rf.remote(e, args[0])
				if err != nil {
					return err
				}
				req, _ := http.NewRequestWithContext(c.Context(), "GET", r.URL+"/v1/mcast/sessions", nil)
				if r.Token != "" {
					req.Header.Set("Authorization", "Bearer "+r.Token)
				}
				resp, err := r.Client.Do(req)
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
					return fmt.Errorf("%s: %s: %s", r.URL, resp.Status, strings.TrimSpace(string(msg)))
				}
				if err := json.NewDecoder(resp.Body).Decode(&ss); err != nil {
					return fmt.Errorf("%s/v1/mcast/sessions: %w", r.URL, err)
				}
			} else {
				err := e.withStore(func(st *store.Store) error {
					m := managerOf(st)
					if m == nil {
						return errors.New("multicast sessions: sim serve is not running on this store (or give its URL)")
					}
					ss = m.Sessions()
					return nil
				})
				if err != nil {
					return err
				}
			}
			if e.json {
				return e.printJSON(ss)
			}
			printSessions(e.stdout, ss)
			return nil
		},
	}
	rf.add(c)
	e.addJSONFlag(c)
	return c
}

func printSessions(w io.Writer, ss []mcast.SessionInfo) {
	if len(ss) == 0 {
		fmt.Fprintln(w, "no multicast sessions")
		return
	}
	for _, s := range ss {
		fmt.Fprintf(w, "session %s  %s  %s on %s  %s, pass %d, %d objects %s, sent %s at up to %.0f Mbit/s, %.1f s\n",
			s.ID, s.Want.Short(), s.Group, s.Iface, s.State, s.Pass, s.Objects, fmtBytes(s.Bytes), fmtBytes(s.SentBytes), float64(s.RateBits)/1e6, s.Seconds)
		if s.Error != "" {
			fmt.Fprintf(w, "  error: %s\n", s.Error)
		}
		tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "  NODE\tADDR\tSTATE\tGOT\tNEED\tLOSS\tNAK RANGES")
		for _, m := range s.Members {
			late := ""
			if m.Late {
				late = " (late)"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s%s\t%s\t%s\t%.1f%%\t%d\n", m.Name, m.Addr, m.State, late, fmtBytes(int64(m.GotBytes)), fmtBytes(int64(m.NeedBytes)), m.LossPct, m.NakRanges)
		}
		tw.Flush()
	}
}
