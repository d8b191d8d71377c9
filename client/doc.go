// Package client puts store and snapshot together into what an admin or a
// node does: commit a directory as the new head of an image (with its stat
// cache), and check a commit out into a directory (with the record of what
// was written there, so the next checkout into it is an in-place update).
//
// It owns the small files a store keeps beside its index under cache/:
// per-image stat caches and per-directory checkout records. Both are
// caches: losing them costs a re-read, never correctness.
package client
