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
		Short: "API tokens with roles: read, enroll (a fleet's boot token), node (one node's own), admin",
		Long: `The tokens sim serve accepts besides --token-file's, each with a role:
read (fetch anything); enroll (read, and have nodes enrolled: the boot token
of a fleet, for kernel command lines and shared initrds; a registered node's
install config asked with it comes with a new token of the node's own,
node-NAME, which the installer keeps; it reports nothing, takes no orders,
pushes nothing); node (read, report its own install status, state and
drift, take its own orders; a node token names its node and can speak only
for it); admin (push, move refs, commit remotely, enrol nodes, act for any
node). Read is in every role and admin has every right; enroll and node are
not above one another. Only the SHA-256 of a token is stored: sim token add
prints the token once. Revoking works at once, also while sim serve runs.`,
	}
	var role, node string
	add := &cobra.Command{
		Use:   "add NAME --role read|enroll|node|admin [--node NODE]",
		Short: "Make a token; the last line on stdout is the token",
		Long: `Make a token named NAME with a role.

An enroll token (sim token add boot --role enroll) is the one to put on a
kernel command line (sim.token=) or in a shared initrd (sim initrd build
--token-file): each node installing with it gets a node token of its own,
minted by the server (node-NAME; a reinstall replaces it), in its store
(/var/lib/sim/token, mode 0600), and never keeps the boot token.

A node token speaks for --node NODE (default: NAME). Give one by hand to a
node sim did not install (into its /var/lib/sim/token), or to a per-node
initrd or command line: a node installing with its own token keeps it.`,
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
	add.Flags().StringVar(&role, "role", "", "`ROLE`: read, enroll, node or admin")
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
