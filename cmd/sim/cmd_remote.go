package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	gosync "sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/systemimager/sim/client/fleet"
	"github.com/systemimager/sim/client/install"
	"github.com/systemimager/sim/client/metrics"
	"github.com/systemimager/sim/client/monitor"
	"github.com/systemimager/sim/client/node"
	"github.com/systemimager/sim/client/rollout"
	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
	"github.com/systemimager/sim/sync/auto"
	"github.com/systemimager/sim/sync/bt"
	"github.com/systemimager/sim/sync/mcast"
	"github.com/systemimager/sim/sync/units"
)

// readTokens reads one token per line (blank lines and # comments skipped).
func readTokens(file string) ([]string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("token file: %w", err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("token file %s holds no token", file)
	}
	return out, nil
}

// remoteFlags are the options of every command that talks to a server.
type remoteFlags struct {
	tokenFile, ca string
	stall         time.Duration
	// requireSig is --require-signature, on the commands that fetch
	// (addRequire).
	requireSig bool
	// storeToken and storeCA are the files a node command falls back
	// to when neither the flag nor the environment names one: the
	// node store's token and ca.pem (withNode sets them).
	storeToken, storeCA string
}

func (f *remoteFlags) add(c *cobra.Command) {
	c.Flags().StringVar(&f.tokenFile, "token-file", "", "read the bearer token from `FILE` (default $SIM_TOKEN)")
	c.Flags().StringVar(&f.ca, "ca", "", "trust the CA certificates (PEM) in `FILE` for an https server (also $SIM_CA_CERT)")
	c.Flags().DurationVar(&f.stall, "stall-timeout", 2*time.Minute, "give up on an answer that brings under 64 KiB in `DURATION` (a stalled or dripping server)")
}

// addRequire adds --require-signature to a command that fetches.
func (f *remoteFlags) addRequire(c *cobra.Command) {
	c.Flags().BoolVar(&f.requireSig, "require-signature", false, "refuse commits without a valid signature by a key this store trusts (sim trust add), whatever the store's own policy")
}

func (f *remoteFlags) remote(e *env, url string) (*simsync.Remote, error) {
	tok := os.Getenv("SIM_TOKEN")
	switch {
	case f.tokenFile != "":
		ts, err := readTokens(e.path(f.tokenFile))
		if err != nil {
			return nil, err
		}
		tok = ts[0]
	case tok == "" && f.storeToken != "":
		if _, err := os.Stat(f.storeToken); err == nil {
			ts, err := readTokens(f.storeToken)
			if err != nil {
				return nil, fmt.Errorf("the node's token: %w", err)
			}
			tok = ts[0]
		}
	}
	r, err := simsync.NewRemote(url, tok)
	if err != nil {
		return nil, err
	}
	ca := ""
	switch {
	case f.ca != "":
		ca = e.path(f.ca)
	case os.Getenv("SIM_CA_CERT") == "" && f.storeCA != "":
		if _, err := os.Stat(f.storeCA); err == nil {
			ca = f.storeCA
		}
	}
	if ca != "" {
		if err := r.TrustCAFile(ca); err != nil {
			return nil, err
		}
	}
	r.RequireSignature = f.requireSig
	// A move to another frontend (--from URL1,URL2) is said on stderr:
	// the admin learns which server failed.
	var mu gosync.Mutex
	r.Logf = func(format string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(e.stderr, "sim: "+format+"\n", a...)
	}
	if f.stall > 0 {
		r.StallTimeout = f.stall
	}
	return r, nil
}

// serving is what a running sim serve holds besides its store: the
// services of the transports (multicast sessions, the seeder), for the
// command lines it runs on behalf of other processes.
type serving struct {
	services map[string]simsync.Service
}

// service returns the running service of transport name, or nil.
func (e *env) service(name string) simsync.Service {
	if e.served == nil {
		return nil
	}
	return e.served.services[name]
}

