// Package layout is sim's disk layout: the text format an admin writes and
// stores with an image (`sim layout set`), its parser, and the arithmetic
// that turns sizes ("512MiB", "20%", "rest") into partition boundaries on a
// disk of a given size. It does not touch disks: package client/disk
// partitions, formats and mounts what a Plan says. ARCHITECTURE.md,
// "Disk layouts", has the format.
package layout
