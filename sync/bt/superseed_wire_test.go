package bt

import (
	"bytes"
	"encoding/binary"
	"io"
	"math/bits"
	"net"
	"testing"
	"time"

	"github.com/anacrolix/torrent/metainfo"
)

// pipePair is a super-seeded server end and the peer's end.
func pipePair(t *testing.T, ss *superSeeder) (srv net.Conn, peer net.Conn) {
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	deadline := time.Now().Add(time.Minute)
	a.SetDeadline(deadline)
	b.SetDeadline(deadline)
	return ss.wrap(a), b
}

func handshake(ih metainfo.Hash) []byte {
	b := append([]byte("\x13BitTorrent protocol"), make([]byte, 8)...)
	b = append(b, ih[:]...)
	return append(b, bytes.Repeat([]byte{'p'}, 20)...)
}

// exchange writes msg on one end and reads as many bytes on the other.
func exchange(t *testing.T, from, to net.Conn, msg []byte) []byte {
	t.Helper()
	errc := make(chan error, 1)
	go func() { _, err := from.Write(msg); errc <- err }()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(to, got); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	return got
}

// TestSuperSeedWire: the origin's "I have all 100 pieces" becomes a
// bitfield of the pieces granted; a Have from the peer for one of them
// brings a Have for a new piece; a connection that does not open with the
// plain handshake passes through untouched.
func TestSuperSeedWire(t *testing.T) {
	ih := metainfo.Hash{1, 2, 3}
	const n = 100
	ss := newSuperSeeder(func(h metainfo.Hash) (int, bool) { return n, h == ih })
	defer ss.close()
	srv, peer := pipePair(t, ss)

	exchange(t, peer, srv, handshake(ih))
	bf := binary.BigEndian.AppendUint32(nil, 1+(n+7)/8)
	bf = append(bf, msgBitfield)
	bf = append(bf, bytes.Repeat([]byte{0xff}, (n+7)/8)...)
	bf[len(bf)-1] = 0xf0 // 100 pieces: the last 4 bits unused
	out := append(handshake(ih), bf...)
	got := exchange(t, srv, peer, out)
	if !bytes.Equal(got[:handshakeLen], out[:handshakeLen]) {
		t.Fatal("handshake changed")
	}
	body := got[handshakeLen+5:]
	granted := map[int]bool{}
	for i := 0; i < n; i++ {
		if body[i/8]&(0x80>>(i%8)) != 0 {
			granted[i] = true
		}
	}
	set := 0
	for _, b := range body {
		set += bits.OnesCount8(b)
	}
	if len(granted) != 64 || set != 64 {
		t.Fatalf("a lone peer was told of %d pieces (%d bits set), want 64", len(granted), set)
	}
	// The peer completes a granted piece: the origin tells it of a new one.
	var first int
	for i := range granted {
		first = i
		break
	}
	have := append([]byte{0, 0, 0, 5, msgHave}, binary.BigEndian.AppendUint32(nil, uint32(first))...)
	go peer.Write(have)
	buf := make([]byte, 64)
	if _, err := io.ReadFull(srv, buf[:len(have)]); err != nil {
		t.Fatal(err)
	}
	msg := make([]byte, 9)
	if _, err := io.ReadFull(peer, msg); err != nil {
		t.Fatal(err)
	}
	if binary.BigEndian.Uint32(msg) != 5 || msg[4] != msgHave {
		t.Fatalf("after a Have the origin sent %x, want a Have", msg)
	}
	if p := int(binary.BigEndian.Uint32(msg[5:])); p >= n || granted[p] {
		t.Fatalf("new grant %d: out of range or granted before", p)
	}
	// Other messages pass unchanged (a keep-alive, an unchoke).
	if got := exchange(t, srv, peer, []byte{0, 0, 0, 0, 0, 0, 0, 1, 1}); !bytes.Equal(got, []byte{0, 0, 0, 0, 0, 0, 0, 1, 1}) {
		t.Fatalf("keep-alive and unchoke became %x", got)
	}

	// The server sends the start of its handshake before it reads the
	// peer's (anacrolix does): still followed; the second peer is told
	// of 32 pieces (64 outstanding in the swarm), none the first has.
	srv4, peer4 := pipePair(t, ss)
	exchange(t, srv4, peer4, out[:28])
	exchange(t, peer4, srv4, handshake(ih))
	got = exchange(t, srv4, peer4, out[28:])
	n4 := 0
	for i := 0; i < n; i++ {
		if got[handshakeLen-28+5+i/8]&(0x80>>(i%8)) != 0 {
			n4++
			if granted[i] {
				t.Fatalf("piece %d granted to both peers", i)
			}
		}
	}
	if n4 != 32 {
		t.Fatalf("the second peer was told of %d pieces, want 32", n4)
	}

	// Not a plain handshake (MSE): untouched both ways.
	srv2, peer2 := pipePair(t, ss)
	noise := bytes.Repeat([]byte{0x42}, handshakeLen)
	exchange(t, peer2, srv2, noise)
	if got := exchange(t, srv2, peer2, out); !bytes.Equal(got, out) {
		t.Fatal("an unparsed connection was rewritten")
	}
	// A torrent the server does not seed: untouched.
	srv3, peer3 := pipePair(t, ss)
	exchange(t, peer3, srv3, handshake(metainfo.Hash{9}))
	if got := exchange(t, srv3, peer3, out); !bytes.Equal(got, out) {
		t.Fatal("a connection for an unknown torrent was rewritten")
	}
}
