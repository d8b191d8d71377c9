package mcast

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/sync/seal"
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
		{"repair", AppendRepair(nil, 3, &Repair{Seq: 5, Object: 2, ObjLen: 1 << 20, First: 128, K: 128, M: 64, Index: 7, Shard: make([]byte, 1440)}),
			Packet{Header: Header{KindRepair, 3}, Repair: Repair{Seq: 5, Object: 2, ObjLen: 1 << 20, First: 128, K: 128, M: 64, Index: 7, Shard: make([]byte, 1440)}}},
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
			if c.name == "repair" && len(c.b)+IPUDPOverhead != 1500 {
				t.Errorf("repair datagram of a 1440-byte block is %d bytes on the wire, want 1500", len(c.b)+IPUDPOverhead)
			}
		})
	}
}

func testSealer(t testing.TB) *seal.Sealer {
	t.Helper()
	k, err := seal.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	sl, err := seal.New(k)
	if err != nil {
		t.Fatal(err)
	}
	return sl
}

// TestSealedData: a sealed data datagram hides its payload, is the tag
// longer than a plain one, and opens only with the session's key and
// with its header as sent: another key, an altered byte anywhere, or a
// header moved to another object, offset or session does not open
// (the checksum recomputed, as an attacker would).
func TestSealedData(t *testing.T) {
	sl := testSealer(t)
	secret := []byte("the image's content, which nobody else may read")
	d := &Data{Seq: 9, Object: 3, ObjLen: 5000, Offset: 1444, Payload: secret}
	b := AppendSealedData(nil, 7, d, sl)
	if len(b) != len(AppendData(nil, 7, d))+seal.Overhead || bytes.Contains(b, secret[:8]) {
		t.Fatalf("sealed datagram of %d bytes, or plaintext visible: %q", len(b), b)
	}
	open := func(b []byte, sl *seal.Sealer) ([]byte, error) {
		var p Packet
		if err := Decode(b, &p); err != nil {
			return nil, err
		}
		if p.Kind != KindSealedData || p.Session != 7 || p.Data.Seq != 9 || p.Data.Object != 3 || p.Data.Offset != 1444 {
			t.Fatalf("decoded %+v", p)
		}
		err := OpenData(b, &p, sl)
		return p.Data.Payload, err
	}
	got, err := open(bytes.Clone(b), sl)
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("open: %q, %v", got, err)
	}
	reseal := func(b []byte) []byte { return appendCRC(b[:len(b)-trailerLen]) }
	for _, c := range []struct {
		name string
		b    []byte
		sl   *seal.Sealer
	}{
		{"other key", bytes.Clone(b), testSealer(t)},
		{"altered payload", reseal(func() []byte { x := bytes.Clone(b); x[dataHead+2] ^= 1; return x }()), sl},
		{"altered tag", reseal(func() []byte { x := bytes.Clone(b); x[len(x)-trailerLen-1] ^= 1; return x }()), sl},
		{"other objlen", reseal(func() []byte { x := bytes.Clone(b); x[17] ^= 1; return x }()), sl},
	} {
		if _, err := open(c.b, c.sl); !errors.Is(err, seal.ErrOpen) {
			t.Errorf("%s: opened (%v)", c.name, err)
		}
	}
	// a header naming another session, object or offset: nonce and
	// associated data differ
	for name, moved := range map[string][]byte{
		"other session": reseal(func() []byte { x := bytes.Clone(b); x[7] ^= 1; return x }()),
		"other object":  reseal(func() []byte { x := bytes.Clone(b); x[15] ^= 1; return x }()),
		"other offset":  reseal(func() []byte { x := bytes.Clone(b); x[22] ^= 1; return x }()),
	} {
		var p Packet
		if err := Decode(moved, &p); err != nil {
			continue // out of bounds: rejected before opening
		}
		if err := OpenData(moved, &p, sl); !errors.Is(err, seal.ErrOpen) {
			t.Errorf("%s: opened (%v)", name, err)
		}
	}
	// a sealed payload shorter than the tag is rejected by Decode
	short := appendData(nil, KindSealedData, 7, &Data{Seq: 1, Object: 1, ObjLen: 100, Payload: make([]byte, seal.Overhead)})
	var p Packet
	if err := Decode(short, &p); err == nil || !strings.Contains(err.Error(), "outside object") {
		t.Errorf("sealed datagram without plaintext: %v", err)
	}
}

