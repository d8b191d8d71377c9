package mcast

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store"
)

func TestDatagramRoundTrip(t *testing.T) {
	id := chunk.Sum([]byte("want"))
	cases := []struct {
		name string
		b    []byte
		want Packet
	}{
		{"data", AppendData(nil, 7, &Data{Seq: 9, Object: 3, ObjLen: 5000, Offset: 1444, Payload: []byte("abc")}),
			Packet{Header: Header{KindData, 7}, Data: Data{Seq: 9, Object: 3, ObjLen: 5000, Offset: 1444, Payload: []byte("abc")}}},
		{"announce", AppendAnnounce(nil, 8, &Announce{State: StateSending, Pass: 2, Block: 1444, Want: id, Objects: 4, Bytes: 1e6, Manifest: id, RateBits: 2e8, Seq: 77, Receivers: 16}),
			Packet{Header: Header{KindAnnounce, 8}, Announce: Announce{State: StateSending, Pass: 2, Block: 1444, Want: id, Objects: 4, Bytes: 1e6, Manifest: id, RateBits: 2e8, Seq: 77, Receivers: 16}}},
		{"join", AppendJoin(nil, 1, &Join{Node: 42, Name: "n1", Haves: []chunk.ID{id, id}}),
			Packet{Header: Header{KindJoin, 1}, Join: Join{Node: 42, Name: "n1", Haves: []chunk.ID{id, id}}}},
		{"member", AppendMember(nil, 1, &Member{Node: 42, State: MemberDropped}),
			Packet{Header: Header{KindMember, 1}, Member: Member{Node: 42, State: MemberDropped}}},
		{"status", AppendStatus(nil, 1, &Status{Node: 42, Done: true, Received: 10, Lost: 2, NeedBytes: 100, GotBytes: 50}),
			Packet{Header: Header{KindStatus, 1}, Status: Status{Node: 42, Done: true, Received: 10, Lost: 2, NeedBytes: 100, GotBytes: 50}}},
		{"nak", AppendNak(nil, 1, &Nak{Node: 42, Pass: 1, Ranges: []Range{{1, 2, 3}, {4, 0, 0}}}),
			Packet{Header: Header{KindNak, 1}, Nak: Nak{Node: 42, Pass: 1, Ranges: []Range{{1, 2, 3}, {4, 0, 0}}}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var p Packet
			if err := Decode(c.b, &p); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(p, c.want) {
				t.Fatalf("got %+v\nwant %+v", p, c.want)
			}
			if c.name == "data" && len(c.b) != dataHead+3+trailerLen {
				t.Errorf("data datagram of 3 payload bytes is %d bytes", len(c.b))
			}
		})
	}
}

func TestDatagramRejects(t *testing.T) {
	good := AppendData(nil, 7, &Data{Seq: 1, Object: 1, ObjLen: 10, Offset: 0, Payload: []byte("0123456789")})
	flip := func(i int) []byte { b := bytes.Clone(good); b[i] ^= 1; return b }
	reseal := func(b []byte) []byte { return seal(b[:len(b)-trailerLen]) }
	cases := []struct {
		name string
		b    []byte
		want string
	}{
		{"empty", nil, "not a sim datagram"},
		{"foreign", []byte("GET / HTTP/1.1\r\n"), "not a sim datagram"},
		{"checksum", flip(headerLen + 20), "checksum"},
		{"version", reseal(func() []byte { b := bytes.Clone(good); b[2] = 9; return b }()), "version 9"},
		{"kind", reseal(func() []byte { b := bytes.Clone(good); b[3] = 99; return b }()), "unknown datagram kind 99"},
		{"outside", AppendData(nil, 7, &Data{Object: 1, ObjLen: 5, Offset: 0, Payload: []byte("0123456789")}), "outside object"},
		{"huge object", AppendData(nil, 7, &Data{Object: 1, ObjLen: 1 << 30, Payload: []byte("x")}), "exceeds"},
		{"truncated announce", seal(appendHeader(nil, KindAnnounce, 1)), "truncated"},
		{"bad state", AppendAnnounce(nil, 1, &Announce{State: 9}), "unknown state"},
		{"bad block", AppendAnnounce(nil, 1, &Announce{State: StateSending, Block: 3}), "block size"},
		{"trailing", reseal(append(bytes.Clone(AppendMember(nil, 1, &Member{Node: 1, State: 1})), 0, 0, 0, 0)), "trailing"},
		{"bad member", AppendMember(nil, 1, &Member{Node: 1, State: 7}), "member state"},
		{"too many haves", reseal(append(append(appendHeader(nil, KindJoin, 1), make([]byte, 8)...), 0, 200, 0, 0, 0, 0)), "haves exceeds"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var p Packet
			err := Decode(c.b, &p)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
			if c.want == "not a sim datagram" && !errors.Is(err, ErrNotOurs) {
				t.Fatalf("foreign datagram: %v is not ErrNotOurs", err)
			}
		})
	}
}

