// Package catalog keeps the small, versioned documents of a bare-metal
// install in the store, as ordinary images, so they get history, reflogs,
// tags, gc and replication (pull/push) for free:
//
//	IMAGE@layout     one file, "layout": the disk layout of IMAGE
//	sim@nodes        nodes/NAME and groups/NAME, one JSON document each
//	NAME@override    a directory tree laid over a node's new root
//	NAME@script      one file, "script": a post-install script
//
// Each change is one commit on that image. The package knows the names
// and encodings; it does not install anything (client/install does).
// ARCHITECTURE.md, "Nodes, overrides and post-install scripts".
package catalog
