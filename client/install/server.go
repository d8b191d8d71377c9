package install

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	gosync "sync"
	"time"

	"github.com/systemimager/sim/client/catalog"
	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
)

// The install protocol, server side (ARCHITECTURE.md "Install
// protocol"): what a netbooting node asks sim serve.
//
//	GET  /v1/install/config?mac=M&node=N&image=REF  the node's Config (with an enroll
//	                                                 or admin token: and a new node token)
//	POST /v1/install/status                          a Status (JSON)
//	GET  /v1/install/status                          the last Status of every node
//	GET  /v1/install/ipxe?mac=M                      an iPXE script booting the initrd
//	GET  /v1/install/kernel, /v1/install/initrd      from the netboot directory

// Service answers the install protocol for a store.
type Service struct {
	Store *store.Store
	// Netboot is the directory holding vmlinuz and initrd.img (sim
	// initrd build); "" serves none.
	Netboot string
	Log     *log.Logger
	// OnStatus, if set, is told of every status report (who: the node's
	// name, else its MAC, else its address), after it is logged: the
	// server's live view of its nodes (client/fleet) hooks in here. It
	// must not block.
	OnStatus func(who string, s Status)

	mu   gosync.Mutex
	last map[string]Status
	// sent is, on an S3 store, the last status of each node uploaded to
	// the bucket by this frontend.
	sent map[string]Status
}

// NewService serves st's install protocol, picking up the last status
// of every node from the store's status log (and, on an S3 store, every
// frontend's reports in the bucket).
func NewService(st *store.Store, netboot string, lg *log.Logger) *Service {
	if lg == nil {
		lg = log.New(io.Discard, "", 0)
	}
	return &Service{Store: st, Netboot: netboot, Log: lg, last: readStatusLog(st.Dir()), sent: map[string]Status{}}
}

// DocKind is the kind of the install reports' per-node documents in an S3
// store's bucket: fleet/installs/WHO/… (store.NodeDocs), each a line of
// the status log (JSON {"who","from",Status…}).
const DocKind = "installs"

// PublishEvery: on an S3 store a frontend uploads a node's install status
// when its step or state changed, else (progress) at most this often.
var PublishEvery = 15 * time.Second

// docsMaxAge bounds how stale the bucket's install reports may be when a
// netbooting node's script or token is decided (one LIST per second at
// most, however many nodes boot).
const docsMaxAge = time.Second

// Statuses is the last status of every node: this frontend's, and on an
// S3 store every frontend's (the newest of each node).
func (x *Service) Statuses() map[string]Status {
	x.mu.Lock()
	out := make(map[string]Status, len(x.last))
	for k, v := range x.last {
		out[k] = v
	}
	x.mu.Unlock()
	if err := mergeDocs(x.Store, out, docsMaxAge); err != nil {
		x.Log.Printf("install: the other frontends' reports: %v", err)
	}
	return out
}

// mergeDocs puts into m the bucket's install reports newer than m's (a
// local store has none).
func mergeDocs(st *store.Store, m map[string]Status, maxAge time.Duration) error {
	docs := st.NodeDocs(DocKind)
	if docs == nil {
		return nil
	}
	got, err := docs.Load(maxAge)
	var errs []error
	for _, d := range got {
		var r statusRecord
		if err := json.Unmarshal(d.Data, &r); err != nil {
			errs = append(errs, fmt.Errorf("install report of %s: %w", d.Node, err))
			continue
		}
		if cur, ok := m[d.Node]; !ok || r.Status.Time.After(cur.Time) {
			m[d.Node] = r.Status
		}
	}
	return errors.Join(append(errs, err)...)
}

