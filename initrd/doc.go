// Package initrd builds sim's netboot initramfs: a compressed cpio "newc"
// archive whose /init is the static sim binary, plus only what an install
// needs beside it: busybox (a shell for debugging, ip and udhcpc for the
// network, chroot), the mkfs tools with their shared libraries, and the
// kernel modules for common NICs, disk controllers and the filesystems a
// layout can name, with their dependencies in load order. It does not run
// anything at boot: cmd/sim's init mode does. ARCHITECTURE.md, "Netboot
// initrd".
package initrd