func TestManifestRoundTrip(t *testing.T) {
	m := &Manifest{Want: chunk.Sum([]byte("c")), Objects: []ObjectInfo{
		{Size: 100, Blobs: []Blob{{store.TypeTree, chunk.Sum([]byte("t"))}}},
		{Size: 1 << 20, Blobs: []Blob{{store.TypeData, chunk.Sum([]byte("a"))}, {store.TypeData, chunk.Sum([]byte("b"))}}},
	}}
	b := m.Encode()
	got, err := DecodeManifest(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, m) {
		t.Fatalf("got %+v want %+v", got, m)
	}
	for _, bad := range [][]byte{b[:len(b)-1], append(bytes.Clone(b), 0), []byte("SIMMANI1"), []byte("nope")} {
		if _, err := DecodeManifest(bad); err == nil {
			t.Errorf("manifest of %d bytes accepted", len(bad))
		}
	}
}

func TestPayloadFor(t *testing.T) {
	for _, c := range []struct{ mtu, want int }{{1500, 1444}, {9000, 8944}, {100, MinPayload}, {65536, MaxPayload}} {
		if got := PayloadFor(c.mtu); got != c.want {
			t.Errorf("PayloadFor(%d) = %d, want %d", c.mtu, got, c.want)
		}
		if c.mtu >= 1500 && c.mtu <= 9000 && PayloadFor(c.mtu)+dataHead+trailerLen+IPUDPOverhead != c.mtu {
			t.Errorf("datagrams for MTU %d do not fill it", c.mtu)
		}
	}
}

// FuzzDecode: no datagram makes Decode panic, and whatever it accepts
// re-encodes to the same bytes (one meaning per datagram).
func FuzzDecode(f *testing.F) {
	id := chunk.Sum([]byte("x"))
	f.Add(AppendData(nil, 1, &Data{Seq: 1, Object: 1, ObjLen: 4, Payload: []byte("abcd")}))
	f.Add(AppendAnnounce(nil, 1, &Announce{State: StateSending, Block: 1444, Want: id, Objects: 3}))
	f.Add(AppendJoin(nil, 1, &Join{Node: 1, Name: "x", Haves: []chunk.ID{id}}))
	f.Add(AppendNak(nil, 1, &Nak{Node: 1, Pass: 1, Ranges: []Range{{1, 0, 2}}}))
	f.Add(AppendStatus(nil, 1, &Status{Node: 1, Done: true}))
	f.Add(AppendMember(nil, 1, &Member{Node: 1, State: 1}))
	f.Fuzz(func(t *testing.T, b []byte) {
		var p Packet
		if Decode(b, &p) != nil {
			return
		}
		var re []byte
		switch p.Kind {
		case KindData:
			re = AppendData(nil, p.Session, &p.Data)
		case KindAnnounce:
			re = AppendAnnounce(nil, p.Session, &p.Announce)
		case KindJoin:
			re = AppendJoin(nil, p.Session, &p.Join)
		case KindMember:
			re = AppendMember(nil, p.Session, &p.Member)
		case KindStatus:
			re = AppendStatus(nil, p.Session, &p.Status)
		case KindNak:
			re = AppendNak(nil, p.Session, &p.Nak)
		}
		if !bytes.Equal(re, b) {
			t.Fatalf("accepted %x re-encodes as %x", b, re)
		}
	})
}

// FuzzManifest: no manifest makes DecodeManifest panic or allocate
// beyond its input, and what it accepts re-encodes to itself.
func FuzzManifest(f *testing.F) {
	f.Add((&Manifest{Objects: []ObjectInfo{{Size: 3, Blobs: []Blob{{store.TypeData, chunk.Sum(nil)}}}}}).Encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeManifest(b)
		if err != nil {
			return
		}
		if re := m.Encode(); !bytes.Equal(re, b) {
			t.Fatalf("accepted manifest re-encodes differently")
		}
	})
}