// TestSealedControl: a receiver's JOIN, STATUS or NAK sealed under the
// control key opens to itself; a stranger's (another key), an altered
// one, or one whose box holds another node's or session's datagram does
// not.
func TestSealedControl(t *testing.T) {
	k, _ := seal.NewKey()
	ck, err := ControlKey(k)
	if err != nil || ck == k {
		t.Fatalf("control key %v: %v", ck == k, err)
	}
	sl, _ := seal.New(ck)
	id := chunk.Sum([]byte("have"))
	join := AppendJoin(nil, 5, &Join{Node: 42, Name: "secret-host", Haves: []chunk.ID{id}})
	b := AppendSealedControl(nil, 5, 42, 1, join, sl)
	if bytes.Contains(b, []byte("secret-host")) || bytes.Contains(b, id[:8]) {
		t.Fatal("sealed join shows its name or haves")
	}
	open := func(b []byte, sl *seal.Sealer) (Packet, error) {
		var p, q Packet
		if err := Decode(b, &p); err != nil {
			return q, err
		}
		return q, OpenControl(b, &p, sl, &q)
	}
	q, err := open(bytes.Clone(b), sl)
	if err != nil || q.Kind != KindJoin || q.Join.Name != "secret-host" || q.Join.Node != 42 {
		t.Fatalf("open: %+v, %v", q, err)
	}
	other, _ := seal.NewKey()
	osl, _ := seal.New(other)
	reseal := func(b []byte) []byte { return appendCRC(b[:len(b)-trailerLen]) }
	for _, c := range []struct {
		name string
		b    []byte
		sl   *seal.Sealer
		want string
	}{
		{"stranger's key", AppendSealedControl(nil, 5, 42, 1, join, osl), sl, "does not open"},
		{"altered", reseal(func() []byte { x := bytes.Clone(b); x[controlHead+3] ^= 1; return x }()), sl, "does not open"},
		{"other counter", reseal(func() []byte { x := bytes.Clone(b); x[controlHead-1] ^= 1; return x }()), sl, "does not open"},
		{"another node's join", AppendSealedControl(nil, 5, 43, 1, join, sl), sl, "holds one of"},
		{"another session's join", AppendSealedControl(nil, 6, 42, 1, join, sl), sl, "holds one of"},
		{"a data datagram", AppendSealedControl(nil, 5, 42, 1, AppendData(nil, 5, &Data{Object: 1, ObjLen: 1, Payload: []byte("x")}), sl), sl, "holds a kind 1"},
	} {
		if _, err := open(c.b, c.sl); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want %q", c.name, err, c.want)
		}
	}
}

// TestSealedSender: the sender's ANNOUNCE or MEMBER sealed under the
// sender key opens to itself and hides what it says; one sealed under
// another key, altered, with another counter, or holding another
// session's or kind's datagram does not.
func TestSealedSender(t *testing.T) {
	k, _ := seal.NewKey()
	sk, err := SenderKey(k)
	ck, _ := ControlKey(k)
	if err != nil || sk == k || sk == ck {
		t.Fatalf("sender key not its own: %v", err)
	}
	sl, _ := seal.New(sk)
	want := chunk.Sum([]byte("private commit"))
	ann := AppendAnnounce(nil, 5, &Announce{State: StateDone, Block: 1428, Want: want, Objects: 3})
	b := AppendSealedSender(nil, 5, 7, ann, sl)
	if bytes.Contains(b, want[:8]) {
		t.Fatal("sealed announcement shows its commit")
	}
	open := func(b []byte, sl *seal.Sealer) (Packet, error) {
		var p, q Packet
		if err := Decode(b, &p); err != nil {
			return q, err
		}
		return q, OpenSender(b, &p, sl, &q)
	}
	q, err := open(bytes.Clone(b), sl)
	if err != nil || q.Kind != KindAnnounce || q.Announce.Want != want || q.Announce.State != StateDone {
		t.Fatalf("open: %+v, %v", q, err)
	}
	osl := testSealer(t)
	reseal := func(b []byte) []byte { return appendCRC(b[:len(b)-trailerLen]) }
	for _, c := range []struct {
		name string
		b    []byte
		want string
	}{
		{"stranger's key", AppendSealedSender(nil, 5, 7, ann, osl), "does not open"},
		{"altered", reseal(func() []byte { x := bytes.Clone(b); x[senderHead+1] ^= 1; return x }()), "does not open"},
		{"other counter", reseal(func() []byte { x := bytes.Clone(b); x[senderHead-1] ^= 1; return x }()), "does not open"},
		{"another session's", AppendSealedSender(nil, 6, 7, ann, sl), "holds one of"},
		{"a status", AppendSealedSender(nil, 5, 7, AppendStatus(nil, 5, &Status{Node: 1}), sl), "holds a kind 5"},
	} {
		if _, err := open(c.b, sl); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want %q", c.name, err, c.want)
		}
	}
}

