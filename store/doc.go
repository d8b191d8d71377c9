// Package store is sim's object store: content-addressed blobs (file chunks
// and trees) compressed into immutable pack files, an index from blob id to
// pack location, commits, and refs (images, tags, reflogs), the last three in
// a badger database.
//
// Beside the commits it keeps their signatures (verified before they are
// stored), the store's trust policy, a server's API token records
// (hashed) and its secrets; package store/sign holds the signatures'
// format and checks.
//
// The store never trusts bytes it reads back or receives: every blob is
// re-hashed when it is read. It knows nothing of files, trees' contents or
// transports; package snapshot builds trees on top of it.
//
// Write ordering (ARCHITECTURE.md "Write ordering"): packs are written to a
// temporary file, fsynced and renamed before any index entry names them; the
// index is synced before a commit names its tree; a ref moves last. A crash
// at any point leaves only unreferenced packs or blobs, which gc removes.
package store
