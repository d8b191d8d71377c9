package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	gosync "sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/systemimager/sim/client/catalog"
	"github.com/systemimager/sim/client/install"
	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
)

// The install extension of sim serve: what a netbooting node asks for.
//
//	GET  /v1/install/config?mac=M&node=N&image=REF  the node's install.Config
//	POST /v1/install/status                          an install.Status (JSON)
//	GET  /v1/install/status                          the last status of every node
//	GET  /v1/install/ipxe?mac=M                      an iPXE script booting the initrd
//	GET  /v1/install/kernel, /v1/install/initrd      from serve --netboot DIR
func init() { registerServeExtension(func() serveExtension { return &installExt{} }) }

type installExt struct {
	netboot string
	mu      gosync.Mutex
	last    map[string]install.Status
}

func (x *installExt) flags(c *cobra.Command) {
	c.Flags().StringVar(&x.netboot, "netboot", "", "serve the kernel and initrd `DIR` (from sim initrd build) for netboot at /v1/install/")
}

// statusLog is where every install status is appended, one JSON a line,
// so `sim nodes` shows the last outcome whether or not the server runs.
func statusLog(storeDir string) string { return filepath.Join(storeDir, "install-status.jsonl") }

func (x *installExt) start(ctx context.Context, e *env, st *store.Store, srv *simsync.Server, url string) (func(), error) {
	x.last = lastStatuses(e.storeDir)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/install/config", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		cfg, err := installConfig(st, q.Get("node"), q.Get("mac"), q.Get("image"))
		if err != nil {
			code := http.StatusBadRequest
			if errors.Is(err, store.ErrNotFound) || errors.Is(err, catalog.ErrNoLayout) || errors.Is(err, errUnknownNode) {
				code = http.StatusNotFound
			}
			http.Error(w, err.Error(), code)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-cache")
		json.NewEncoder(w).Encode(cfg)
	})
	mux.HandleFunc("POST /v1/install/status", func(w http.ResponseWriter, r *http.Request) {
		var s install.Status
		dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
		if err := dec.Decode(&s); err != nil || s.Step == "" || len(s.Message) > 16<<10 {
			http.Error(w, "bad status", http.StatusBadRequest)
			return
		}
		s.Time = time.Now().UTC() // the server's clock, not the node's
		who := s.Node
		if who == "" {
			who = s.MAC
		}
		if who == "" {
			who = r.RemoteAddr
		}
		b, _ := json.Marshal(struct {
			Who  string `json:"who"`
			From string `json:"from"`
			install.Status
		}{who, r.RemoteAddr, s})
		x.mu.Lock()
		x.last[who] = s
		f, err := os.OpenFile(statusLog(e.storeDir), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err == nil {
			f.Write(append(b, '\n'))
			f.Close()
		}
		x.mu.Unlock()
		if s.State == install.Failed || s.State == install.Done {
			srv.Log.Printf("install %s: %s at %s: %s", who, s.State, s.Step, s.Message)
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /v1/install/status", func(w http.ResponseWriter, r *http.Request) {
		x.mu.Lock()
		b, _ := json.Marshal(x.last)
		x.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-cache")
		w.Write(b)
	})
	mux.HandleFunc("GET /v1/install/ipxe", func(w http.ResponseWriter, r *http.Request) {
		// The address the node used to reach us is the one it can use
		// again (--listen may name a loopback or wildcard address).
		base := "http://" + r.Host
		if r.TLS != nil {
			base = "https://" + r.Host
		}
		q := r.URL.Query()
		args := "sim.server=" + base
		if m := q.Get("mac"); m != "" {
			mac, err := catalog.NormalizeMAC(m)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			reg, err := catalog.LoadRegistry(st)
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			n := reg.ByMAC(mac)
			if n == nil {
				http.Error(w, "no node has MAC "+mac, http.StatusNotFound)
				return
			}
			args += " sim.node=" + n.Name
		}
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(w, ipxeScript(base, args))
	})
	for _, f := range []string{"kernel", "initrd"} {
		mux.HandleFunc("GET /v1/install/"+f, func(w http.ResponseWriter, r *http.Request) {
			if x.netboot == "" {
				http.Error(w, "sim serve runs without --netboot DIR", http.StatusNotFound)
				return
			}
			name := map[string]string{"kernel": "vmlinuz", "initrd": "initrd.img"}[f]
			http.ServeFile(w, r, filepath.Join(e.path(x.netboot), name))
		})
	}
	srv.Extra["/v1/install/"] = mux
	return nil, nil
}

func ipxeScript(base, args string) string {
	return fmt.Sprintf("#!ipxe\n# sim netboot: install this node from %s\nkernel %s/v1/install/kernel console=ttyS0,115200 console=tty0 %s\ninitrd %s/v1/install/initrd\nboot\n", base, base, args, base)
}

var errUnknownNode = errors.New("unknown node")

// installConfig answers a node: by name, else by MAC; a node nobody
// registered may still install an image named explicitly (it then gets no
// identity beyond the image's).
func installConfig(st *store.Store, node, mac, image string) (*install.Config, error) {
	reg, err := catalog.LoadRegistry(st)
	if err != nil {
		return nil, err
	}
	var n *catalog.Node
	switch {
	case node != "":
		if err := catalog.CheckNodeName(node); err != nil {
			return nil, err
		}
		if n = reg.Nodes[node]; n == nil {
			return nil, fmt.Errorf("%w %q (sim node add %s --mac … --image …)", errUnknownNode, node, node)
		}
	case mac != "":
		m, err := catalog.NormalizeMAC(mac)
		if err != nil {
			return nil, err
		}
		mac = m
		n = reg.ByMAC(m)
	}
	cfg := &install.Config{MAC: mac}
	var res *catalog.Resolved
	if n != nil {
		if res, err = reg.Resolve(n); err != nil {
			return nil, err
		}
		cfg.Node, cfg.Hostname, cfg.IP, cfg.Gateway, cfg.Disk = n.Name, n.Name, n.IP, n.Gateway, n.Disk
		if n.MAC != "" {
			cfg.MAC = n.MAC
		}
		cfg.Image = res.Image
	}
	if image != "" {
		cfg.Image = image // the command line wins: reinstall with another image
	}
	if cfg.Image == "" {
		if mac != "" && node == "" {
			return nil, fmt.Errorf("%w: no node has MAC %s, and no sim.image= was given", errUnknownNode, mac)
		}
		return nil, errors.New("no image: give sim.image=REF or register the node")
	}
	if catalog.IsSpecial(cfg.Image) {
		return nil, fmt.Errorf("%s is a catalog document, not a system image", cfg.Image)
	}
	if cfg.Commit, err = st.Resolve(cfg.Image); err != nil {
		return nil, fmt.Errorf("image %s: %w", cfg.Image, err)
	}
	if cfg.LayoutID, err = catalog.LayoutFor(st, cfg.Image); err != nil {
		return nil, err
	}
	lb, err := catalog.ReadFile(st, cfg.LayoutID, catalog.LayoutFile)
	if err != nil {
		return nil, err
	}
	cfg.Layout = string(lb)
	if res != nil {
		for _, o := range res.Overrides {
			id, err := st.ImageHead(catalog.OverrideImage(o))
			if err != nil {
				return nil, fmt.Errorf("node %s: override %s: %w", n.Name, o, err)
			}
			cfg.Overrides = append(cfg.Overrides, install.Doc{Name: o, Commit: id})
		}
		for _, s := range res.Scripts {
			id, err := st.ImageHead(catalog.ScriptImage(s))
			if err != nil {
				return nil, fmt.Errorf("node %s: script %s: %w", n.Name, s, err)
			}
			cfg.Scripts = append(cfg.Scripts, install.Doc{Name: s, Commit: id})
		}
	}
	return cfg, nil
}

// lastStatuses reads the status log: the last report of each node.
func lastStatuses(storeDir string) map[string]install.Status {
	out := map[string]install.Status{}
	f, err := os.Open(statusLog(storeDir))
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var s struct {
			Who string `json:"who"`
			install.Status
		}
		if json.Unmarshal(sc.Bytes(), &s) == nil && s.Who != "" {
			out[s.Who] = s.Status
		}
	}
	return out
}
