package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/spf13/cobra"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/client/install"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/store/sign"
	simsync "github.com/systemimager/sim/sync"
	"github.com/systemimager/sim/sync/units"
)

type installOptions struct {
	from, image, node, mac, disk, target string
	after, kexecDir                      string
	trust                                []string
	rf                                   remoteFlags
	tf                                   simsync.TransportFlags
}

func newInstallCommand(e *env) *cobra.Command {
	var o installOptions
	c := &cobra.Command{
		Use:   "install --from URL [--node NAME | --mac MAC] [--image REF] [--disk DISK]",
		Short: "Install this machine from a sim server: partition, format, check out, make bootable",
		Long: `Install this machine from the sim server at URL, as the netboot initrd does:
ask the server who this machine is (by --node, else by --mac, default the MAC
of the first network interface) and what it gets, then partition the disk
with the image's layout (ALL DATA ON IT IS LOST), make the filesystems,
mount them under --target, fetch and check the image out, lay the overrides
over it, write hostname, network and fstab (by UUID), run the post-install
scripts in a chroot, install GRUB for BIOS and UEFI from the image's own
packages, and record the installed commit in /var/lib/sim on the new root.
Each step is reported to the server (sim nodes shows the last one; reports
need the node's token). Any failure stops the install with a
message naming the step, and the disk is not marked installed. Usable from
any rescue system as root.

--trust FILE (repeatable) makes the node trust that public key and require
a valid signature by a trusted key on every commit it installs: image,
layout (checked before the disk is touched), overrides, scripts. The
node's store keeps the keys, the policy, --ca's certificates and the node's
own token (mode 0600) for its later updates and its agent.

Tokens (--token-file or $SIM_TOKEN): with an enroll token (sim token add
boot --role enroll; the one to share on kernel command lines) or an admin
token, the server mints this node a token of its own (node-NAME) with its
config, and the installer keeps that one, never the token it was given. A
node token naming this node is kept as it is (a per-node initrd's). With a
read token or none, the node gets no token: its agent then needs one by
hand (sim token add NAME --role node --node NAME).`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, args []string) error {
			if o.from == "" {
				return usageError{errors.New("install: --from URL is required")}
			}
			if o.mac == "" && o.node == "" {
				o.mac = firstMAC()
			}
			r, err := o.rf.remote(e, o.from)
			if err != nil {
				return usageError{err}
			}
			var trust []sign.PublicKey
			for _, f := range o.trust {
				k, err := sign.ReadPublicKey(e.path(f))
				if err != nil {
					return err
				}
				trust = append(trust, k)
			}
			var ca []byte
			if o.rf.ca != "" {
				if ca, err = os.ReadFile(e.path(o.rf.ca)); err != nil {
					return err
				}
			}
			// Each commit of the install (image, overrides, scripts)
			// comes through the chosen transport into the node's store.
			fetch := func(ctx context.Context, st *store.Store, id chunk.ID) (simsync.PullStats, error) {
				tenv := e.transportEnv(st, r)
				if o.node != "" {
					tenv.Name = o.node
				}
				tr, err := o.tf.Open(ctx, tenv)
				if err != nil {
					return simsync.PullStats{}, err
				}
				stop := e.showFetch("fetch "+id.Short(), r)
				ps, err := simsync.FetchCommit(ctx, st, r, tr, id, true)
				stop()
				if ferr := tr.Finish(ctx); err == nil {
					err = ferr
				}
				return ps, err
			}
			if err := install.CheckAfter(o.after); err != nil {
				return usageError{fmt.Errorf("install --after: %w", err)}
			}
			res, err := install.FromServer(c.Context(), r, install.Who{Node: o.node, MAC: o.mac, Image: o.image},
				install.Options{Disk: o.disk, Target: o.target, After: o.after, KexecDir: o.kexecDir, Log: e.stderr, Trust: trust, RequireSignature: o.rf.requireSig, CA: ca,
					Check: func(ctx context.Context, st *store.Store, id chunk.ID) error {
						return simsync.CheckCommit(ctx, st, r, id)
					},
					ShowCheckout: func(p *snapshot.Progress) func() { return e.showProgress("checkout", p) }}, fetch)
			if err != nil {
				return err
			}
			if e.json {
				return e.printJSON(res)
			}
			fmt.Fprintf(e.stdout, "installed %s (%s) on %s in %.1fs, %s received\n", res.Installed.Image,
				res.Installed.Commit.Short(), res.Disk, res.Elapsed.Seconds(), units.Bytes(res.Bytes))
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&o.from, "from", "", "the sim server's `URL` (URL1,URL2,...: frontends of one store, the next used when one fails)")
	f.StringVar(&o.image, "image", "", "install `REF` instead of the node's image")
	f.StringVar(&o.node, "node", "", "install as node `NAME`")
	f.StringVar(&o.mac, "mac", "", "identify this machine by `MAC` (default: the first NIC's)")
	f.StringVar(&o.disk, "disk", "", "install on `DISK` (overrides the node's disk and the layout's first disk)")
	f.StringVar(&o.target, "target", "/run/sim/target", "mount the new root at `DIR` while installing")
	f.StringVar(&o.after, "after", "", "the after-install `ACTION` to record (poweroff, reboot, kexec, shell; default: the node's or group's --after, else poweroff); the netboot installer carries it out")
	f.StringVar(&o.kexecDir, "kexec-dir", "", "write the decided after-install action into `DIR`/after and, for kexec, the installed system's kernel, initrd and command line (the netboot installer's PID 1 kexecs them)")
	f.StringArrayVar(&o.trust, "trust", nil, "trust the public key `FILE` and require every installed commit to be signed by a trusted key (repeatable)")
	o.rf.add(c)
	o.rf.addRequire(c)
	o.tf.Add(c.Flags())
	e.addJSONFlag(c)
	return c
}

// firstMAC is the MAC of the first non-loopback interface that has one.
func firstMAC() string {
	ifs, _ := net.Interfaces()
	for _, i := range ifs {
		if i.Flags&net.FlagLoopback == 0 && len(i.HardwareAddr) == 6 {
			return i.HardwareAddr.String()
		}
	}
	return ""
}