func TestDatagramRejects(t *testing.T) {
	good := AppendData(nil, 7, &Data{Seq: 1, Object: 1, ObjLen: 10, Offset: 0, Payload: []byte("0123456789")})
	flip := func(i int) []byte { b := bytes.Clone(good); b[i] ^= 1; return b }
	reseal := func(b []byte) []byte { return appendCRC(b[:len(b)-trailerLen]) }
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
		{"truncated announce", appendCRC(appendHeader(nil, KindAnnounce, 1)), "truncated"},
		{"bad state", AppendAnnounce(nil, 1, &Announce{State: 9}), "unknown state"},
		{"bad block", AppendAnnounce(nil, 1, &Announce{State: StateSending, Block: 3}), "block size"},
		{"trailing", reseal(append(bytes.Clone(AppendMember(nil, 1, &Member{Node: 1, State: 1})), 0, 0, 0, 0)), "trailing"},
		{"bad member", AppendMember(nil, 1, &Member{Node: 1, State: 7}), "member state"},
		{"old version", reseal(func() []byte { b := bytes.Clone(good); b[2] = 1; return b }()), "version 1, want 2"},
		{"repair k", AppendRepair(nil, 1, &Repair{ObjLen: 1 << 20, K: 0, M: 4, Shard: make([]byte, 1024)}), "FEC block"},
		{"repair m", AppendRepair(nil, 1, &Repair{ObjLen: 1 << 20, K: 64, M: 4, Shard: make([]byte, 1024)}), "FEC block"},
		{"repair index", AppendRepair(nil, 1, &Repair{ObjLen: 1 << 20, K: 64, M: 32, Index: 32, Shard: make([]byte, 1024)}), "repair shard 32"},
		{"repair short", AppendRepair(nil, 1, &Repair{ObjLen: 1 << 20, K: 64, M: 32, Shard: make([]byte, 100)}), "100 bytes"},
		{"repair outside", AppendRepair(nil, 1, &Repair{ObjLen: 5000, First: 10, K: 1, M: 4, Shard: make([]byte, 1024)}), "outside object"},
		{"repair reserved", reseal(func() []byte {
			b := AppendRepair(nil, 1, &Repair{ObjLen: 1 << 20, K: 64, M: 32, Shard: make([]byte, 1024)})
			b[repairHead-1] = 1
			return b
		}()), "reserved"},
		{"too many haves", reseal(append(append(appendHeader(nil, KindJoin, 1), make([]byte, 8)...), 0, 200, 0, 0, 0, 0)), "haves exceeds"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var p Packet
			err := Decode(c.b, &p)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
			if strings.HasPrefix(c.name, "old version") && !errors.Is(err, ErrVersion) {
				t.Fatalf("another version: %v is not ErrVersion", err)
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

// TestSealedRepair: a sealed repair shard opens only under the
// session's repair key and with its head as sent; the data key does not
// open it (the keys are apart: no nonce is shared).
func TestSealedRepair(t *testing.T) {
	k, _ := seal.NewKey()
	rk, err := RepairKey(k)
	if err != nil {
		t.Fatal(err)
	}
	rsl, _ := seal.New(rk)
	dsl, _ := seal.New(k)
	shard := bytes.Repeat([]byte("parity!"), 200)[:1024]
	x := &Repair{Seq: 9, Object: 4, ObjLen: 1 << 20, First: 256, K: 128, M: 64, Index: 3, Shard: shard}
	b := AppendSealedRepair(nil, 5, x, rsl)
	if len(b) != repairHead+len(shard)+seal.Overhead+trailerLen || bytes.Contains(b, shard[:32]) {
		t.Fatalf("sealed repair of %d bytes, or holding its shard in clear", len(b))
	}
	open := func(b []byte, sl *seal.Sealer) error {
		var p Packet
		if err := Decode(b, &p); err != nil {
			return err
		}
		if err := OpenRepair(b, &p, sl); err != nil {
			return err
		}
		if !bytes.Equal(p.Repair.Shard, shard) || p.Repair.First != 256 || p.Repair.Index != 3 {
			t.Fatalf("opened %+v", p.Repair)
		}
		return nil
	}
	if err := open(bytes.Clone(b), rsl); err != nil {
		t.Fatal(err)
	}
	if err := open(bytes.Clone(b), dsl); !errors.Is(err, seal.ErrOpen) {
		t.Errorf("opened under the data key: %v", err)
	}
	for _, i := range []int{headerLen + 12, repairHead - 2, repairHead + 5} {
		m := bytes.Clone(b)
		m[i] ^= 1
		m = appendCRC(m[:len(m)-trailerLen])
		if err := open(m, rsl); err == nil {
			t.Errorf("byte %d altered: opened", i)
		}
	}
}

func TestPayloadFor(t *testing.T) {
	for _, c := range []struct{ mtu, want int }{{1500, 1444}, {9000, 8944}, {100, MinPayload}, {65536, MaxPayload}} {
		if got := PayloadFor(c.mtu, false); got != c.want {
			t.Errorf("PayloadFor(%d) = %d, want %d", c.mtu, got, c.want)
		}
		if c.mtu >= 1500 && c.mtu <= 9000 && PayloadFor(c.mtu, false)+dataHead+trailerLen+IPUDPOverhead != c.mtu {
			t.Errorf("datagrams for MTU %d do not fill it", c.mtu)
		}
		// sealed: the tag takes 16 bytes of the payload, not more of the link
		if c.mtu >= 1500 && c.mtu <= 9000 && PayloadFor(c.mtu, true)+seal.Overhead+dataHead+trailerLen+IPUDPOverhead != c.mtu {
			t.Errorf("sealed datagrams for MTU %d do not fill it", c.mtu)
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
	f.Add(appendData(nil, KindSealedData, 1, &Data{Seq: 1, Object: 1, ObjLen: 4, Payload: make([]byte, 4+seal.Overhead)}))
	f.Add(AppendSealedControl(nil, 1, 2, 3, AppendStatus(nil, 1, &Status{Node: 2}), testSealer(f)))
	f.Add(AppendSealedSender(nil, 1, 2, AppendMember(nil, 1, &Member{Node: 2, State: 1}), testSealer(f)))
	f.Add(AppendRepair(nil, 1, &Repair{Seq: 2, Object: 1, ObjLen: 4096, K: 2, M: 4, Index: 3, Shard: make([]byte, 512)}))
	f.Add(AppendSealedRepair(nil, 1, &Repair{Seq: 2, Object: 1, ObjLen: 4096, K: 2, M: 4, Index: 3, Shard: make([]byte, 512)}, testSealer(f)))
	f.Fuzz(func(t *testing.T, b []byte) {
		var p Packet
		if Decode(b, &p) != nil {
			return
		}
		var re []byte
		switch p.Kind {
		case KindData, KindSealedData:
			re = appendData(nil, p.Kind, p.Session, &p.Data)
		case KindRepair, KindSealedRepair:
			re = appendCRC(append(appendRepairHead(nil, p.Kind, p.Session, &p.Repair), p.Repair.Shard...))
		case KindSealedSender:
			re = binary.BigEndian.AppendUint64(appendHeader(nil, p.Kind, p.Session), p.Sender.Ctr)
			re = appendCRC(append(re, p.Sender.Box...))
		case KindSealedControl:
			re = binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(appendHeader(nil, p.Kind, p.Session), p.Control.Node), p.Control.Ctr)
			re = appendCRC(append(re, p.Control.Box...))
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
