package node

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strings"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/client/install"
	"github.com/systemimager/sim/snapshot"
)

// Preserved is what an update of a running root leaves as it is on the
// node, whatever the image holds there (ARCHITECTURE.md "Preserved
// paths"): never written, never removed, and not counted as drift. Exclude
// patterns (README "Exclude patterns"), anchored at the root.
var Preserved = []string{
	// The kernel's and the runtime's filesystems, and scratch space.
	"/proc", "/sys", "/dev", "/run", "/tmp", "/var/tmp",
	// The node's logs, spools and machine-local state.
	"/var/log", "/var/spool", "/var/lib/dhcp", "/var/lib/systemd/random-seed", "/etc/adjtime", "/lost+found",
	// Its store (also protected by every checkout), and the store's
	// usual place when --store is elsewhere.
	install.StoreDir,
	// Who the node is: machine id, ssh host keys, and the identity the
	// installer wrote (fstab, hostname, network, the agent's unit).
	"/etc/machine-id", "/var/lib/dbus/machine-id", "/etc/ssh/ssh_host_*",
	// What GRUB wrote on this node (its modules, grub.cfg, the ESP):
	// the image holds none of it.
	"/boot/grub", "/boot/efi",
	// The node's own additions to this list.
	LocalExclude,
}

// Where an image and a node add patterns to Preserved.
const (
	// ImageExclude is in the target image: versioned with it, so nobody
	// edits two copies (SystemImager's updateclient.local.exclude had to
	// be changed on the golden client and on every node).
	ImageExclude = "/etc/sim/update.exclude"
	// LocalExclude is on the node, for what is only this node's.
	LocalExclude = "/etc/sim/update.local.exclude"
	// HealthDir holds the image's health checks: every executable in it
	// runs after an update, in name order (greenboot's required.d).
	HealthDir = "/etc/sim/health.d"
)

// preserved returns the patterns an update of root to tree keeps: those
// of ImagePreserved, the node's LocalExclude, and every mount point of
// another filesystem below root.
func preserved(src snapshot.Source, tree chunk.ID, root string) ([]string, error) {
	pats, err := ImagePreserved(src, tree)
	if err != nil {
		return nil, err
	}
	if b, err := os.ReadFile(filepath.Join(root, LocalExclude)); err == nil {
		pats = append(pats, patternLines(b)...)
	}
	return append(pats, mountPoints(root)...), nil
}

// ImagePreserved is what every node keeps when it updates to tree (in
// src), whatever the node: Preserved, the identity files the installer
// writes, and the tree's own ImageExclude.
func ImagePreserved(src snapshot.Source, tree chunk.ID) ([]string, error) {
	pats := append([]string(nil), Preserved...)
	for _, f := range append(append([]string(nil), install.IdentityFiles...), install.AgentFiles...) {
		pats = append(pats, "/"+f)
	}
	if !tree.IsZero() {
		if n, err := snapshot.Lookup(src, tree, ImageExclude); err == nil && n.Kind == snapshot.KindFile {
			var b bytes.Buffer
			if err := snapshot.WriteContent(src, n, &b); err != nil {
				return nil, err
			}
			pats = append(pats, patternLines(b.Bytes())...)
		}
	}
	return pats, nil
}

func patternLines(b []byte) []string {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

// mountPoints lists, as anchored patterns, the mount points strictly
// below root (from /proc/self/mountinfo): other filesystems' contents
// are theirs, not the image's.
func mountPoints(root string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	root = filepath.Clean(root)
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		rel := ""
		if root == "/" {
			rel = strings.TrimPrefix(mp, "/")
		} else if r, ok := strings.CutPrefix(mp, root+"/"); ok {
			rel = r
		}
		if rel != "" {
			out = append(out, "/"+escapeGlob(rel))
		}
	}
	return out
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOct(s[i+1]) && isOct(s[i+2]) && isOct(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOct(c byte) bool { return c >= '0' && c <= '7' }

// escapeGlob makes a path match itself only as an exclude pattern.
func escapeGlob(p string) string {
	var b strings.Builder
	for _, c := range p {
		if strings.ContainsRune(`*?[\`, c) {
			b.WriteByte('\\')
		}
		b.WriteRune(c)
	}
	return b.String()
}
