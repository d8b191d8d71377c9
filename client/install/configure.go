package install

import (
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/systemimager/sim/client/disk"
)

// configure writes the node's identity into the new root: fstab by UUID
// from the layout, /etc/hostname and its /etc/hosts line, and a
// systemd-networkd configuration (DHCP, or the node's static address) when
// the image has networkd.
func configure(root string, c *Config, parts []disk.Part) error {
	if err := writeFile(root, "etc/fstab", disk.Fstab(parts), 0o644); err != nil {
		return err
	}
	if c.Hostname != "" {
		if err := writeFile(root, "etc/hostname", c.Hostname+"\n", 0o644); err != nil {
			return err
		}
		hosts, _ := os.ReadFile(filepath.Join(root, "etc/hosts"))
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
		out = append(out, "127.0.1.1\t"+c.Hostname)
		if err := writeFile(root, "etc/hosts", strings.Join(out, "\n")+"\n", 0o644); err != nil {
			return err
		}
	}
	return network(root, c)
}

func network(root string, c *Config) error {
	var unit string
	for _, p := range []string{"lib/systemd/system/systemd-networkd.service", "usr/lib/systemd/system/systemd-networkd.service"} {
		if _, err := os.Stat(filepath.Join(root, p)); err == nil {
			unit = "/" + p
		}
	}
	if unit == "" {
		return nil // no networkd: the image's own network configuration stays
	}
	var b strings.Builder
	b.WriteString("# written by sim install\n[Match]\n")
	if c.MAC != "" {
		fmt.Fprintf(&b, "MACAddress=%s\n", c.MAC)
	} else {
		b.WriteString("Name=en* eth*\n")
	}
	b.WriteString("\n[Network]\n")
	if c.IP != "" {
		if _, err := netip.ParsePrefix(c.IP); err != nil {
			return fmt.Errorf("node %s: bad IP %q", c.Node, c.IP)
		}
		fmt.Fprintf(&b, "Address=%s\n", c.IP)
		if c.Gateway != "" {
			fmt.Fprintf(&b, "Gateway=%s\n", c.Gateway)
		}
	} else {
		b.WriteString("DHCP=yes\n")
	}
	if err := writeFile(root, "etc/systemd/network/10-sim.network", b.String(), 0o644); err != nil {
		return err
	}
	wants := filepath.Join(root, "etc/systemd/system/multi-user.target.wants")
	if err := os.MkdirAll(wants, 0o755); err != nil {
		return err
	}
	l := filepath.Join(wants, "systemd-networkd.service")
	os.Remove(l)
	return os.Symlink(unit, l)
}

// writeFile replaces root/rel (never following a symlink out of root: an
// image's /etc/hostname may be one).
func writeFile(root, rel, content string, mode os.FileMode) error {
	p := filepath.Join(root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	tmp := p + ".sim-tmp"
	if err := os.WriteFile(tmp, []byte(content), mode); err != nil {
		return err
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// overlay copies the tree src over dst: files and symlinks replace what
// is there, directories are created where missing (an existing directory
// keeps its metadata), owners, modes and mtimes come from src. Nothing in
// dst is removed (SystemImager's override semantics).
func overlay(src, dst string) error {
	return filepath.WalkDir(src, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if rel == "." {
			return nil
		}
		to := filepath.Join(dst, rel)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			if fi, err := os.Lstat(to); err == nil && fi.IsDir() {
				return nil
			}
			os.Remove(to)
			if err := os.Mkdir(to, os.FileMode(st.Mode&0o777)); err != nil {
				return err
			}
		case unix.S_IFLNK:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			os.RemoveAll(to)
			if err := os.Symlink(t, to); err != nil {
				return err
			}
			return os.Lchown(to, int(st.Uid), int(st.Gid))
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if fi, err := os.Lstat(to); err == nil && fi.IsDir() {
				if err := os.RemoveAll(to); err != nil {
					return err
				}
			}
			tmp := to + ".sim-tmp"
			if err := os.WriteFile(tmp, b, 0o600); err != nil {
				return err
			}
			if err := os.Rename(tmp, to); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: overrides hold files, directories and symlinks only", rel)
		}
		if err := os.Lchown(to, int(st.Uid), int(st.Gid)); err != nil {
			return err
		}
		if err := os.Chmod(to, os.FileMode(st.Mode&0o7777)); err != nil {
			return err
		}
		ts := []unix.Timespec{st.Atim, st.Mtim}
		return unix.UtimesNanoAt(unix.AT_FDCWD, to, ts, unix.AT_SYMLINK_NOFOLLOW)
	})
}
