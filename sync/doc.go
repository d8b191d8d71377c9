// Package sync moves objects between stores: an image server and its
// mirrors, and an image server and its nodes. Every transport speaks the
// same units (blobs by id, commits, refs) and ships only what the receiver
// lacks; every blob is hashed on arrival, in a Sink, before it enters a
// store.
//
// This package holds the HTTP API (Server) and its client (Remote), the
// wire stream both directions use (ARCHITECTURE.md "Format: wire stream"),
// the planning of what to send (Planner), the Sink, and the operations
// built on them: FetchCommit, FetchHistory, Pull, Push, and Capture
// (snapshot a live machine straight into a remote store). It also holds
// the transport seam: the Transport interface (bulk delivery of what a
// node lacks into a Sink) and the registry that --transport and sim serve
// read (RegisterTransport, TransportFlags). The transports themselves are
// its sub-packages: httppull, bt, mcast.
//
// It also holds trust on the wire (ARCHITECTURE.md "Signatures", "Roles
// and tokens"): Server.Authorize, the one place requests are authorized
// (routes mounted with their Role by HandleRole; AllowNode for a
// handler that acts for a node), the signatures that travel beside
// commits, and the trust policy applied where every fetch passes
// (FetchCommit, FetchHistory, CheckCommit) and every push lands (POST
// /v1/refs).
//
// It does not plan what to check out, know any transport by name, or
// write to a store other than through a Sink or Writer.
//
// The package is named sync like its directory; it imports the standard
// library's sync as gosync.
package sync
