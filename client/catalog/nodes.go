package catalog

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"time"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/client/layout"
	"github.com/systemimager/sim/client/netcfg"
	"github.com/systemimager/sim/store"
)

// Node is one machine: how it is recognised (MAC), who it becomes (name =
// hostname, IP), and what it gets (image, groups, overrides, scripts).
// Stored as nodes/NAME in sim@nodes, this JSON:
//
//	{"name":"n01","mac":"52:54:00:12:34:56","ip":"198.18.0.11/24","image":"debian",
//	 "groups":["compute"],"overrides":["n01-keys"],"scripts":["motd"],"disk":"/dev/vda"}
type Node struct {
	Name      string   `json:"name"`
	MAC       string   `json:"mac,omitempty"`
	IP        string   `json:"ip,omitempty"` // CIDR; empty = DHCP
	Gateway   string   `json:"gateway,omitempty"`
	Image     string   `json:"image,omitempty"` // empty: from the first group that names one
	Groups    []string `json:"groups,omitempty"`
	Overrides []string `json:"overrides,omitempty"`
	Scripts   []string `json:"scripts,omitempty"`
	// PreScripts run in the installer before the disk is touched (to
	// check or wipe hardware); Scripts run after, in the new root.
	PreScripts []string `json:"pre_scripts,omitempty"`
	Disk       string   `json:"disk,omitempty"` // overrides the layout's disk
	// Network is the node's whole network (NICs, bonds, VLANs, IPv4
	// and IPv6, DNS, MTU, or replicant: the image's own); nil: one NIC
	// from MAC, IP and Gateway (DHCP without IP).
	Network *netcfg.Spec `json:"network,omitempty"`
	// Reinstall is when an admin last asked for the node to be installed
	// again (sim node reinstall): its netboot installs while no install
	// has succeeded since (NetbootsToInstall).
	Reinstall *time.Time `json:"reinstall,omitempty"`
	// After is what the installer does once the node is installed
	// (poweroff, reboot, kexec, shell; sim node add --after); empty:
	// its first group's that has one, else the kernel command line's.
	After string `json:"after,omitempty"`
}

// Group gives its members an image, overrides and scripts. Stored as
// groups/NAME: {"name":"compute","image":"debian","overrides":["site"],"scripts":["motd"]}
type Group struct {
	Name       string   `json:"name"`
	Image      string   `json:"image,omitempty"`
	Overrides  []string `json:"overrides,omitempty"`
	Scripts    []string `json:"scripts,omitempty"`
	PreScripts []string `json:"pre_scripts,omitempty"`
	// After: the members' after-install action (see Node.After).
	After string `json:"after,omitempty"`
}

// Registry is the whole of sim@nodes at one commit.
type Registry struct {
	Commit chunk.ID          `json:"commit"`
	Nodes  map[string]*Node  `json:"nodes"`
	Groups map[string]*Group `json:"groups"`
}

// A node name is a hostname label (RFC 1123), since it becomes one.
var hostRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
var docRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// CheckNodeName accepts a lower-case hostname label.
func CheckNodeName(n string) error {
	if !hostRe.MatchString(n) {
		return fmt.Errorf("invalid node name %q: a hostname label (a-z, 0-9, -, not first or last, at most 63)", n)
	}
	return nil
}

// CheckDocName accepts group, override and script names.
func CheckDocName(kind, n string) error {
	if !docRe.MatchString(n) || strings.Contains(n, "..") {
		return fmt.Errorf("invalid %s name %q: letters, digits, . _ - (not first), at most 64", kind, n)
	}
	return nil
}

// NormalizeMAC returns a MAC in lower-case colon form, or an error naming it.
func NormalizeMAC(m string) (string, error) {
	hw, err := net.ParseMAC(m)
	if err != nil || len(hw) != 6 {
		return "", fmt.Errorf("invalid MAC address %q: want six hex bytes like 52:54:00:12:34:56", m)
	}
	return hw.String(), nil
}

