package main

import (
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/client"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/store/sign"
)

// Signed commits and the trust policy (ARCHITECTURE.md "Signatures"):
// sim key gen, sim sign, sim verify, sim trust.

func newKeyCommand(e *env) *cobra.Command {
	c := &cobra.Command{Use: "key", Short: "Signing keys (ed25519)"}
	var dir string
	gen := &cobra.Command{
		Use:   "gen NAME [--dir DIR]",
		Short: "Make a signing key: DIR/NAME.key (private, mode 0600) and DIR/NAME.pub",
		Long: `Make an ed25519 signing key: DIR/NAME.key, the private key (mode 0600;
keep it off the image server if you can), and DIR/NAME.pub, the public key
that stores and nodes trust (sim trust add NAME.pub, sim initrd build
--trust NAME.pub, sim.trust= on a kernel command line). Existing files are
never replaced. The last line on stdout is the public key line.`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			k, err := sign.Generate(args[0])
			if err != nil {
				return usageError{err}
			}
			priv, pub, err := sign.WriteKeyPair(e.path(dir), k)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stderr, "wrote %s (private, mode 0600) and %s; key %s\n", priv, pub, k.Public().ID())
			fmt.Fprintln(e.stdout, k.Public().Line())
			return nil
		},
	}
	gen.Flags().StringVar(&dir, "dir", ".", "write the key files into `DIR`")
	c.AddCommand(gen)
	return c
}

// readSigningKey reads --sign/--key's private key file ("" → nil).
func (e *env) readSigningKey(file string) (*sign.PrivateKey, error) {
	if file == "" {
		return nil, nil
	}
	k, err := sign.ReadPrivateKey(e.path(file))
	if err != nil {
		return nil, err
	}
	return &k, nil
}

