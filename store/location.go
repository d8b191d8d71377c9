package store

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/systemimager/sim/store/s3"
)

// ErrUnknownScheme is returned for a store location that names a scheme
// (`s3://…`, `http://…`) this sim does not know. Without the check such a
// location would be taken as a relative directory path (`s3:`), and a
// commit would quietly land there.
var ErrUnknownScheme = errors.New("unknown store scheme")

// ErrBadLocation is matched (errors.Is) by a malformed s3:// location.
var ErrBadLocation = errors.New("bad store location")

type badLocation struct{ error }

func (e badLocation) Is(target error) bool { return target == ErrBadLocation }
func (e badLocation) Unwrap() error        { return e.error }

// schemeRE matches an RFC 3986 scheme followed by "://".
var schemeRE = regexp.MustCompile(`^([A-Za-z][A-Za-z0-9+.-]*)://`)

// CheckLocation validates a store location (--store, $SIM_STORE) before
// anything uses it as a directory: a local path is fine, whatever it
// holds; a location that starts with SCHEME:// is refused, naming the
// scheme. A directory whose name looks like one is still reachable as
// ./NAME.
func CheckLocation(loc string) error {
	if loc == "" {
		return errors.New("empty store location")
	}
	m := schemeRE.FindStringSubmatch(loc)
	if m == nil {
		return nil
	}
	if strings.EqualFold(m[1], "s3") {
		if _, err := s3.ParseLocation(loc); err != nil {
			return badLocation{err}
		}
		return nil
	}
	return fmt.Errorf("store %q: %w %q: sim stores are local directories or s3://BUCKET[/PREFIX]?endpoint=URL (a directory of that name is ./%s)",
		loc, ErrUnknownScheme, m[1], loc)
}
