// Package units reads and writes the quantities people type and read on
// sim's command line: transfer rates (--bt-upload-rate, --mcast-rate, ...)
// and byte counts. One grammar for every rate flag, one formatter for every
// byte count printed (README "Rates").
//
// It holds no I/O and imports nothing of sim's.
package units

import (
	"fmt"
	"strconv"
	"strings"
)

// Rate is a transfer rate in bytes per second; 0 means no cap.
type Rate int64

// Bits is the rate in bit/s.
func (r Rate) Bits() int64 { return int64(r) * 8 }

// RateFromBits is a rate of bits bit/s.
func RateFromBits(bits int64) Rate { return Rate(bits / 8) }

// String writes r as ParseRate reads it: bits per second with a decimal
// prefix ("200Mbit"), "0" for no cap.
func (r Rate) String() string {
	if r == 0 {
		return "0"
	}
	b := float64(r.Bits())
	for _, u := range []struct {
		div float64
		suf string
	}{{1e9, "Gbit"}, {1e6, "Mbit"}, {1e3, "kbit"}} {
		if b >= u.div {
			return strconv.FormatFloat(b/u.div, 'f', -1, 64) + u.suf
		}
	}
	return strconv.FormatInt(int64(b), 10) + "bit"
}

// ParseRate reads a rate: a number, an optional decimal prefix (k, M, G,
// T: powers of 1000, either case), then a unit:
//
//	none or B    bytes per second       12M, 12MB, 1.5GB
//	bit, b, bps  bits per second        100Mbit, 100Mb, 100mbps
//
// "0" means no cap. Anything else is an error naming what was given.
// (tc writes "mbps" for megabytes per second; nearly everyone else means
// megabits, and so does sim: for bytes, write MB.)
func ParseRate(s string) (Rate, error) {
	orig := s
	s = strings.TrimSpace(s)
	bad := func() (Rate, error) {
		return 0, fmt.Errorf("rate %q: want bytes/s like 12M or 12MB, or bits/s like 100Mbit (0: no cap)", orig)
	}
	if s == "" {
		return bad()
	}
	bits := false
	for _, suf := range []string{"bit", "bps", "b"} {
		if strings.HasSuffix(s, suf) {
			s, bits = strings.TrimSuffix(s, suf), true
			break
		}
	}
	if !bits {
		s = strings.TrimSuffix(s, "B")
	}
	mult := 1.0
	if n := len(s); n > 0 {
		switch s[n-1] {
		case 'k', 'K':
			mult = 1e3
		case 'm', 'M':
			mult = 1e6
		case 'g', 'G':
			mult = 1e9
		case 't', 'T':
			mult = 1e12
		}
		if mult > 1 {
			s = s[:n-1]
		}
	}
	if s == "" || strings.ContainsAny(s, "+-eEinfINFxX_") {
		return bad()
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v < 0 {
		return bad()
	}
	v *= mult
	if bits {
		v /= 8
	}
	if v > 1e15 {
		return 0, fmt.Errorf("rate %q: more than a petabyte per second", orig)
	}
	if v > 0 && v < 1 {
		return 0, fmt.Errorf("rate %q: below one byte per second (0 means no cap)", orig)
	}
	return Rate(v), nil
}

// Bytes formats a byte count for people: decimal units, three significant
// figures ("1.23 GB", "65.4 MB", "812 kB", "17 B").
func Bytes(n int64) string {
	neg := ""
	if n < 0 {
		neg, n = "-", -n
	}
	switch {
	case n >= 1e12:
		return fmt.Sprintf("%s%.2f TB", neg, float64(n)/1e12)
	case n >= 1e9:
		return fmt.Sprintf("%s%.2f GB", neg, float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%s%.1f MB", neg, float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%s%.1f kB", neg, float64(n)/1e3)
	}
	return fmt.Sprintf("%s%d B", neg, n)
}

// PerSecond formats a rate measured in bytes per second, as Bytes does
// with "/s" ("12.1 MB/s").
func PerSecond(bytesPerSec float64) string { return Bytes(int64(bytesPerSec)) + "/s" }
