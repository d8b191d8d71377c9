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
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/client"
	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
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
	tokenFile string
}

func (f *remoteFlags) add(c *cobra.Command) {
	c.Flags().StringVar(&f.tokenFile, "token-file", "", "read the bearer token from `FILE` (default $SIM_TOKEN)")
}

func (f *remoteFlags) remote(e *env, url string) (*simsync.Remote, error) {
	tok := os.Getenv("SIM_TOKEN")
	if f.tokenFile != "" {
		ts, err := readTokens(e.path(f.tokenFile))
		if err != nil {
			return nil, err
		}
		tok = ts[0]
	}
	return simsync.NewRemote(url, tok)
}

func newServeCommand(e *env) *cobra.Command {
	var listen, cert, key, tokenFile string
	var readToken bool
	var maxStreams int
	var exts []serveExtension
	for _, f := range serveExtensions {
		exts = append(exts, f())
	}
	c := &cobra.Command{
		Use:   "serve [--listen ADDR]",
		Short: "Serve the store over HTTP(S) to nodes and other stores",
		Long: `Serve the store over HTTP(S): nodes install and update from it (sim checkout
--from), other stores pull from it and push to it, golden clients are captured
into it (sim commit --remote). Reads are open unless --read-token; pushes
always need a token from --token-file. While it runs, other sim commands on
the same store are carried out by the server (over <store>/sim.sock).`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, args []string) error {
			if (cert == "") != (key == "") {
				return usageError{errors.New("serve: --tls-cert and --tls-key go together")}
			}
			srv := &simsync.Server{MaxStreams: maxStreams, Log: log.New(e.stderr, "sim serve: ", log.LstdFlags)}
			if tokenFile != "" {
				ts, err := readTokens(e.path(tokenFile))
				if err != nil {
					return err
				}
				srv.WriteTokens = ts
				if readToken {
					srv.ReadTokens = ts
				}
			} else if readToken {
				return usageError{errors.New("serve: --read-token needs --token-file")}
			}
			st, err := store.Open(e.storeDir)
			if err != nil {
				return err
			}
			defer st.Close()
			srv.Store = st
			srv.Planner = simsync.NewPlanner(st)
			// A long-lived daemon next to other services: make the GC keep
			// the heap near what the streams really hold (frames, caches)
			// instead of letting it double. $GOMEMLIMIT overrides.
			if os.Getenv("GOMEMLIMIT") == "" {
				debug.SetMemoryLimit(128 << 20)
			}
			ctx, stop := signal.NotifyContext(c.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()

			sock := filepath.Join(e.storeDir, socketName)
			os.Remove(sock) // stale: we hold the store lock, so no server owns it
			ul, err := net.Listen("unix", sock)
			if err != nil {
				return fmt.Errorf("serve: %w", err)
			}
			os.Chmod(sock, 0o600)
			defer os.Remove(sock)
			local := &http.Server{Handler: runHandler(st, e.storeDir),
				ConnContext: func(ctx context.Context, c net.Conn) context.Context {
					if uc, ok := c.(*net.UnixConn); ok {
						return context.WithValue(ctx, connKey{}, uc)
					}
					return ctx
				}}
			go local.Serve(ul)

			tl, err := net.Listen("tcp", listen)
			if err != nil {
				local.Close()
				return fmt.Errorf("serve: %w", err)
			}
			web := &http.Server{Handler: srv, ReadHeaderTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute,
				ErrorLog: log.New(e.stderr, "sim serve: ", log.LstdFlags)}
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
			srv.Extra = map[string]http.Handler{}
			base := ""
			if ta, ok := tl.Addr().(*net.TCPAddr); ok && !ta.IP.IsUnspecified() {
				base = scheme + "://" + ta.String()
			}
			for _, x := range exts {
				stopx, err := x.start(ctx, e, st, srv, base)
				if err != nil {
					tl.Close()
					local.Close()
					return fmt.Errorf("serve: %w", err)
				}
				if stopx != nil {
					defer stopx()
				}
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
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			web.Shutdown(sctx)
			local.Shutdown(sctx)
			s := srv.Stats()
			fmt.Fprintf(e.stderr, "sim serve: stopped; %d fetches, %d pushes, %s sent, %s received\n",
				s.Fetches, s.Pushes, fmtBytes(s.BytesOut), fmtBytes(s.BytesIn))
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&listen, "listen", ":7480", "TCP `ADDR`ess to serve on")
	f.StringVar(&cert, "tls-cert", "", "serve HTTPS with this certificate `FILE` (PEM)")
	f.StringVar(&key, "tls-key", "", "and this key `FILE` (PEM)")
	f.StringVar(&tokenFile, "token-file", "", "bearer tokens allowed to push, one per line")
	f.BoolVar(&readToken, "read-token", false, "require a token from --token-file for reads too")
	f.IntVar(&maxStreams, "max-streams", 64, "object streams served at once (more wait)")
	for _, x := range exts {
		x.flags(c)
	}
	return c
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
				ps, err := simsync.Pull(c.Context(), st, r, nil, nil)
				e.reportPull(ps)
				return err
			})
		},
	}
	rf.add(c)
	e.addJSONFlag(c)
	return c
}

