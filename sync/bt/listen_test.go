package bt

import "testing"

func TestFollowListen(t *testing.T) {
	for _, c := range []struct{ listen, base, want string }{
		{":6881", "http://127.0.0.1:7480", "127.0.0.1:6881"},
		{":6881", "https://198.18.0.1:7480", "198.18.0.1:6881"},
		{":6881", "http://[::1]:7480", "[::1]:6881"},
		{":0", "http://127.0.0.1:7480", "127.0.0.1:0"},
		{":6881", "", ":6881"},                                      // --listen :7480: every address, as asked
		{"10.0.0.5:6881", "http://127.0.0.1:7480", "10.0.0.5:6881"}, // an address of its own: kept
		{"garbage", "http://127.0.0.1:7480", "garbage"},             // refused later, by the listener, naming it
	} {
		if got := followListen(c.listen, c.base); got != c.want {
			t.Errorf("followListen(%q, %q) = %q; want %q", c.listen, c.base, got, c.want)
		}
	}
}
