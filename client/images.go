package client

import (
	"fmt"

	"github.com/systemimager/sim/client/catalog"
	"github.com/systemimager/sim/store"
)

// What belongs to an image follows it: its layout (IMAGE@layout) is
// copied, renamed and removed with it, and its stat cache is forgotten
// when it goes. Use these, not the store's ref operations, for system
// images, so that no layout is left without its image.

// CopyImage creates image dst at the head of src (history is shared),
// with src's layout as dst's.
func CopyImage(st *store.Store, src, dst string) error {
	if err := checkSystemImage(src, dst); err != nil {
		return err
	}
	if err := layoutFree(st, src, dst); err != nil {
		return err
	}
	if err := st.CopyImage(src, dst); err != nil {
		return err
	}
	return layoutFollows(st, src, dst, st.CopyImage)
}

// RenameImage renames an image with its reflog and its layout.
func RenameImage(st *store.Store, src, dst string) error {
	if err := checkSystemImage(src, dst); err != nil {
		return err
	}
	if err := layoutFree(st, src, dst); err != nil {
		return err
	}
	if err := st.RenameImage(src, dst); err != nil {
		return err
	}
	ForgetImage(st, src)
	return layoutFollows(st, src, dst, st.RenameImage)
}

// RemoveImage removes an image and its layout (their data goes at the
// next gc unless a tag or another image keeps it).
func RemoveImage(st *store.Store, name string) error {
	if err := st.DeleteImage(name); err != nil {
		return err
	}
	ForgetImage(st, name)
	return layoutFollows(st, name, "", func(src, _ string) error { return st.DeleteImage(src) })
}

// checkSystemImage refuses to make a catalog document out of a system
// image or the other way round (a copy of debian named x@layout would
// be taken for a layout).
func checkSystemImage(src, dst string) error {
	if catalog.IsSpecial(src) != catalog.IsSpecial(dst) {
		return fmt.Errorf("image %s to %s: one is a catalog document (@layout, @nodes, @override, @script), the other a system image", src, dst)
	}
	return nil
}

// layoutFree checks, before anything moves, that src's layout can follow
// it to dst: a refused operation changes nothing.
func layoutFree(st *store.Store, src, dst string) error {
	if catalog.IsSpecial(src) {
		return nil
	}
	if _, err := st.ImageHead(catalog.LayoutImage(src)); err != nil {
		return nil // no layout to move
	}
	if _, err := st.ImageHead(catalog.LayoutImage(dst)); err == nil {
		return fmt.Errorf("image %s: %s exists already (remove it first)", dst, catalog.LayoutImage(dst))
	}
	return nil
}

// layoutFollows applies an image operation to the image's layout too,
// when it has one and src is a system image.
func layoutFollows(st *store.Store, src, dst string, op func(src, dst string) error) error {
	if catalog.IsSpecial(src) {
		return nil
	}
	if _, err := st.ImageHead(catalog.LayoutImage(src)); err != nil {
		return nil
	}
	d := ""
	if dst != "" {
		d = catalog.LayoutImage(dst)
	}
	if err := op(catalog.LayoutImage(src), d); err != nil {
		return fmt.Errorf("layout of %s: %w", src, err)
	}
	return nil
}
