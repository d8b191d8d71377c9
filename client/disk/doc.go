// Package disk does what a layout.Plan says to a real block device: find
// the disk (a path, the first or the largest), write the GPT (go-diskfs),
// make the filesystems (mkfs.vfat, mkfs.ext4, mkfs.xfs, mkswap, each with a
// UUID chosen here so fstab can name it without blkid) and mount them in
// order under a target directory. It is the only package that partitions,
// formats or mounts. ARCHITECTURE.md, "Install sequence".
package disk
