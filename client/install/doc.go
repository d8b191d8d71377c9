// Package install is the bare-metal install: given what the server says a
// node is (Config), it partitions the disk, makes filesystems, mounts them,
// fetches and checks the image out, lays the overrides over it, writes
// hostname, network and fstab, runs the post-install scripts in a chroot,
// installs GRUB for BIOS and UEFI from the image's own packages, and
// records what it installed, reporting each step. It runs inside the
// netboot initrd (as /init) and from any rescue system (`sim install`).
// The fetch itself is a function the caller passes in, so every transport
// (HTTP, BitTorrent, multicast) installs the same way.
// ARCHITECTURE.md, "Install sequence and status protocol".
package install
