package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/client/install"
	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
)

type installOptions struct {
	from, image, node, mac, disk, target string
	rf                                   remoteFlags
	tf                                   transportFlags
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
Each step is reported to the server (sim nodes shows the last one). Any
failure stops the install with a message naming the step, and the disk is
not marked installed. Usable from any rescue system as root.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, args []string) error {
			if o.from == "" {
				return usageError{errors.New("install: --from URL is required")}
			}
			if o.mac == "" && o.node == "" {
				o.mac = firstMAC()
			}
			res, err := runInstall(c.Context(), e, &o)
			if err != nil {
				return err
			}
			if e.json {
				return e.printJSON(res)
			}
			fmt.Fprintf(e.stdout, "installed %s (%s) on %s in %.1fs, %s received\n", res.Installed.Image,
				res.Installed.Commit.Short(), res.Disk, res.Elapsed.Seconds(), fmtBytes(res.Bytes))
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&o.from, "from", "", "the sim server's `URL`")
	f.StringVar(&o.image, "image", "", "install `REF` instead of the node's image")
	f.StringVar(&o.node, "node", "", "install as node `NAME`")
	f.StringVar(&o.mac, "mac", "", "identify this machine by `MAC` (default: the first NIC's)")
	f.StringVar(&o.disk, "disk", "", "install on `DISK` (overrides node and layout)")
	f.StringVar(&o.target, "target", "/run/sim/target", "mount the new root at `DIR` while installing")
	o.rf.add(c)
	o.tf.add(c)
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

// runInstall asks the server for the configuration, then installs,
// reporting every step; failures before the install starts are reported
// too, so the server always learns why a node stopped.
func runInstall(ctx context.Context, e *env, o *installOptions) (*install.Result, error) {
	r, err := o.rf.remote(e, o.from)
	if err != nil {
		return nil, usageError{err}
	}
	report := func(s install.Status) { postStatus(ctx, r, s) }
	q := url.Values{}
	for k, v := range map[string]string{"node": o.node, "mac": o.mac, "image": o.image} {
		if v != "" {
			q.Set(k, v)
		}
	}
	cfg, err := getConfig(ctx, r, q)
	if err != nil {
		err = fmt.Errorf("install: ask %s who this machine is (%s): %w", r.URL, q.Encode(), err)
		report(install.Status{Node: o.node, MAC: o.mac, Image: o.image, Step: "config", State: install.Failed, Message: err.Error(), Time: time.Now().UTC()})
		return nil, err
	}
	fetch := func(ctx context.Context, st *store.Store, id chunk.ID) (simsync.PullStats, error) {
		tr, finish, err := o.tf.open(ctx, e, st, r)
		if err != nil {
			return simsync.PullStats{}, err
		}
		ps, err := simsync.FetchCommit(ctx, st, tr, id, true)
		if err == nil && finish != nil {
			err = finish(ctx)
		}
		return ps, err
	}
	return install.Run(ctx, install.Options{Config: cfg, Server: r.URL, Disk: o.disk, Target: o.target,
		Fetch: fetch, Report: report, Log: e.stderr})
}

func getConfig(ctx context.Context, r *simsync.Remote, q url.Values) (*install.Config, error) {
	var cfg *install.Config
	var err error
	// The network may still be settling right after DHCP: a few tries.
	for i := 0; i < 5; i++ {
		if cfg, err = getConfigOnce(ctx, r, q); err == nil || !isTransient(err) {
			return cfg, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Duration(i+1) * time.Second):
		}
	}
	return nil, err
}

type httpError struct {
	code int
	msg  string
}

func (h *httpError) Error() string { return fmt.Sprintf("%d: %s", h.code, h.msg) }

func isTransient(err error) bool {
	var h *httpError
	return !errors.As(err, &h) || h.code >= 500
}

func getConfigOnce(ctx context.Context, r *simsync.Remote, q url.Values) (*install.Config, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", r.URL+"/v1/install/config?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	bearer(req, r)
	resp, err := r.Client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != 200 {
		return nil, &httpError{resp.StatusCode, strings.TrimSpace(string(b))}
	}
	var cfg install.Config
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, fmt.Errorf("bad answer: %w", err)
	}
	return &cfg, nil
}

// postStatus reports to the server; a server that cannot be reached does
// not stop the install (the console has the same lines).
func postStatus(ctx context.Context, r *simsync.Remote, s install.Status) {
	b, _ := json.Marshal(s)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "POST", r.URL+"/v1/install/status", bytes.NewReader(b))
	if err != nil {
		return
	}
	req.Header.Set("Content-Type", "application/json")
	bearer(req, r)
	if resp, err := r.Client.Do(req); err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

// bearer adds the remote's token (a server with --read-token wants it on
// every request, the install ones included).
func bearer(req *http.Request, r *simsync.Remote) {
	if r.Token != "" {
		req.Header.Set("Authorization", "Bearer "+r.Token)
	}
}
