// Package snapshot turns a directory into trees of nodes stored in a
// store (Commit), lays a tree back down on disk (Checkout), and compares
// trees with each other (Diff). A tree object is a directory's own metadata
// plus its sorted entries; a regular file's content is a list of chunk ids
// and holes. Equal subtrees have equal ids, so Diff and in-place Checkout
// skip them without reading.
//
// snapshot knows nothing of transports: it reads blobs through the small
// Source interface and writes them through Saver.
//
// ARCHITECTURE.md "Format: trees" is the byte-level specification of
// Encode/Decode.
package snapshot