func newServeCommand(e *env) *cobra.Command {
	var listen, cert, key, tokenFile, netboot string
	var upstream, upTokenFile, upCA string
	var readToken, requireSig, noUI bool
	var maxStreams int
	var idle time.Duration
	type ext struct {
		name string
		cfg  simsync.ServeConfig
	}
	var exts []ext
	for _, k := range simsync.Transports() {
		if k.Serve != nil {
			exts = append(exts, ext{k.Name, k.Serve()})
		}
	}
	c := &cobra.Command{
		Use:   "serve [--listen ADDR]",
		Short: "Serve the store over HTTP(S) to nodes and other stores",
		Long: `Serve the store over HTTP(S): nodes install and update from it (sim checkout
--from), other stores pull from it and push to it, golden clients are captured
into it (sim commit --remote), netbooting nodes ask it what to install (sim
install). Reads are open unless --read-token; pushes need an admin token:
one of --token-file, or of the store's (sim token add NAME --role admin).
Install status reports and every agent request need the node's own token
(or an admin token); a node installing with an enroll token (sim token add
boot --role enroll: the one for kernel command lines) is given its own with
its install config. With --require-signature (or sim trust require on), a push
that moves a ref to a commit without a valid signature by a trusted key
is refused. While it runs, other sim commands on the same store are
carried out by the server (over <store>/sim.sock). A browser pointed at
the server shows the fleet live (the page at /; --no-ui leaves it out).`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, args []string) error {
			if (cert == "") != (key == "") {
				return usageError{errors.New("serve: --tls-cert and --tls-key go together")}
			}
			logw := log.New(e.stderr, "sim serve: ", log.LstdFlags)
			srv := &simsync.Server{MaxStreams: maxStreams, Log: logw, PrivateReads: readToken, RequireSignature: requireSig, IdleTimeout: idle}
			if tokenFile != "" {
				ts, err := readTokens(e.path(tokenFile))
				if err != nil {
					return err
				}
				srv.WriteTokens = ts
			}
			st, err := store.Open(e.storeDir)
			if err != nil {
				return err
			}
			defer st.Close()
			srv.Store = st
			srv.Planner = simsync.NewPlanner(st)
			if upstream != "" {
				if srv.Cache, err = newSiteCache(c.Context(), e, st, logw, upstream, upTokenFile, upCA); err != nil {
					return err
				}
				// BitTorrent and multicast would serve only what the
				// cache holds already: off on a cache (README "Site
				// caches").
				exts = nil
			}
			// A long-lived daemon next to other services: make the GC keep
			// the heap near what the streams really hold (frames, caches)
			// instead of letting it double. $GOMEMLIMIT overrides.
			if os.Getenv("GOMEMLIMIT") == "" {
				debug.SetMemoryLimit(128 << 20)
			}
			ctx := c.Context()
			sv := &serving{services: map[string]simsync.Service{}}
			defer func() {
				for name, s := range sv.services {
					if name != "fleet" && name != "rollout" {
						s.Close()
					}
				}
			}()
			tl, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("serve: %w", err)
			}
			defer tl.Close()
			// Slow or hostile clients: headers within 10 s and 64 KiB,
			// every body read and response write bounded by the
			// server's IdleTimeout (a minute without progress).
			web := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
				MaxHeaderBytes: 64 << 10, ErrorLog: logw, BaseContext: func(net.Listener) context.Context { return ctx }}
			scheme := "http"
			if cert != "" {
				pair, err := tls.LoadX509KeyPair(e.path(cert), e.path(key))
				if err != nil {
					return fmt.Errorf("serve: %w", err)
				}
				web.TLSConfig = &tls.Config{Certificates: []tls.Certificate{pair}}
				tl = tls.NewListener(tl, web.TLSConfig)
				scheme = "https"
			}
			base := ""
			if ta, ok := tl.Addr().(*net.TCPAddr); ok && !ta.IP.IsUnspecified() {
				base = scheme + "://" + ta.String()
			}
			nb := ""
			if netboot != "" {
				nb = e.path(netboot)
			}
			// The fleet (the nodes' live view, the agent protocol) is fed
			// by the installers' reports too; the rollout engine gives
			// orders through it.
			fl := fleet.New(st, logw)
			isvc := install.NewService(st, nb, logw)
			isvc.OnStatus = fl.InstallStatus
			isvc.Mount(srv)
			fl.Mount(srv)
			for _, x := range exts {
				s, err := x.cfg.Start(ctx, simsync.ServeEnv{Server: srv, BaseURL: base, Log: e.stderr})
				if err != nil {
					return fmt.Errorf("serve: %w", err)
				}
				if s != nil {
					sv.services[x.name] = s
				}
			}
			var names []string
			for _, k := range simsync.Transports() {
				names = append(names, k.Name)
			}
			var ch auto.Chooser
			for _, s := range sv.services {
				if c, ok := s.(auto.Chooser); ok {
					ch = c
				}
			}
			eng, err := rollout.New(st, fl, srv.Planner, names, ch, logw)
			if err != nil {
				fl.Close()
				return fmt.Errorf("serve: rollouts: %w", err)
			}
			defer fl.Close()
			defer eng.Close() // before the fleet: it gives orders through it
			sv.services["fleet"], sv.services["rollout"] = fl, eng
			// The live view: GET /v1/events (server-sent events), GET
			// /v1/monitor (a snapshot), as reads; the page at / unless
			// --no-ui; the rollout actions for admins.
			mon := &monitor.Monitor{Fleet: fl, Rollouts: eng, Server: srv, Log: logw}
			if s, ok := sv.services["bittorrent"].(interface{ Status() []bt.TorrentStatus }); ok {
				mon.Torrents = s.Status
			}
			if s, ok := sv.services["multicast"].(interface{ Sessions() []mcast.SessionInfo }); ok {
				mon.Sessions = s.Sessions
			}
			mon.Mount(srv)
			if !noUI {
				monitor.MountPage(srv)
			}
			eng.Mount(srv)
			// GET /metrics (Prometheus), a read; README "Metrics".
			(&metrics.Metrics{Fleet: fl, Rollouts: eng, Services: sv.services, Log: logw}).Mount(ctx, srv)
			local, err := serveSocket(ctx, st, e.storeDir, sv)
			if err != nil {
				return fmt.Errorf("serve: %w", err)
			}
			fmt.Fprintf(e.stderr, "sim serve: serving %s on %s://%s\n", e.storeDir, scheme, tl.Addr())
			errc := make(chan error, 1)
			go func() { errc <- web.Serve(tl) }()
			select {
			case <-ctx.Done():
			case err := <-errc:
				local.Close()
				return err
			}
			// Stop within the grace of a signal: in-flight streams are
			// cut (nodes resume what they lack), nothing is half-written.
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			defer cancel()
			web.Shutdown(sctx)
			local.Shutdown(sctx)
			web.Close()
			local.Close()
			s := srv.Stats()
			fmt.Fprintf(e.stderr, "sim serve: stopped; %d fetches, %d pushes, %s sent, %s received\n",
				s.Fetches, s.Pushes, units.Bytes(s.BytesOut), units.Bytes(s.BytesIn))
			return errInterrupted
		},
	}
	f := c.Flags()
	f.StringVar(&listen, "listen", ":7480", "TCP `ADDR`ess to serve on")
	f.StringVar(&cert, "tls-cert", "", "serve HTTPS with this certificate `FILE` (PEM)")
	f.StringVar(&key, "tls-key", "", "and this key `FILE` (PEM)")
	f.StringVar(&tokenFile, "token-file", "", "admin bearer tokens (push, refs, any node), one per line; see also sim token")
	f.BoolVar(&readToken, "read-token", false, "close reads too: every request needs a token (any role; BitTorrent payloads are then encrypted)")
	f.BoolVar(&noUI, "no-ui", false, "do not serve the fleet page at / (the API it reads stays)")
	f.BoolVar(&requireSig, "require-signature", false, "refuse pushes moving a ref to a commit without a valid signature by a key the store trusts")
	f.IntVar(&maxStreams, "max-streams", 64, "object streams served at once (more wait)")
	f.DurationVar(&idle, "idle-timeout", time.Minute, "end a request whose client stops reading its answer, or sending its body, for `DURATION` (frees its stream slot)")
	f.StringVar(&netboot, "netboot", "", "serve the kernel and initrd `DIR` (from sim initrd build) for netboot at /v1/install/")
	f.StringVar(&upstream, "upstream", "", "be a pull-through site cache of the server at `URL`: its refs, and whatever nodes ask for, fetched once and kept in this store; pushes are refused")
	f.StringVar(&upTokenFile, "upstream-token-file", "", "the bearer token for --upstream, from `FILE`")
	f.StringVar(&upCA, "upstream-ca", "", "trust this CA `FILE` (PEM) for an https --upstream")
	for _, x := range exts {
		x.cfg.Flags(f)
	}
	return c
}

