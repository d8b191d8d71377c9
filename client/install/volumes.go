package install

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/systemimager/sim/client/disk"
	"github.com/systemimager/sim/client/layout"
)

// target is one disk of the layout: its stanza, the disk found for it and
// where its partitions go.
type target struct {
	stanza layout.Disk
	info   disk.Info
	ext    []layout.Extent
}

// Where the installed system's mdadm reads its arrays: Debian's path,
// and the RHEL family's.
const (
	MdadmConfDebian = "etc/mdadm/mdadm.conf"
	MdadmConfRHEL   = "etc/mdadm.conf"
)

// hasAny says whether root has one of the relative paths.
func hasAny(root string, rels ...string) bool {
	for _, p := range rels {
		if _, err := os.Stat(filepath.Join(root, p)); err == nil {
			return true
		}
	}
	return false
}

// volumesConfig checks that the image can bring up what the layout made
// (mdadm for arrays, lvm for volume groups: without them the installed
// system does not find its filesystems) and writes mdadm.conf for the
// arrays (Debian's path when the image is Debian-style, else the RHEL
// family's).
func (r *run) volumesConfig(l *layout.Layout, parts []disk.Part) error {
	if len(l.RAIDs) > 0 {
		if !hasAny(r.Target, "usr/sbin/mdadm", "sbin/mdadm") {
			return fmt.Errorf("the image has no mdadm (/usr/sbin/mdadm): the installed system could not assemble %s; install mdadm in the image", l.RAIDs[0].Name)
		}
		conf, err := disk.MdadmConf(r.ctx)
		if err != nil {
			return err
		}
		rel := MdadmConfDebian
		if !hasAny(r.Target, "etc/debian_version", "etc/mdadm") {
			rel = MdadmConfRHEL
		}
		if err := os.MkdirAll(filepath.Join(r.Target, filepath.Dir(rel)), 0o755); err != nil {
			return err
		}
		if _, err := writeFile(r.Target, rel, conf, 0o644); err != nil {
			return err
		}
	}
	if len(l.VGs) > 0 && !hasAny(r.Target, "usr/sbin/lvm", "sbin/lvm") {
		return fmt.Errorf("the image has no lvm (/usr/sbin/lvm, package lvm2): the installed system could not activate volume group %s; install lvm2 in the image", l.VGs[0].Name)
	}
	return nil
}

// initramfs rebuilds the image's initramfs in the new root, so it carries
// mdadm.conf and the md and LVM tools its hooks add (Debian's
// update-initramfs, or dracut): a root on an array or an LV is found
// only by them. An image with neither fails the install when its root
// needs them; otherwise the step is skipped.
func (r *run) initramfs(l *layout.Layout, parts []disk.Part) error {
	switch {
	case hasAny(r.Target, "usr/sbin/update-initramfs", "sbin/update-initramfs"):
		return r.chroot(nil, "update-initramfs", "-u", "-k", "all")
	case hasAny(r.Target, "usr/bin/dracut", "usr/sbin/dracut"):
		return r.chroot(nil, "dracut", "-f", "--regenerate-all")
	}
	for _, p := range parts {
		if p.Mount == "/" && p.Kind != "" && p.Kind != disk.KindSubvol {
			return errors.New("the root is on an md array or an LV but the image has neither update-initramfs nor dracut to make an initramfs that finds it")
		}
	}
	return nil
}