// publish uploads who's status to the bucket of an S3 store when it is
// news: another step or state than this frontend last uploaded, or
// PublishEvery since. It runs before the report is answered, so a
// node told its install is done is known to be on every frontend.
func (x *Service) publish(who string, rec []byte, s Status) error {
	docs := x.Store.NodeDocs(DocKind)
	if docs == nil {
		return nil
	}
	x.mu.Lock()
	p, ok := x.sent[who]
	x.mu.Unlock()
	if ok && p.Step == s.Step && p.State == s.State && s.Time.Sub(p.Time) < PublishEvery {
		return nil
	}
	if err := docs.Put(who, s.Time, rec); err != nil {
		x.Log.Printf("install %s: upload the report: %v", who, err)
		return err
	}
	x.mu.Lock()
	x.sent[who] = s
	x.mu.Unlock()
	return nil
}

// StatusLog is where every install status is appended, one JSON a line,
// so `sim nodes` shows the last outcome whether or not the server runs.
func StatusLog(storeDir string) string { return filepath.Join(storeDir, "install-status.jsonl") }

// maxStatus bounds a status report's body, maxMessage its message.
const (
	maxStatus  = 64 << 10
	maxMessage = 16 << 10
)

// Mount serves the protocol on srv.
func (x *Service) Mount(srv *simsync.Server) {
	srv.Handle("GET /v1/install/config", http.HandlerFunc(x.serveConfig))
	// A status names its node, and only that node's token (or an admin
	// token) may report for it.
	srv.HandleRole("POST /v1/install/status", simsync.RoleNode, http.HandlerFunc(x.postStatus))
	srv.Handle("GET /v1/install/status", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		b, _ := json.Marshal(x.Statuses())
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-cache")
		w.Write(b)
	}))
	srv.Handle("GET /v1/install/ipxe", http.HandlerFunc(x.serveIPXE))
	for _, f := range []struct{ path, file string }{{"kernel", "vmlinuz"}, {"initrd", "initrd.img"}} {
		srv.Handle("GET /v1/install/"+f.path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if x.Netboot == "" {
				http.Error(w, "sim serve runs without --netboot DIR", http.StatusNotFound)
				return
			}
			http.ServeFile(w, r, filepath.Join(x.Netboot, f.file))
		}))
	}
}

