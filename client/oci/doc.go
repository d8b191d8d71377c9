// Package oci moves images between sim and the OCI world: Import commits
// an OCI image layout (a directory), an OCI archive or a `docker save`
// archive as one commit, and Export writes a commit as a tarball or as a
// one-layer OCI image layout that podman, skopeo and umoci take.
//
// Import applies the image's layers in order to a tree built in memory
// (Builder: whiteouts, opaque directories, hard links, owners, modes,
// xattrs and nanosecond times as the layers say) and stores it through a
// snapshot.Saver, as snapshot.FilesTree does: nothing is extracted to
// disk, so owners, devices and xattrs survive whoever runs it. Every
// layer is checked against its digest and diff id before the commit is
// made, and the image's run configuration (entrypoint, command, env,
// labels, ...) is kept in the commit message as an "OCI-Config:" trailer,
// which Export puts back.
//
// Parsing manifests, indexes, configs and archives is
// google/go-containerregistry's; tar is archive/tar. What this package
// does not do: pull from or push to registries (skopeo does that, to and
// from a layout), keep layer boundaries (the commit is the flattened
// image), or keep holes through a tarball (tar has no holes here).
//
// ARCHITECTURE.md, "OCI images".
package oci