// newSiteCache is sim serve --upstream: the cache in front of st.
func newSiteCache(ctx context.Context, e *env, st *store.Store, logw *log.Logger, upstream, tokenFile, ca string) (*simsync.Cache, error) {
	r, err := simsync.NewRemote(upstream, "")
	if err != nil {
		return nil, usageError{fmt.Errorf("serve --upstream: %w", err)}
	}
	// One retry: nodes retry on their own, and an unreachable upstream
	// must not hold them long before the cache serves what it has.
	r.Retries = 1
	if tokenFile != "" {
		ts, err := readTokens(e.path(tokenFile))
		if err != nil {
			return nil, fmt.Errorf("serve --upstream-token-file: %w", err)
		}
		r.Token = ts[0]
	}
	if ca != "" {
		if err := r.TrustCAFile(e.path(ca)); err != nil {
			return nil, fmt.Errorf("serve --upstream-ca: %w", err)
		}
	}
	r.Logf = logw.Printf
	logw.Printf("site cache of %s (refs refreshed at most every %s)", r.URL, simsync.DefaultRefsTTL)
	return &simsync.Cache{Up: r, Store: st, Ctx: ctx, Log: logw}, nil
}

func isURL(s string) bool { return strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://") }

func originPath(storeDir string) string { return filepath.Join(storeDir, "origin") }

func newCloneCommand(e *env) *cobra.Command {
	var rf remoteFlags
	c := &cobra.Command{
		Use:   "clone URL [DIR]",
		Short: "Create a store at DIR (default --store) holding everything the server has",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(c *cobra.Command, args []string) error {
			dir := e.storeDir
			if len(args) == 2 {
				if err := store.CheckLocation(args[1]); err != nil {
					return err
				}
				dir = e.path(args[1])
			}
			r, err := rf.remote(e, args[0])
			if err != nil {
				return err
			}
			if _, err := r.Refs(c.Context()); err != nil {
				return err
			}
			if err := store.Init(dir); err != nil {
				return err
			}
			os.WriteFile(originPath(dir), []byte(args[0]+"\n"), 0o644)
			e.storeDir = dir
			return e.withStore(func(st *store.Store) error {
				stop := e.showFetch("clone", r)
				ps, err := simsync.Pull(c.Context(), st, r, nil, nil)
				stop()
				e.reportPull(ps)
				return err
			})
		},
	}
	rf.add(c)
	rf.addRequire(c)
	e.addJSONFlag(c)
	return c
}

func (e *env) reportPull(ps simsync.PullStats) {
	if e.json {
		e.printJSON(ps)
		return
	}
	fmt.Fprintf(e.stderr, "fetched %d commits, %d objects (%d new) in %d requests, %s on the wire\n",
		ps.Commits, ps.Blobs, ps.NewBlobs, ps.Rounds, units.Bytes(ps.WireBytes))
}

func newPullCommand(e *env) *cobra.Command {
	var rf remoteFlags
	var tf simsync.TransportFlags
	c := &cobra.Command{
		Use:   "pull [URL] [REF...]",
		Short: "Fetch images and tags (all, or the REFs) with their history from a server",
		Long: `Fetch images and tags with their history from a server (default: the one
this store was cloned from). Only objects this store lacks are transferred,
every one is verified, and an interrupted pull keeps what arrived.`,
		RunE: func(c *cobra.Command, args []string) error {
			url := ""
			if len(args) > 0 && isURL(args[0]) {
				url, args = args[0], args[1:]
			}
			return e.withStore(func(st *store.Store) error {
				if url == "" {
					b, err := os.ReadFile(originPath(st.Dir()))
					if err != nil {
						return usageError{errors.New("pull: give a URL (this store was not cloned)")}
					}
					url = strings.TrimSpace(string(b))
				}
				r, err := rf.remote(e, url)
				if err != nil {
					return err
				}
				tr, err := tf.Open(c.Context(), e.transportEnv(st, r))
				if err != nil {
					return err
				}
				stop := e.showFetch("pull", r)
				ps, err := simsync.Pull(c.Context(), st, r, tr, args)
				stop()
				e.reportPull(ps)
				if ferr := tr.Finish(c.Context()); err == nil {
					err = ferr
				}
				return err
			})
		},
	}
	rf.add(c)
	rf.addRequire(c)
	tf.Add(c.Flags())
	e.addJSONFlag(c)
	return c
}

func newPushCommand(e *env) *cobra.Command {
	var rf remoteFlags
	var force bool
	c := &cobra.Command{
		Use:   "push URL REF...",
		Short: "Send images or tags with their history to a server (needs a token)",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			r, err := rf.remote(e, args[0])
			if err != nil {
				return err
			}
			return e.withStore(func(st *store.Store) error {
				ps, err := simsync.Push(c.Context(), st, r, args[1:], force)
				if err != nil {
					return err
				}
				if e.json {
					return e.printJSON(ps)
				}
				fmt.Fprintf(e.stderr, "pushed %d commits, %d objects, %s on the wire\n", ps.Commits, ps.Objects, units.Bytes(ps.WireBytes))
				return nil
			})
		},
	}
	rf.add(c)
	c.Flags().BoolVar(&force, "force", false, "move the server's image even if its head is not an ancestor")
	e.addJSONFlag(c)
	return c
}