func newSignCommand(e *env) *cobra.Command {
	var key string
	c := &cobra.Command{
		Use:   "sign REF... --key KEY",
		Short: "Sign commits (images, tags, commit ids; layouts, overrides, scripts) with a private key",
		Long: `Sign the commit each REF names with the private key file KEY (sim key
gen). The signature covers the commit's canonical bytes, hence its whole
tree; it is stored beside the commit and travels with it (push, pull,
clone, node fetches), so it can be added long after the commit was made.
Signing twice with one key keeps the first signature.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if key == "" {
				return usageError{errors.New("sign: --key KEY is required")}
			}
			k, err := e.readSigningKey(key)
			if err != nil {
				return err
			}
			return e.withStore(func(st *store.Store) error {
				for _, ref := range args {
					id, err := st.Resolve(ref)
					if err != nil {
						return err
					}
					if err := client.SignCommit(st, id, *k); err != nil {
						return err
					}
					fmt.Fprintf(e.stderr, "signed %s (%s) with %s\n", ref, id.Short(), k.Public())
				}
				return nil
			})
		},
	}
	c.Flags().StringVar(&key, "key", "", "the private key `FILE` (NAME.key)")
	return c
}

// sigJSON is one signature in sim verify --json.
type sigJSON struct {
	KeyID   string    `json:"key_id"`
	Key     []byte    `json:"key"`
	Name    string    `json:"name"`              // the store's name for a trusted key, else the signer's
	Trusted bool      `json:"trusted"`           // by a key this store trusts
	Valid   bool      `json:"valid"`             // verifies against the commit
	Time    time.Time `json:"time"`              // when signed (the signer's clock; not signed)
	Error   string    `json:"error,omitempty"`   // why it does not verify
	Claimed string    `json:"claimed,omitempty"` // the signer's own name for the key, when it differs
}

func newVerifyCommand(e *env) *cobra.Command {
	c := &cobra.Command{
		Use:   "verify REF",
		Short: "Check REF's signatures against the keys this store trusts",
		Long: `List the signatures of the commit REF names and check each against the
commit and the store's trusted keys (sim trust list). Exits 0 when at least
one valid signature is by a trusted key, 1 otherwise, naming what is
missing.`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return e.withStore(func(st *store.Store) error {
				id, err := st.Resolve(args[0])
				if err != nil {
					return err
				}
				raw, err := st.CommitRaw(id)
				if err != nil {
					return err
				}
				sigs, err := st.Signatures(id)
				if err != nil {
					return err
				}
				p, err := st.Policy()
				if err != nil {
					return err
				}
				out := []sigJSON{}
				for _, s := range sigs {
					j := sigJSON{KeyID: s.KeyID(), Key: s.Key, Name: s.Name, Time: s.Time, Valid: true}
					if k, ok := p.Trusted(s.Key); ok {
						j.Trusted, j.Name = true, k.Name
						if s.Name != k.Name {
							j.Claimed = s.Name
						}
					}
					if err := s.Verify(id, raw); err != nil {
						j.Valid, j.Error = false, err.Error()
					}
					out = append(out, j)
				}
				signer, verr := p.Check(id, raw, sigs)
				if e.json {
					res := struct {
						Commit     chunk.ID  `json:"commit"`
						Signatures []sigJSON `json:"signatures"`
						TrustedBy  string    `json:"trusted_by,omitempty"`
						Required   bool      `json:"required"`
					}{id, out, signer.Name, p.Require}
					if err := e.printJSON(res); err != nil {
						return err
					}
					return verr
				}
				tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
				for _, s := range out {
					state := "untrusted"
					switch {
					case !s.Valid:
						state = "INVALID"
					case s.Trusted:
						state = "trusted"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", state, s.KeyID, s.Name, s.Time.Local().Format(time.DateTime))
				}
				tw.Flush()
				if verr != nil {
					return verr
				}
				fmt.Fprintf(e.stdout, "commit %s: good signature by %s\n", id.Short(), signer)
				return nil
			})
		},
	}
	e.addJSONFlag(c)
	return c
}

func newTrustCommand(e *env) *cobra.Command {
	c := &cobra.Command{
		Use:   "trust",
		Short: "The keys this store trusts, and whether it requires signatures",
		Long: `A store's trust policy: the public keys it trusts (sim trust add, list, rm)
and whether it requires a valid signature by one of them (sim trust require
on|off). A store that requires signatures refuses to check out, fetch (a
node's checkout --from, the installer, pull) or accept in a push any
commit without one, naming the commit and the keys. checkout, pull and
serve also take --require-signature for one run.`,
	}
	add := &cobra.Command{
		Use:   "add FILE...",
		Short: "Trust the public keys in FILEs (NAME.pub from sim key gen, or a bare base64 key)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			var keys []sign.PublicKey
			for _, f := range args {
				k, err := sign.ReadPublicKey(e.path(f))
				if err != nil {
					return err
				}
				keys = append(keys, k)
			}
			return e.withStore(func(st *store.Store) error {
				for _, k := range keys {
					if err := st.TrustKey(k); err != nil {
						return err
					}
					fmt.Fprintf(e.stderr, "trusting %s\n", k)
				}
				return nil
			})
		},
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List the trusted keys and the policy",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, args []string) error {
			return e.withStore(func(st *store.Store) error {
				p, err := st.Policy()
				if err != nil {
					return err
				}
				if e.json {
					type keyJSON struct {
						Name  string `json:"name"`
						KeyID string `json:"key_id"`
						Key   []byte `json:"key"`
					}
					keys := []keyJSON{}
					for _, k := range p.Keys {
						keys = append(keys, keyJSON{k.Name, k.ID(), k.Key})
					}
					return e.printJSON(struct {
						Require bool      `json:"require_signature"`
						Keys    []keyJSON `json:"keys"`
					}{p.Require, keys})
				}
				tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
				for _, k := range p.Keys {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", k.Name, k.ID(), k.Line())
				}
				tw.Flush()
				req := "off: unsigned commits are accepted"
				if p.Require {
					req = "on: commits need a valid signature by a key above"
				}
				fmt.Fprintf(e.stdout, "require-signature %s\n", req)
				return nil
			})
		},
	}
	e.addJSONFlag(list)
	rm := &cobra.Command{
		Use:   "rm NAME...",
		Short: "Stop trusting keys",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return e.withStore(func(st *store.Store) error {
				for _, n := range args {
					if err := st.UntrustKey(n); err != nil {
						return err
					}
				}
				return nil
			})
		},
	}
	require := &cobra.Command{
		Use:   "require on|off",
		Short: "Require (or stop requiring) a signature by a trusted key on every commit",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			var on bool
			switch args[0] {
			case "on":
				on = true
			case "off":
			default:
				return usageError{fmt.Errorf("trust require: want on or off, not %q", args[0])}
			}
			return e.withStore(func(st *store.Store) error {
				if on {
					if keys, err := st.TrustedKeys(); err != nil {
						return err
					} else if len(keys) == 0 {
						return errors.New("trust require on: this store trusts no key yet (sim trust add FILE first), so it would refuse everything")
					}
				}
				return st.SetRequireSignature(on)
			})
		},
	}
	c.AddCommand(add, list, rm, require)
	return c
}
