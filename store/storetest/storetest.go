// Package storetest gives tests a real store in a temporary directory:
// no mock, the same code path as `sim init` and `sim` opening it.
package storetest

import (
	"path/filepath"
	"testing"

	"github.com/systemimager/sim/store"
)

// New creates and opens an empty store under tb.TempDir(), closed when
// the test ends.
func New(tb testing.TB) *store.Store {
	tb.Helper()
	dir := filepath.Join(tb.TempDir(), "store")
	if err := store.Init(dir); err != nil {
		tb.Fatal(err)
	}
	st, err := store.Open(dir)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	return st
}