func newFetchPlanCommand(e *env) *cobra.Command {
	var rf remoteFlags
	c := &cobra.Command{
		Use:   "fetch-plan URL REF DIR",
		Short: "Say how much a node would download to check REF out into DIR",
		Args:  cobra.ExactArgs(3),
		RunE: func(c *cobra.Command, args []string) error {
			r, err := rf.remote(e, args[0])
			if err != nil {
				return err
			}
			return e.withStoreInit(func(st *store.Store) error {
				id, _, err := r.Resolve(c.Context(), args[1])
				if err != nil {
					return err
				}
				haves, err := simsync.LocalHaves(st, node.Base(st, e.path(args[2]))...)
				if err != nil {
					return err
				}
				p := &simsync.PlanInfo{Commit: id}
				if ok, _ := st.HasCommit(id); !ok {
					if p, err = r.Plan(c.Context(), id, haves); err != nil {
						return err
					}
				}
				if e.json {
					return e.printJSON(p)
				}
				fmt.Fprintf(e.stdout, "%s: about %s to download: %d trees (%s) and %d chunks (%s) uncompressed; %d of %d local commits known to the server\n",
					id.Short(), units.Bytes(p.WireBytes), p.Trees, units.Bytes(p.TreeBytes), p.Chunks, units.Bytes(p.ChunkBytes), p.Haves, len(haves))
				return nil
			})
		},
	}
	rf.add(c)
	e.addJSONFlag(c)
	return c
}

// withStoreInit is withStore on a node: the store is created if missing.
func (e *env) withStoreInit(fn func(st *store.Store) error) error {
	if e.st == nil {
		if _, err := os.Stat(filepath.Join(e.storeDir, "config")); errors.Is(err, os.ErrNotExist) {
			if err := store.Init(e.storeDir); err != nil {
				return err
			}
		}
	}
	return e.withStore(fn)
}
