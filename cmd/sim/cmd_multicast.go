package main

import (
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
	"github.com/systemimager/sim/sync/mcast"
	"github.com/systemimager/sim/sync/units"
)

// The multicast commands: `sim multicast send` starts a session by hand
// (inside sim serve when it holds the store, so nodes find it through the
// server) and `sim multicast sessions` lists them. The transport itself
// is sync/mcast.

func newMulticastCommand(e *env) *cobra.Command {
	c := &cobra.Command{
		Use:   "multicast",
		Short: "Send an image to many nodes at once by IP multicast, and list sessions",
	}
	c.AddCommand(newMulticastSendCommand(e), newMulticastSessionsCommand(e))
	return c
}

func newMulticastSendCommand(e *env) *cobra.Command {
	var o mcast.SenderFlags
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
mirror) for commits and what multicast did not deliver. Inside a sim serve
whose reads need a token the session is sealed (encrypted; nodes get its key
from the server); without a server it is plain: anyone on the segment can
read it.`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cfg, err := o.Config(e.stderr, "sim: ")
			if err != nil {
				return err
			}
			return e.withStore(func(st *store.Store) error {
				want, err := st.Resolve(args[0])
				if err != nil {
					return err
				}
				m, _ := e.service("multicast").(*mcast.Manager)
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
							fmt.Fprintf(e.stderr, "multicast: %s, pass %d, %s sent, %d members\n", inf.State, inf.Pass, units.Bytes(inf.SentBytes), len(inf.Members))
						}
					}
				}
			})
		},
	}
	o.Add(c.Flags(), "")
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
				if ss, err = mcast.Sessions(c.Context(), r); err != nil {
					return err
				}
			} else {
				err := e.withStore(func(st *store.Store) error {
					m, _ := e.service("multicast").(*mcast.Manager)
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
		state := s.State
		if s.Sealed {
			state += " (sealed)"
		}
		fmt.Fprintf(w, "session %s  %s  %s on %s  %s, pass %d, %d objects %s, sent %s at up to %.0f Mbit/s, %.1f s\n",
			s.ID, s.Want.Short(), s.Group, s.Iface, state, s.Pass, s.Objects, units.Bytes(s.Bytes), units.Bytes(s.SentBytes), float64(s.RateBits)/1e6, s.Seconds)
		if s.FEC != "" && s.FEC != "off" {
			fmt.Fprintf(w, "  FEC %s: %d repair shards over %d blocks; %d blocks needed repairs (%.1f expected), %d repair datagrams\n",
				s.FEC, s.FECShards, s.FECGroups, s.RepairGroups, s.FECPredicted, s.RepairBlocks)
		}
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
			fmt.Fprintf(tw, "  %s\t%s\t%s%s\t%s\t%s\t%.1f%%\t%d\n", m.Name, m.Addr, m.State, late, units.Bytes(int64(m.GotBytes)), units.Bytes(int64(m.NeedBytes)), m.LossPct, m.NakRanges)
		}
		tw.Flush()
	}
}