func (x *Service) serveConfig(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	cfg, err := ConfigFor(x.Store, q.Get("node"), q.Get("mac"), q.Get("image"))
	if err != nil {
		code := http.StatusBadRequest
		if errors.Is(err, store.ErrNotFound) || errors.Is(err, catalog.ErrNoLayout) || errors.Is(err, ErrUnknownNode) {
			code = http.StatusNotFound
		}
		http.Error(w, err.Error(), code)
		return
	}
	cache := "no-cache"
	// Enrolment: an enroll (or admin) token asking for a registered
	// node's config gets that node a token of its own, so the shared
	// boot token never stays on a node. A read or anonymous request
	// mints nothing.
	if p := simsync.PrincipalOf(r); p.Role.Enrolls() && cfg.Node != "" {
		// The enroll token is shared (every netboot initrd, every
		// node's kernel command line has it): it may mint a node's
		// token only while that node is due for an install, never
		// for a node that is installed and running, whose identity
		// it would otherwise let anyone on the boot network take.
		// An admin token still may.
		if p.Role != simsync.RoleAdmin {
			if err := x.dueForInstall(cfg.Node); err != nil {
				http.Error(w, err.Error(), http.StatusForbidden)
				return
			}
		}
		if cfg.Token, err = simsync.MintNodeToken(x.Store, cfg.Node); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		cache = "no-store" // a secret: no cache keeps it
		x.Log.Printf("install %s: minted node token %s (asked with %s)", cfg.Node, simsync.NodeTokenName(cfg.Node), p)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", cache)
	json.NewEncoder(w).Encode(cfg)
}

// dueForInstall says whether node may be enrolled now: it has never
// finished an install, or an admin asked for a reinstall since its last
// one (sim node reinstall), the same rule that decides its netboot.
func (x *Service) dueForInstall(node string) error {
	last, ok := x.Statuses()[node]
	if !ok || last.State != Done {
		return nil
	}
	reg, err := catalog.LoadRegistry(x.Store)
	if err != nil {
		return fmt.Errorf("node %s: %w", node, err)
	}
	n := reg.Nodes[node]
	if n == nil || n.NetbootsToInstall(last.Time) {
		return nil
	}
	return fmt.Errorf("node %s was installed at %s: the enroll token mints no token for an installed node (sim node reinstall %s first)",
		node, last.Time.UTC().Format(time.RFC3339), node)
}

// statusRecord is one line of the status log.
type statusRecord struct {
	Who  string `json:"who"`
	From string `json:"from"`
	Status
}

func (x *Service) postStatus(w http.ResponseWriter, r *http.Request) {
	var s Status
	dec := json.NewDecoder(io.LimitReader(r.Body, maxStatus))
	if err := dec.Decode(&s); err != nil || s.Step == "" || len(s.Message) > maxMessage {
		http.Error(w, "bad status", http.StatusBadRequest)
		return
	}
	s.Time = time.Now().UTC() // the server's clock, not the node's
	// A node token speaks for its node: a report naming another is
	// refused, one naming none (the install failed before the node knew
	// its name) is the token's node's.
	p := simsync.PrincipalOf(r)
	if p.Role == simsync.RoleNode && s.Node == "" {
		s.Node = p.Node
	}
	if !simsync.AllowNode(w, r, s.Node) {
		return
	}
	who := s.Node
	if who == "" {
		who = s.MAC
	}
	if who == "" {
		who = r.RemoteAddr
	}
	b, _ := json.Marshal(statusRecord{who, r.RemoteAddr, s})
	x.mu.Lock()
	x.last[who] = s
	f, err := os.OpenFile(StatusLog(x.Store.Dir()), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err == nil {
		f.Write(append(b, '\n'))
		f.Close()
	}
	x.mu.Unlock()
	perr := x.publish(who, b, s)
	if s.State == Failed || s.State == Done {
		x.Log.Printf("install %s: %s at %s: %s", who, s.State, s.Step, s.Message)
	}
	if x.OnStatus != nil {
		x.OnStatus(who, s)
	}
	if perr != nil && s.State == Done {
		// The other frontends must learn of a finished install, or
		// they would netboot the node to install it again: 503 sends
		// the installer to retry, here or at its next frontend.
		http.Error(w, fmt.Sprintf("install %s: done, but not recorded in the bucket: %v", who, perr), http.StatusServiceUnavailable)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (x *Service) serveIPXE(w http.ResponseWriter, r *http.Request) {
	// The address the node used to reach us is the one it can use again
	// (--listen may name a loopback or wildcard address).
	base := "http://" + r.Host
	if r.TLS != nil {
		base = "https://" + r.Host
	}
	args := "sim.server=" + base
	if a := r.URL.Query().Get("append"); a != "" {
		extra, err := CheckAppend(a)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		args += " " + extra
	}
	if m := r.URL.Query().Get("mac"); m != "" {
		mac, err := catalog.NormalizeMAC(m)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		reg, err := catalog.LoadRegistry(x.Store)
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
		// Installed: boot the disk, until an admin asks for a
		// reinstall (a node set to netboot first would otherwise
		// reinstall at every boot).
		var done time.Time
		if last, ok := x.Statuses()[n.Name]; ok && last.State == Done {
			done = last.Time
		}
		if !n.NetbootsToInstall(done) {
			w.Header().Set("Content-Type", "text/plain")
			w.Header().Set("Cache-Control", "no-store")
			fmt.Fprint(w, LocalBootScript(n.Name, done))
			return
		}
	}
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("Cache-Control", "no-store")
	fmt.Fprint(w, IPXEScript(base, args))
}

// appendRE is one kernel argument sim netboot ipxe --append may carry to
// the server's script: a sim.KEY=VALUE whose value holds nothing iPXE
// would expand or split (no spaces, $, {, }, quotes).
var appendRE = regexp.MustCompile(`^sim\.[a-z]+=[A-Za-z0-9._/:+=,@%-]*$`)

// CheckAppend validates the extra kernel arguments of GET
// /v1/install/ipxe?append=…: sim.* arguments only (sim.transport=auto,
// sim.after=reboot, sim.token=…), since the script is built from them and
// anything else would let a URL put arbitrary words on a node's kernel
// command line; sim.server stays the server's own.
func CheckAppend(a string) (string, error) {
	words := strings.Fields(a)
	if len(words) > 16 {
		return "", fmt.Errorf("append: %d arguments, at most 16", len(words))
	}
	for _, w := range words {
		if !appendRE.MatchString(w) || strings.HasPrefix(w, "sim.server=") {
			return "", fmt.Errorf("append: %q: only sim.KEY=VALUE arguments (not sim.server) with plain values may be appended", w)
		}
	}
	return strings.Join(words, " "), nil
}

// LocalBootScript sends an installed node to its own disk: UEFI
// firmware boots its next entry when iPXE exits with a failure (exit 1:
// on success EDK2's boot manager stops going down the boot order and
// shows its menu, where an OVMF node sat); a BIOS machine is booted from
// its first disk (sanboot), or, failing that, by the BIOS's next device.
func LocalBootScript(node string, done time.Time) string {
	return fmt.Sprintf("#!ipxe\n# sim netboot: %s was installed at %s and boots its own disk; `sim node reinstall %s` installs it again\n"+
		"iseq ${platform} efi && exit 1 ||\nsanboot --no-describe --drive 0x80 || exit 1\n", node, done.UTC().Format(time.RFC3339), node)
}

// IPXEScript boots the initrd from the server at base with the kernel
// arguments args. Under UEFI, iPXE starts the kernel's EFI stub, which
// finds the initrd by the initrd= on its command line in the files iPXE
// offers (an iPXE before 1.21 has no other way to hand it over: Debian
// bookworm's, and without it the kernel boots with no initramfs and
// panics); iPXE names the image so that the two agree. BIOS kernels
// ignore the word.
func IPXEScript(base, args string) string {
	return fmt.Sprintf("#!ipxe\n# sim netboot: install this node from %s\nkernel %s/v1/install/kernel initrd=initrd.img console=ttyS0,115200 console=tty0 %s\ninitrd --name initrd.img %s/v1/install/initrd\nboot\n", base, base, args, base)
}

// ErrUnknownNode says no registered node matches.
var ErrUnknownNode = errors.New("unknown node")

// ConfigFor answers a node: by name, else by MAC; a node nobody
// registered may still install an image named explicitly (it then gets
// no identity beyond the image's). Commits are resolved now, so a node
// installs one consistent set.
func ConfigFor(st *store.Store, node, mac, image string) (*Config, error) {
	cfg, err := Assignment(st, node, mac, image)
	if err != nil {
		return nil, err
	}
	var n *catalog.Node
	if cfg.Node != "" {
		reg, err := catalog.LoadRegistry(st)
		if err != nil {
			return nil, err
		}
		n = reg.Nodes[cfg.Node]
	}
	if cfg.LayoutID, _, err = catalog.LayoutForNode(st, n, cfg.Image); err != nil {
		return nil, err
	}
	lb, err := catalog.ReadFile(st, cfg.LayoutID, catalog.LayoutFile)
	if err != nil {
		return nil, err
	}
	cfg.Layout = string(lb)
	return cfg, nil
}

// Assignment is ConfigFor without the layout: who the node is and what it
// gets (image commit, overrides, scripts), resolved now. A running node's
// update asks for it (an image needs no layout to be updated to).
func Assignment(st *store.Store, node, mac, image string) (*Config, error) {
	reg, err := catalog.LoadRegistry(st)
	if err != nil {
		return nil, err
	}
	return AssignmentIn(st, reg, node, mac, image)
}

// AssignmentIn is Assignment with the registry at hand (a rollout
// resolving many nodes loads it once).
func AssignmentIn(st *store.Store, reg *catalog.Registry, node, mac, image string) (*Config, error) {
	var err error
	var n *catalog.Node
	switch {
	case node != "":
		if err := catalog.CheckNodeName(node); err != nil {
			return nil, err
		}
		if n = reg.Nodes[node]; n == nil {
			return nil, fmt.Errorf("%w %q (sim node add %s --mac … --image …)", ErrUnknownNode, node, node)
		}
	case mac != "":
		m, err := catalog.NormalizeMAC(mac)
		if err != nil {
			return nil, err
		}
		mac = m
		n = reg.ByMAC(m)
	}
	cfg := &Config{MAC: mac}
	var res *catalog.Resolved
	if n != nil {
		if res, err = reg.Resolve(n); err != nil {
			return nil, err
		}
		cfg.Node, cfg.Hostname, cfg.IP, cfg.Gateway, cfg.Disk, cfg.Network = n.Name, n.Name, n.IP, n.Gateway, n.Disk, n.Network
		if n.MAC != "" {
			cfg.MAC = n.MAC
		}
		cfg.Image = res.Image
		cfg.After = res.After
	}
	if image != "" {
		cfg.Image = image // the command line wins: reinstall with another image
	}
	if cfg.Image == "" {
		if mac != "" && node == "" {
			return nil, fmt.Errorf("%w: no node has MAC %s, and no sim.image= was given", ErrUnknownNode, mac)
		}
		return nil, errors.New("no image: give sim.image=REF or register the node")
	}
	if catalog.IsSpecial(cfg.Image) {
		return nil, fmt.Errorf("%s is a catalog document, not a system image", cfg.Image)
	}
	if cfg.Commit, err = st.Resolve(cfg.Image); err != nil {
		return nil, fmt.Errorf("image %s: %w", cfg.Image, err)
	}
	if res != nil {
		for _, o := range res.Overrides {
			id, err := st.ImageHead(catalog.OverrideImage(o))
			if err != nil {
				return nil, fmt.Errorf("node %s: override %s: %w", n.Name, o, err)
			}
			cfg.Overrides = append(cfg.Overrides, Doc{Name: o, Commit: id})
		}
		for _, s := range res.Scripts {
			id, err := st.ImageHead(catalog.ScriptImage(s))
			if err != nil {
				return nil, fmt.Errorf("node %s: script %s: %w", n.Name, s, err)
			}
			cfg.Scripts = append(cfg.Scripts, Doc{Name: s, Commit: id})
		}
		for _, s := range res.PreScripts {
			id, err := st.ImageHead(catalog.ScriptImage(s))
			if err != nil {
				return nil, fmt.Errorf("node %s: pre-install script %s: %w", n.Name, s, err)
			}
			cfg.PreScripts = append(cfg.PreScripts, Doc{Name: s, Commit: id})
		}
	}
	return cfg, nil
}

// LastStatuses is the last install report of each node of st: from its
// status log, and on an S3 store from every frontend's reports in the
// bucket (the newest of each node wins). An unreadable bucket leaves the
// log's, with the error.
func LastStatuses(st *store.Store) (map[string]Status, error) {
	out := readStatusLog(st.Dir())
	return out, mergeDocs(st, out, 0)
}

// readStatusLog reads the status log of the store in storeDir: the last
// report of each node.
func readStatusLog(storeDir string) map[string]Status {
	out := map[string]Status{}
	f, err := os.Open(StatusLog(storeDir))
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var s statusRecord
		if json.Unmarshal(sc.Bytes(), &s) == nil && s.Who != "" {
			out[s.Who] = s.Status
		}
	}
	return out
}
