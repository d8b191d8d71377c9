// Package chunk holds sim's core value types: the content id (ID), the
// chunker parameters that decide where file contents are cut, and the
// content-defined chunker itself. It does no file or store I/O of its own:
// callers hand it readers and byte slices.
//
// See ARCHITECTURE.md, "Format: content ids" and "Format: chunking".
package chunk

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/zeebo/blake3"
)

// ID is the BLAKE3-256 digest of an object's uncompressed bytes. It is a
// value type: compare with ==, use as a map key.
type ID [32]byte

// Prefix names the hash algorithm in the long text form of an ID.
const Prefix = "blake3-"

// Sum returns the ID of b.
func Sum(b []byte) ID { return ID(blake3.Sum256(b)) }

// String is the 64-digit lower-case hex form used on the command line and
// in JSON.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// Short is the first 12 hex digits, for logs and listings.
func (id ID) Short() string { return hex.EncodeToString(id[:6]) }

// IsZero reports whether id is the zero ID (no object).
func (id ID) IsZero() bool { return id == ID{} }

// MarshalText writes the 64-digit hex form.
func (id ID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText accepts the forms Parse accepts.
func (id *ID) UnmarshalText(b []byte) error {
	v, err := Parse(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}

// ErrBadID is returned by Parse for text that is not an ID.
var ErrBadID = errors.New("not a content id")

// Parse reads a full ID, with or without the "blake3-" prefix.
func Parse(s string) (ID, error) {
	var id ID
	s = strings.TrimPrefix(s, Prefix)
	if len(s) != 64 {
		return id, fmt.Errorf("%w: %q has %d hex digits, want 64", ErrBadID, s, len(s))
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("%w: %q: %v", ErrBadID, s, err)
	}
	return id, nil
}

// Ref is an ID with the length of the uncompressed object.
type Ref struct {
	ID   ID
	Size uint32
}

// CorruptError says that bytes claimed to be object ID hashed to Got.
type CorruptError struct {
	ID  ID
	Got ID
	Err error // what was being read, if known
}

func (e *CorruptError) Error() string {
	s := fmt.Sprintf("object %s is corrupt: its content hashes to %s", e.ID, e.Got)
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *CorruptError) Unwrap() error { return e.Err }

// Verify checks that data hashes to id.
func Verify(id ID, data []byte) error {
	if got := Sum(data); got != id {
		return &CorruptError{ID: id, Got: got}
	}
	return nil
}
