// Package sync moves objects between stores: an image server and its
// mirrors, and an image server and its nodes. Every transport speaks the
// same units (blobs by id, commits, refs) and ships only what the receiver
// lacks; every blob is hashed on arrival before it enters a store.
//
// This package holds the HTTP transport (Server, Remote), the wire stream
// both directions use (ARCHITECTURE.md "Format: wire stream"), the
// planning of what to send (Planner), and the operations built on them:
// Pull, Push, and Capture (snapshot a live machine straight into a remote
// store). Later transports (BitTorrent, multicast) implement Source.
//
// The package is named sync like its directory; it imports the standard
// library's sync as gosync.
package sync