// Check validates a node's fields and normalises its MAC and IP.
func (n *Node) Check() error {
	if err := CheckNodeName(n.Name); err != nil {
		return err
	}
	if n.MAC != "" {
		m, err := NormalizeMAC(n.MAC)
		if err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
		n.MAC = m
	}
	if n.IP != "" {
		p, err := netip.ParsePrefix(n.IP)
		if err != nil || !p.Addr().Is4() {
			return fmt.Errorf("node %s: invalid IP %q: want an IPv4 address with its prefix, like 198.18.0.11/24", n.Name, n.IP)
		}
	}
	if n.Gateway != "" {
		if a, err := netip.ParseAddr(n.Gateway); err != nil || !a.Is4() {
			return fmt.Errorf("node %s: invalid gateway %q", n.Name, n.Gateway)
		}
	}
	if n.Network != nil {
		if err := n.Network.Check(); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	if n.Image != "" {
		if err := store.CheckName("image", n.Image); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	for _, g := range n.Groups {
		if err := CheckDocName("group", g); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	if n.Disk != "" {
		if err := layout.CheckDisk(n.Disk); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	if err := CheckAfter(n.After); err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	return checkDocs(n.Name, n.Overrides, append(append([]string(nil), n.Scripts...), n.PreScripts...))
}

// CheckAfter accepts an after-install action: poweroff, reboot, kexec
// (boot the installed system without a firmware reboot), shell, or ""
// (not set).
func CheckAfter(a string) error {
	switch a {
	case "", "poweroff", "reboot", "kexec", "shell":
		return nil
	}
	return fmt.Errorf("after-install action %q: want poweroff, reboot, kexec or shell", a)
}

func checkDocs(owner string, overrides, scripts []string) error {
	for _, o := range overrides {
		if err := CheckDocName("override", o); err != nil {
			return fmt.Errorf("%s: %w", owner, err)
		}
	}
	for _, s := range scripts {
		if err := CheckDocName("script", s); err != nil {
			return fmt.Errorf("%s: %w", owner, err)
		}
	}
	return nil
}

// LoadRegistry reads the head of sim@nodes (an empty registry if none).
func LoadRegistry(st *store.Store) (*Registry, error) {
	r := &Registry{Nodes: map[string]*Node{}, Groups: map[string]*Group{}}
	id, err := head(st, NodesImage)
	if err != nil || id.IsZero() {
		return r, err
	}
	files, err := ReadAll(st, id)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", NodesImage, err)
	}
	return decodeRegistry(id, files)
}

// decodeRegistry reads the documents of sim@nodes commit id.
func decodeRegistry(id chunk.ID, files map[string][]byte) (*Registry, error) {
	r := &Registry{Commit: id, Nodes: map[string]*Node{}, Groups: map[string]*Group{}}
	for p, b := range files {
		dir, name, _ := strings.Cut(p, "/")
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		switch dir {
		case "nodes":
			n := &Node{}
			if err := decodeDoc(dec, n); err != nil || n.Name != name {
				return nil, fmt.Errorf("%s %s: bad node document %s: %v", NodesImage, id.Short(), p, err)
			}
			// What an installer gets from it must be what sim node add
			// would have accepted (a pushed document is not).
			if err := n.Check(); err != nil {
				return nil, fmt.Errorf("%s %s: node document %s: %w", NodesImage, id.Short(), p, err)
			}
			r.Nodes[name] = n
		case "groups":
			g := &Group{}
			if err := decodeDoc(dec, g); err != nil || g.Name != name {
				return nil, fmt.Errorf("%s %s: bad group document %s: %v", NodesImage, id.Short(), p, err)
			}
			if err := g.check(); err != nil {
				return nil, fmt.Errorf("%s %s: group document %s: %w", NodesImage, id.Short(), p, err)
			}
			r.Groups[name] = g
		}
	}
	return r, nil
}

// decodeDoc decodes one JSON document into v: one value, nothing after.
func decodeDoc(dec *json.Decoder, v any) error {
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("data after the document")
	}
	return nil
}

// check validates a group's fields.
func (g *Group) check() error {
	if err := CheckDocName("group", g.Name); err != nil {
		return err
	}
	if g.Image != "" {
		if err := store.CheckName("image", g.Image); err != nil {
			return fmt.Errorf("group %s: %w", g.Name, err)
		}
	}
	return checkDocs("group "+g.Name, g.Overrides, append(append([]string(nil), g.Scripts...), g.PreScripts...))
}

// Save commits r as the new head of sim@nodes.
func (r *Registry) Save(ctx context.Context, st *store.Store, msg string) (chunk.ID, error) {
	files := map[string][]byte{}
	for _, k := range sortedKeys(r.Nodes) {
		b, _ := json.Marshal(r.Nodes[k])
		files["nodes/"+k] = append(b, '\n')
	}
	for _, k := range sortedKeys(r.Groups) {
		b, _ := json.Marshal(r.Groups[k])
		files["groups/"+k] = append(b, '\n')
	}
	if len(files) == 0 {
		files["README"] = []byte("sim node registry: nodes/NAME and groups/NAME\n")
	}
	return CommitFiles(ctx, st, NodesImage, files, msg)
}

// AddNode adds or replaces n, checking that its MAC and IP are not
// another node's.
func (r *Registry) AddNode(n *Node) error {
	if err := n.Check(); err != nil {
		return err
	}
	for _, o := range r.Nodes {
		if o.Name == n.Name {
			continue
		}
		if n.MAC != "" && o.MAC == n.MAC {
			return fmt.Errorf("node %s: MAC %s is already node %s's", n.Name, n.MAC, o.Name)
		}
		if n.IP != "" && o.IP != "" && strings.Split(o.IP, "/")[0] == strings.Split(n.IP, "/")[0] {
			return fmt.Errorf("node %s: IP %s is already node %s's", n.Name, n.IP, o.Name)
		}
	}
	r.Nodes[n.Name] = n
	return nil
}

// ByMAC finds the node with MAC m.
func (r *Registry) ByMAC(m string) *Node {
	m, err := NormalizeMAC(m)
	if err != nil {
		return nil
	}
	for _, n := range r.Nodes {
		if n.MAC == m {
			return n
		}
	}
	return nil
}

// Resolved is what a node gets, its groups folded in.
type Resolved struct {
	Node      *Node    `json:"node,omitempty"`
	Image     string   `json:"image"`
	Overrides []string `json:"overrides,omitempty"` // in application order: groups' (in group order), then the node's
	Scripts   []string `json:"scripts,omitempty"`   // in run order, the same way
	// PreScripts, in run order the same way, run before partitioning.
	PreScripts []string `json:"pre_scripts,omitempty"`
	// After is the node's after-install action, else its first group's
	// that has one ("": none set).
	After string `json:"after,omitempty"`
}

// Resolve folds n's groups in. The image is the node's, else the first
// group's that names one.
func (r *Registry) Resolve(n *Node) (*Resolved, error) {
	out := &Resolved{Node: n, Image: n.Image, After: n.After}
	for _, gname := range n.Groups {
		g, ok := r.Groups[gname]
		if !ok {
			return nil, fmt.Errorf("node %s: unknown group %q", n.Name, gname)
		}
		if out.Image == "" {
			out.Image = g.Image
		}
		if out.After == "" {
			out.After = g.After
		}
		out.Overrides = append(out.Overrides, g.Overrides...)
		out.Scripts = append(out.Scripts, g.Scripts...)
		out.PreScripts = append(out.PreScripts, g.PreScripts...)
	}
	out.Overrides = append(out.Overrides, n.Overrides...)
	out.Scripts = append(out.Scripts, n.Scripts...)
	out.PreScripts = append(out.PreScripts, n.PreScripts...)
	if out.Image == "" {
		return nil, fmt.Errorf("node %s: no image (give it --image or a group with one)", n.Name)
	}
	return out, nil
}

// CheckRefs makes sure what a node or group names exists now in st (a
// typo is caught at registration, not at install time).
func CheckRefs(st *store.Store, image string, overrides, scripts []string) error {
	if image != "" {
		if IsSpecial(image) {
			return fmt.Errorf("%s is a catalog document, not a system image", image)
		}
		if _, err := st.ImageHead(image); err != nil {
			return fmt.Errorf("image %s: %w", image, err)
		}
	}
	for _, ov := range overrides {
		if _, err := st.ImageHead(OverrideImage(ov)); err != nil {
			return fmt.Errorf("override %s: %w (sim override set %s DIR)", ov, err, ov)
		}
	}
	for _, s := range scripts {
		if _, err := st.ImageHead(ScriptImage(s)); err != nil {
			return fmt.Errorf("script %s: %w (sim script set %s FILE)", s, err, s)
		}
	}
	return nil
}
