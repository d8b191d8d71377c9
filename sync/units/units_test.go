package units

import "testing"

func TestParseRate(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Rate
		bad  bool
	}{
		{in: "0", want: 0},
		{in: "12M", want: 12e6},
		{in: "12MB", want: 12e6},
		{in: "12m", want: 12e6},
		{in: "1.5GB", want: 1.5e9},
		{in: "500", want: 500},
		{in: "500B", want: 500},
		{in: "100Mbit", want: 12.5e6},
		{in: "100mbit", want: 12.5e6},
		{in: "100Mb", want: 12.5e6},
		{in: "10mbps", want: 1.25e6}, // megabits, not tc's megabytes
		{in: "1gbit", want: 125e6},
		{in: "200kbit", want: 25e3},
		{in: "8bit", want: 1},
		{in: " 40Mbit ", want: 5e6},
		{in: "", bad: true},
		{in: "fast", bad: true},
		{in: "-1M", bad: true},
		{in: "M", bad: true},
		{in: "1e9", bad: true},
		{in: "Inf", bad: true},
		{in: "12Mbit/s", bad: true},
		{in: "4bit", bad: true}, // half a byte per second
		{in: "2000TB", bad: true},
	} {
		got, err := ParseRate(c.in)
		if c.bad {
			if err == nil {
				t.Errorf("ParseRate(%q) = %d, want an error", c.in, got)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("ParseRate(%q) = %d, %v; want %d", c.in, got, err, c.want)
		}
	}
}

func TestRateRoundTrip(t *testing.T) {
	for _, r := range []Rate{0, 1, 125, 25e3, 12.5e6, 125e6, 1.25e9, 62.5e6} {
		got, err := ParseRate(r.String())
		if err != nil || got != r {
			t.Errorf("ParseRate(%q) = %d, %v; want %d", r.String(), got, err, r)
		}
	}
	if s := RateFromBits(200e6).String(); s != "200Mbit" {
		t.Errorf("200 Mbit/s prints as %q", s)
	}
}

func TestBytes(t *testing.T) {
	for _, c := range []struct {
		n    int64
		want string
	}{{0, "0 B"}, {999, "999 B"}, {1000, "1.0 kB"}, {65_400_000, "65.4 MB"}, {1_234_000_000, "1.23 GB"}, {-2500, "-2.5 kB"}, {3e12, "3.00 TB"}} {
		if got := Bytes(c.n); got != c.want {
			t.Errorf("Bytes(%d) = %q, want %q", c.n, got, c.want)
		}
	}
}
