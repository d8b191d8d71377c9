// Package client puts store and snapshot together into what an admin or a
// node does: commit a directory as the new head of an image (with its stat
// cache), check a commit out into a directory (with the record of what was
// written there, so the next checkout into it is an in-place update, and
// an interrupted one is continued), copy, rename and remove images with
// what belongs to them (their layout), and check and collect the store
// (Fsck, GC).
//
// It owns the small files a store keeps beside its index under cache/:
// per-image stat caches and per-directory checkout records. Both are
// caches: losing them costs a re-read, never correctness.
//
// Its sub-packages are what runs around an install: node (a machine and
// its image server), install (the bare-metal install and its protocol),
// boot (the initrd's PID 1), catalog (layouts, nodes, overrides, scripts
// as images), layout and disk. It knows no transport by name.
package client
