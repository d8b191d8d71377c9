package install

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/systemimager/sim/client/disk"
	"github.com/systemimager/sim/client/netcfg"
)

// configure writes the node's identity into the new root: fstab by UUID
// from the layout (keeping the image's lines for what the layout does not
// make: NFS, Lustre, bind mounts), then Identity.
func configure(root string, c *Config, parts []disk.Part) error {
	image, err := os.ReadFile(filepath.Join(root, FstabFile))
	if err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("the image's fstab: %w", err)
	}
	if _, err := writeFile(root, FstabFile, disk.FstabWith(parts, image), 0o644); err != nil {
		return err
	}
	_, err = Identity(root, c)
	return err
}

// Paths of the identity the installer writes (relative to the root), which
// an update of a running node preserves.
const (
	FstabFile    = "etc/fstab"
	HostnameFile = "etc/hostname"
	HostsFile    = "etc/hosts"
	NetworkFile  = "etc/systemd/network/10-sim.network"
	networkdLink = "etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
)

// IdentityFiles are the files Identity (and the installer) write besides
// /etc/hosts, whose one line is the node's: an update keeps them as they
// are on the node.
var IdentityFiles = append([]string{FstabFile, HostnameFile, NetworkFile, networkdLink}, netcfg.Owned...)

// Identity writes who the node is into root: /etc/hostname and its
// 127.0.1.1 line in /etc/hosts, and, when the image has systemd-networkd,
// /etc/systemd/network/10-sim.network (DHCP, or the node's static
// address) with networkd enabled. A file that already says the same is
// not touched, so re-applying an unchanged identity changes nothing. It
// returns the paths it wrote.
func Identity(root string, c *Config) ([]string, error) {
	var wrote []string
	add := func(rel string, changed bool, err error) error {
		if changed {
			wrote = append(wrote, "/"+rel)
		}
		return err
	}
	if c.Hostname != "" {
		ch, err := writeFile(root, HostnameFile, c.Hostname+"\n", 0o644)
		if err := add(HostnameFile, ch, err); err != nil {
			return wrote, err
		}
		hosts, _ := os.ReadFile(filepath.Join(root, HostsFile))
		ch, err = writeFile(root, HostsFile, string(HostsWith(hosts, c.Hostname)), 0o644)
		if err := add(HostsFile, ch, err); err != nil {
			return wrote, err
		}
	}
	net, err := network(root, c)
	wrote = append(wrote, net...)
	return wrote, err
}

// HostsWith is the hosts file hosts with hostname as its 127.0.1.1 line
// (Debian's convention), every other line kept; an empty one gets
// localhost too.
func HostsWith(hosts []byte, hostname string) []byte {
	var out []string
	for _, l := range strings.Split(strings.TrimRight(string(hosts), "\n"), "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == "127.0.1.1" {
			continue
		}
		if l != "" || len(out) > 0 {
			out = append(out, l)
		}
	}
	if len(out) == 0 {
		out = append(out, "127.0.0.1\tlocalhost")
	}
	out = append(out, "127.0.1.1\t"+hostname)
	return []byte(strings.Join(out, "\n") + "\n")
}

// HostsLine returns the hostname of hosts' 127.0.1.1 line, or "".
func HostsLine(hosts []byte) string {
	for _, l := range strings.Split(string(hosts), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[0] == "127.0.1.1" {
			return f[1]
		}
	}
	return ""
}

// HasNetworkd says whether the image in root has systemd-networkd, and
// where its unit is.
func HasNetworkd(root string) (string, bool) {
	for _, p := range []string{"lib/systemd/system/systemd-networkd.service", "usr/lib/systemd/system/systemd-networkd.service"} {
		if _, err := os.Stat(filepath.Join(root, p)); err == nil {
			return "/" + p, true
		}
	}
	return "", false
}

// NetSpec is the node's network: its spec, else one NIC from MAC, IP
// and Gateway (DHCP without IP).
func (c *Config) NetSpec() *netcfg.Spec {
	if c.Network != nil {
		return c.Network
	}
	return netcfg.Legacy(c.MAC, c.IP, c.Gateway)
}

// network writes the node's network spec in the stack the image uses
// (netcfg.Detect), removing the files an earlier identity wrote there
// that this one does not. Replicant writes and removes nothing: the
// image's configuration stays. A static address for an image of no known stack fails the
// install (netcfg.ErrUnknownStack): never dropped silently.
func network(root string, c *Config) ([]string, error) {
	spec := c.NetSpec()
	stack, why := netcfg.Detect(root)
	files, err := netcfg.Render(root, stack, spec)
	if err != nil {
		who := c.Node
		if who == "" {
			who = c.MAC
		}
		if stack != "" {
			return nil, fmt.Errorf("node %s: network (%s, from %s): %w", who, stack, why, err)
		}
		return nil, fmt.Errorf("node %s: network: %w", who, err)
	}
	var wrote []string
	keep := map[string]bool{}
	for _, f := range files {
		keep[f.Path] = true
		var ch bool
		if f.Link != "" {
			ch, err = enable(root, f.Path, f.Link)
		} else {
			ch, err = writeFile(root, f.Path, f.Content, f.Mode)
		}
		if ch {
			wrote = append(wrote, "/"+f.Path)
		}
		if err != nil {
			return wrote, err
		}
	}
	// What sim wrote before in this stack's directory and writes no
	// more (a NIC taken out of the spec). Nothing is removed when sim
	// writes nothing (replicant, DHCP on an unknown stack): the node's
	// files stay as they are.
	pat := map[string]string{netcfg.Networkd: netcfg.NetworkdDir + "/10-sim*", netcfg.NetworkManager: netcfg.NMDir + "/sim-*"}[stack]
	if len(files) > 0 && pat != "" {
		old, _ := filepath.Glob(filepath.Join(root, pat))
		for _, p := range old {
			rel, _ := filepath.Rel(root, p)
			if keep[rel] || strings.HasSuffix(p, ".sim-tmp") {
				continue
			}
			if err := os.Remove(p); err == nil {
				wrote = append(wrote, "/"+rel)
			}
		}
	}
	return wrote, nil
}

// enable makes root/rel a symlink to target (a systemd unit enabled in
// a .wants directory), unless it is one already.
func enable(root, rel, target string) (bool, error) {
	l := filepath.Join(root, rel)
	if t, err := os.Readlink(l); err == nil && t == target {
		return false, nil
	}
	if err := os.MkdirAll(filepath.Dir(l), 0o755); err != nil {
		return false, err
	}
	os.Remove(l)
	return true, os.Symlink(target, l)
}

// writeFile replaces root/rel with content, unless it holds exactly
// that already (never following a symlink out of root: an image's
// /etc/hostname may be one). It says whether it wrote.
func writeFile(root, rel, content string, mode os.FileMode) (bool, error) {
	p := filepath.Join(root, rel)
	// The same words in a file of other permissions (an image's 0755
	// /etc/hostname) say the same: left alone.
	if fi, err := os.Lstat(p); err == nil && fi.Mode().IsRegular() {
		if b, err := os.ReadFile(p); err == nil && string(b) == content {
			return false, nil
		}
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return false, err
	}
	tmp := p + ".sim-tmp"
	if err := os.WriteFile(tmp, []byte(content), mode); err != nil {
		return false, err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		os.Remove(tmp)
		return false, err
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return false, err
	}
	return true, nil
}
