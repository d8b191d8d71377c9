package mcast

import (
	"context"
	"encoding/binary"
	"hash/crc32"
	"math/rand"
	"net"
	"strings"
	gosync "sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store/storetest"
	simsync "github.com/systemimager/sim/sync"
)

// lossy makes node n lose share p of the data and repair datagrams it
// receives, independently of the other nodes (each its own seeded
// generator), after their checksums: as a lossy link would.
func lossy(n *node, seed int64, p float64) {
	var mu gosync.Mutex
	r := rand.New(rand.NewSource(seed))
	lose := func() bool { mu.Lock(); defer mu.Unlock(); return r.Float64() < p }
	n.drop = func(*Data) bool { return lose() }
	n.dropRepair = func(*Repair) bool { return lose() }
}

// TestSessionFEC: four empty nodes, each losing datagrams at random.
// At 5% every node completes by multicast (no HTTP fill), most of what
// it lost rebuilt from repair shards; at 1% the FEC blocks some node
// asked repairs for are no more than FEC predicted (auto sized R for
// it), and the server sent at most 1.12× the content (datagram headers
// 4.8%, repair shards 4%). With FEC off, the same 1% makes nearly
// every FEC-sized stretch of blocks need a repair: the comparison the
// bound would fail without FEC.
func TestSessionFEC(t *testing.T) {
	lo := loopback(t)
	w := newWorld(t)
	for _, c := range []struct {
		name string
		loss float64
		fec  FEC
	}{
		{"5%", 0.05, FEC{}},
		{"1%", 0.01, FEC{}},
		{"1% FEC off", 0.01, FEC{Off: true}},
	} {
		t.Run(c.name, func(t *testing.T) {
			nodes := []*node{w.node(t, "a", chunk.ID{}), w.node(t, "b", chunk.ID{}), w.node(t, "c", chunk.ID{}), w.node(t, "d", chunk.ID{})}
			for i, n := range nodes {
				lossy(n, int64(100+i), c.loss)
			}
			m := newManager(t, w, lo, Config{RateBits: 300e6, Wait: 5 * time.Second, MinReceivers: 4, FEC: c.fec})
			s, err := m.Open(w.v2, OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			receive(t, lo, s.Group, w.v2, nodes)
			<-s.Done()
			inf := s.Info()
			t.Logf("session: %d passes, %d bytes sent for %d, FEC %s: %d shards over %d blocks, %d blocks repaired (%.2f predicted), %d repair datagrams",
				inf.Pass, inf.SentBytes, inf.Bytes, inf.FEC, inf.FECShards, inf.FECGroups, inf.RepairGroups, inf.FECPredicted, inf.RepairBlocks)
			var rebuilt int64
			for _, n := range nodes {
				t.Logf("%s: %+v", n.name, n.res)
				if n.err != nil || !n.res.Complete {
					t.Errorf("%s did not complete by multicast: %v %+v", n.name, n.err, n.res)
				}
				if k := missing(t, n.st, w.srv, w.v2); k != 0 {
					t.Errorf("%s lacks %d objects of v2", n.name, k)
				}
				if n.res.Lost == 0 {
					t.Errorf("%s lost nothing: the loss did not work", n.name)
				}
				rebuilt += n.res.Recovered
			}
			if c.fec.Off {
				if inf.FECShards != 0 || rebuilt != 0 {
					t.Errorf("FEC off: %d shards sent, %d blocks rebuilt", inf.FECShards, rebuilt)
				}
				// 4 nodes losing 1% each: a 128-block stretch escapes
				// all of them with probability 0.99^512 ≈ 0.6%
				if inf.RepairBlocks < inf.Bytes/int64(s.block)/100 {
					t.Errorf("FEC off at 1%%: only %d blocks repaired", inf.RepairBlocks)
				}
				return
			}
			if inf.FECGroups == 0 || inf.FECShards == 0 || rebuilt == 0 {
				t.Fatalf("FEC on: %d blocks, %d shards, %d data blocks rebuilt", inf.FECGroups, inf.FECShards, rebuilt)
			}
			switch c.loss {
			case 0.05:
				// most of the loss rebuilt, not repaired: repair passes
				// carried less than a tenth of what the nodes lost
				var lost uint64
				for _, n := range nodes {
					lost += n.res.Lost
				}
				if uint64(inf.RepairBlocks)*10 > lost {
					t.Errorf("5%%: %d blocks repaired by passes for %d datagrams lost", inf.RepairBlocks, lost)
				}
			case 0.01:
				if float64(inf.RepairGroups) > 2*inf.FECPredicted+3 {
					t.Errorf("1%%: %d FEC blocks needed repairs, %.2f predicted", inf.RepairGroups, inf.FECPredicted)
				}
				if inf.SentBytes > inf.Bytes*112/100 {
					t.Errorf("1%%: sent %d bytes for %d (%.3f×)", inf.SentBytes, inf.Bytes, float64(inf.SentBytes)/float64(inf.Bytes))
				}
			}
		})
	}
}

// TestFECForgedShard: a repair shard altered after its checksum (an
// attacker on a plain session's segment recomputes it) rebuilds a
// block wrong; the object then fails verification (BLAKE3), is never
// stored, and arrives again: the node ends with v2 exact.
func TestFECForgedShard(t *testing.T) {
	lo := loopback(t)
	w := newWorld(t)
	n := w.node(t, "victim", chunk.ID{})
	// object 1 loses its first block once, so its first FEC block is
	// rebuilt from repair shard 0, which is forged (once)
	var lostOne, forged atomic.Bool
	n.drop = func(d *Data) bool { return d.Object == 1 && d.Offset == 0 && !lostOne.Swap(true) }
	n.tamper = func(b []byte) {
		if len(b) > repairHead+trailerLen && b[2] == version && b[3] == KindRepair &&
			binary.BigEndian.Uint32(b[12:]) == 1 && binary.BigEndian.Uint32(b[20:]) == 0 && b[26] == 0 && !forged.Swap(true) {
			b[repairHead+7] ^= 0x10
			binary.BigEndian.PutUint32(b[len(b)-trailerLen:], crc32.Checksum(b[:len(b)-trailerLen], crcTable))
		}
	}
	m := newManager(t, w, lo, Config{RateBits: 300e6, Wait: 5 * time.Second, MinReceivers: 1, FEC: FEC{K: 16, R: 2}})
	s, err := m.Open(w.v2, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	receive(t, lo, s.Group, w.v2, []*node{n})
	<-s.Done()
	t.Logf("%+v", n.res)
	if !forged.Load() || !lostOne.Load() {
		t.Fatalf("the forgery did not happen (forged %v, lost %v)", forged.Load(), lostOne.Load())
	}
	if n.err != nil {
		t.Fatal(n.err)
	}
	if k := missing(t, n.st, w.srv, w.v2); !n.res.Complete {
		// it reported every block in before verifying: when that was
		// the session's end, the rejected object comes over HTTP
		if k == 0 {
			t.Errorf("incomplete but lacks nothing: %+v", n.res)
		}
		rm, _ := simsync.NewRemote(w.url, "")
		if _, err := simsync.FetchCommit(context.Background(), n.st, rm, nil, w.v2, true); err != nil {
			t.Fatal(err)
		}
	}
	if k := missing(t, n.st, w.srv, w.v2); k != 0 {
		t.Errorf("victim lacks %d objects of v2", k)
	}
	if n.res.Rejected < 1 || n.res.Recovered < 1 {
		t.Errorf("the forged shard's rebuild was not caught: %d rejected, %d rebuilt", n.res.Rejected, n.res.Recovered)
	}
}

// TestSealedSessionFEC: a sealed session with FEC, its node losing 5%
// of what the group carries (datagrams of every kind, before they are
// opened): the node rebuilds blocks from sealed repair shards (none
// fails to open) and completes by multicast; the tree is exact.
func TestSealedSessionFEC(t *testing.T) {
	lo := loopback(t)
	w := newPrivateWorld(t)
	m, url := w.serve(t, lo, true, 1, 0)
	s, err := m.Open(w.want, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !s.Sealed() {
		t.Fatal("session of a private server not sealed")
	}
	var mu gosync.Mutex
	r := rand.New(rand.NewSource(7))
	lose := func(b []byte) {
		mu.Lock()
		defer mu.Unlock()
		if r.Float64() < 0.05 {
			b[0] = 'X' // no longer a sim datagram: lost
		}
	}
	res, _, _ := w.fetch(t, lo, url, lose)
	<-s.Done()
	inf := s.Info()
	t.Logf("node: %+v", res)
	t.Logf("session: %d passes, FEC %s: %d shards over %d blocks, %d blocks repaired (%.2f predicted)",
		inf.Pass, inf.FEC, inf.FECShards, inf.FECGroups, inf.RepairGroups, inf.FECPredicted)
	if !res.Complete || res.Unopened != 0 {
		t.Errorf("sealed FEC session: complete %v, %d datagrams did not open", res.Complete, res.Unopened)
	}
	if res.Lost == 0 || res.Shards == 0 || res.Recovered == 0 || inf.FECShards == 0 {
		t.Errorf("lost %d, %d shards received, %d blocks rebuilt, %d shards sent", res.Lost, res.Shards, res.Recovered, inf.FECShards)
	}
}

// TestOtherVersion: a node hearing only datagrams of another protocol
// version (a sender of another sim) takes none of them, and its error
// says why it found no session.
func TestOtherVersion(t *testing.T) {
	lo := loopback(t)
	grp := &net.UDPAddr{IP: net.IPv4(239, 77, 0, 9), Port: 7990 + rand.Intn(9)}
	want := chunk.Sum([]byte("v2"))
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	old := AppendAnnounce(nil, 5, &Announce{State: StateSending, Block: 1444, Want: want, Objects: 3})
	old[2] = 1 // version 1: before FEC
	old = appendCRC(old[:len(old)-trailerLen])
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
				c.WriteToUDP(old, grp)
			}
		}
	}()
	_, err = Receive(context.Background(), ReceiveConfig{Group: grp, Iface: lo, Want: want, Timeout: time.Second}, simsync.NewSink(storetest.New(t)))
	if err == nil || !strings.Contains(err.Error(), "protocol version 1") {
		t.Fatalf("receiving among version 1 datagrams: %v; want an error naming version 1", err)
	}
	t.Log(err)
}
