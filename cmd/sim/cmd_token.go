package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/systemimager/sim/client/catalog"
	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
)

// API tokens of a server's store (ARCHITECTURE.md "Roles and tokens").

func newTokenCommand(e *env) *cobra.Command {
	c := &cobra.Command{
		Use:   "token",
		Short: "API tokens with roles: read, node (one node's own), admin",
		Long: `The tokens sim serve accepts besides --token-file's, each with a role:
read (fetch anything), node (read, and report its own install status; a node
token names its node and can speak only for it), admin (push, move refs,
commit remotely, act for any node). Only the SHA-256 of a token is stored:
sim token add prints the token once. Revoking works at once, also while sim
serve runs.`,
	}
	var role, node string
	add := &cobra.Command{
		Use:   "add NAME --role read|node|admin [--node NODE]",
		Short: "Make a token; the last line on stdout is the token",
		Long: `Make a token named NAME with a role. A node token speaks for --node NODE
(default: NAME): give it to that node's installer (sim.token= on its kernel
command line, or sim initrd build --token-file for a per-node initrd); the
installed node keeps it in its store (/var/lib/sim/token, mode 0600).`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			r, err := simsync.ParseRole(role)
			if err != nil {
				return usageError{fmt.Errorf("token add: --role: %v", err)}
			}
			switch {
			case r == simsync.RoleNode && node == "":
				node = args[0]
			case r != simsync.RoleNode && node != "":
				return usageError{fmt.Errorf("token add: --node goes with --role node")}
			}
			if node != "" {
				if err := catalog.CheckNodeName(node); err != nil {
					return usageError{err}
				}
			}
			tok, err := simsync.NewToken()
			if err != nil {
				return err
			}
			return e.withStore(func(st *store.Store) error {
				rec := store.Token{Name: args[0], Role: r.String(), Node: node, Created: time.Now().UTC()}
				if err := st.AddToken(rec, simsync.TokenHash(tok)); err != nil {
					return err
				}
				what := "role " + rec.Role
				if node != "" {
					what += ", node " + node
				}
				fmt.Fprintf(e.stderr, "token %s (%s): shown once, store it now\n", rec.Name, what)
				fmt.Fprintln(e.stdout, tok)
				return nil
			})
		},
	}
	add.Flags().StringVar(&role, "role", "", "`ROLE`: read, node or admin")
	add.Flags().StringVar(&node, "node", "", "the `NODE` a node token speaks for (default: NAME)")
	list := &cobra.Command{
		Use:   "list",
		Short: "List the tokens (names, roles, nodes; never the tokens)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, args []string) error {
			return e.withStore(func(st *store.Store) error {
				toks, err := st.Tokens()
				if err != nil {
					return err
				}
				if e.json {
					if toks == nil {
						toks = []store.Token{}
					}
					return e.printJSON(toks)
				}
				tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tROLE\tNODE\tCREATED")
				for _, t := range toks {
					n := t.Node
					if n == "" {
						n = "-"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.Name, t.Role, n, t.Created.Local().Format(time.DateTime))
				}
				return tw.Flush()
			})
		},
	}
	e.addJSONFlag(list)
	revoke := &cobra.Command{
		Use:   "revoke NAME...",
		Short: "Revoke tokens: they stop working at once",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return e.withStore(func(st *store.Store) error {
				for _, n := range args {
					if err := st.RevokeToken(n); err != nil {
						return err
					}
				}
				return nil
			})
		},
	}
	c.AddCommand(add, list, revoke)
	return c
}