func (e *env) reportPull(ps simsync.PullStats) {
	if e.json {
		e.printJSON(ps)
		return
	}
	fmt.Fprintf(e.stderr, "fetched %d commits, %d objects (%d new) in %d requests, %s on the wire\n",
		ps.Commits, ps.Blobs, ps.NewBlobs, ps.Rounds, fmtBytes(ps.WireBytes))
}

func newPullCommand(e *env) *cobra.Command {
	var rf remoteFlags
	var tf transportFlags
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
				tr, finish, err := tf.open(c.Context(), e, st, r)
				if err != nil {
					return err
				}
				ps, err := simsync.Pull(c.Context(), st, r, tr, args)
				e.reportPull(ps)
				if err == nil && finish != nil {
					err = finish(c.Context())
				}
				return err
			})
		},
	}
	rf.add(c)
	tf.add(c)
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
				fmt.Fprintf(e.stderr, "pushed %d commits, %d objects, %s on the wire\n", ps.Commits, ps.Objects, fmtBytes(ps.WireBytes))
				return nil
			})
		},
	}
	rf.add(c)
	c.Flags().BoolVar(&force, "force", false, "move the server's image even if its head is not an ancestor")
	e.addJSONFlag(c)
	return c
}

// fetchForCheckout brings REF from the server into the node's store and
// returns its commit id: shallow (no history), a delta on what the
// directory has checked out and what the store holds.
func fetchForCheckout(ctx context.Context, e *env, st *store.Store, r *simsync.Remote, tr simsync.Transport, ref, dir string) (chunk.ID, simsync.PullStats, error) {
	id, kind, err := r.Resolve(ctx, ref)
	if err != nil {
		return id, simsync.PullStats{}, err
	}
	start := time.Now()
	ps, err := simsync.FetchCommit(ctx, st, tr, id, true, checkoutBase(st, dir)...)
	ps.Seconds = time.Since(start).Seconds()
	if err != nil {
		return id, ps, err
	}
	if kind != "commit" {
		err = simsync.SetLocalRef(st, kind, ref, id, "fetch", "fetched from "+r.URL)
	}
	return id, ps, err
}

// checkoutBase is what dir has checked out, the best base for a delta.
func checkoutBase(st *store.Store, dir string) []chunk.ID {
	if rec, err := client.LastCheckout(st, dir); err == nil {
		return []chunk.ID{rec.Commit}
	}
	return nil
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
				haves, err := simsync.LocalHaves(st, checkoutBase(st, e.path(args[2]))...)
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
					id.Short(), fmtBytes(p.WireBytes), p.Trees, fmtBytes(p.TreeBytes), p.Chunks, fmtBytes(p.ChunkBytes), p.Haves, len(haves))
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
