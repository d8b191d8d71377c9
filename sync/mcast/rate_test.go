package mcast

import (
	"io"
	"log"
	"math"
	"net"
	"testing"
	"time"

	"github.com/systemimager/sim/chunk"
)

const mbit = 1e6 / 8 // bytes/s

// TestPacerAdapt: one decision of the rate control for each situation.
func TestPacerAdapt(t *testing.T) {
	for _, c := range []struct {
		name      string
		rate      float64 // Mbit/s before
		sent      float64 // Mbit/s achieved since the last decision
		slowStart bool
		loss      float64 // median
		floor     float64
		cap       float64 // Mbit/s
		onlyCut   bool
		want      float64 // Mbit/s after
		wantSlow  bool
	}{
		{"slow start: no loss, up by half", 100, 100, true, 0, 0, 1000, false, 150, true},
		{"slow start: background loss only", 100, 100, true, 0.012, 0.01, 1000, false, 150, true},
		{"slow start up to the cap", 400, 400, true, 0, 0, 500, false, 500, true},
		{"a first median (no floor yet) is the floor", 100, 100, true, 0.015, -1, 1000, false, 150, true},
		{"even a lossy one", 100, 100, true, 0.08, -1, 1000, false, 150, true},
		{"unless it is congestion by itself", 100, 100, true, 0.4, -1, 1000, false, 100 * 0.6 * headroom, false},
		{"some loss ends slow start", 200, 200, true, 0.025, 0.01, 1000, false, 200, false},
		{"congestion: down to what passed", 400, 400, true, 0.5, 0.01, 1000, false, 400 * 0.5 / 0.99 * headroom, false},
		{"congestion: from what was sent, not the set rate", 400, 250, false, 0.3, 0, 1000, false, 250 * 0.7 * headroom, false},
		{"congestion in a report overlapping a raise: back to before it", 300, 300, true, 0.2, 0.01, 1000, true, 200, false},
		{"or lower", 300, 300, true, 0.5, 0.01, 1000, true, 300 * 0.5 / 0.99 * headroom, false},
		{"a clean overlapping report decides nothing", 300, 300, true, 0.0, 0.0, 1000, true, 300, true},
		{"a high background is not congestion", 200, 200, false, 0.07, 0.05, 1000, false, 200, false},
		{"beyond the floor it is", 200, 200, false, 0.12, 0.05, 1000, false, 200 * 0.88 / 0.95 * headroom, false},
		{"the floor is capped", 200, 200, false, 0.3, 0.3, 1000, false, 200 * 0.7 / (1 - maxFloor) * headroom, false},
		{"not below the minimum", 10, 10, false, 0.999, 0, 1000, false, minBits / 1e6, false},
		{"additive increase", 200, 200, false, 0.005, 0.005, 1000, false, 200 + 200*stepShare, false},
		{"no raise the sender cannot use", 400, 200, true, 0, 0, 1000, false, 400, true},
		{"a lower cap applies at once", 400, 400, false, 0.0, 0.0, 300, false, 300, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			now := time.Now()
			p := &pacer{rate: c.rate * mbit, slowStart: c.slowStart, step: c.rate * mbit * stepShare, raisedFrom: c.rate * mbit / slowStartGrowth,
				meterFrom: now.Add(-200 * time.Millisecond), meterLast: now, meterBytes: c.sent * mbit * 0.2}
			p.adapt(c.loss, c.floor, int64(c.cap*1e6), c.onlyCut)
			if got := p.rate / mbit; math.Abs(got-c.want) > 0.01 || p.slowStart != c.wantSlow {
				t.Errorf("rate %.2f Mbit/s, slow start %v; want %.2f, %v", got, p.slowStart, c.want, c.wantSlow)
			}
		})
	}
}

// TestPacerProbe: after a cut the rate rises by a step per clean
// decision, the step doubling every second one (up to 8 steps); loss that
// is not congestion starts over with one step.
func TestPacerProbe(t *testing.T) {
	p := &pacer{rate: 200 * mbit, step: 8 * mbit}
	decide := func(loss float64) float64 {
		now := time.Now()
		p.meterFrom, p.meterLast, p.meterBytes = now.Add(-200*time.Millisecond), now, p.rate*0.2
		p.adapt(loss, 0.01, 10e9, false)
		return p.rate / mbit
	}
	var got []float64
	for i := 0; i < 10; i++ {
		got = append(got, decide(0.01))
	}
	got = append(got, decide(0.025), decide(0.01))
	want := []float64{208, 216, 232, 248, 280, 312, 376, 440, 504, 568, 568, 576}
	for i := range want {
		if math.Abs(got[i]-want[i]) > 0.01 {
			t.Fatalf("rates %v, want %v", got, want)
		}
	}
}

// TestPacerBegin: a session starting alone probes again from startBits
// (at most its cap); one starting while another sends takes the rate
// found.
func TestPacerBegin(t *testing.T) {
	p := newPacer()
	p.begin(1e9)
	if p.rateBits() != startBits || !p.slowStart {
		t.Fatalf("first session starts at %d bit/s (slow start %v), want %d", p.rateBits(), p.slowStart, startBits)
	}
	p.rate, p.slowStart = 600*mbit, false
	p.begin(1e9)
	if p.rateBits() != 600e6 || p.slowStart {
		t.Errorf("a second session at once changed the rate to %d (slow start %v)", p.rateBits(), p.slowStart)
	}
	p.end()
	p.end()
	p.begin(1e9)
	if p.rateBits() != startBits || !p.slowStart {
		t.Errorf("the next session starts at %d (slow start %v), want %d in slow start", p.rateBits(), p.slowStart, startBits)
	}
	p.end()
	p.begin(50e6)
	if p.rateBits() != 50e6 {
		t.Errorf("a session capped at 50 Mbit/s starts at %d", p.rateBits())
	}
}

// TestDropStragglers: at a pass end only members far above the median
// loss are dropped, never the majority: a high median means the rate is
// wrong, not the nodes.
func TestDropStragglers(t *testing.T) {
	for _, c := range []struct {
		name   string
		losses []float64 // per member; < 0: already dropped
		want   []bool
	}{
		{"every member lost half: the rate was wrong", []float64{0.52, 0.53, 0.52, 0.51, 0.52, 0.52}, []bool{false, false, false, false, false, false}},
		{"one slow link among fast ones", []float64{0.01, 0.9, 0.02, 0.01}, []bool{false, true, false, false}},
		{"a lossy node not far above a lossy median", []float64{0.4, 0.6, 0.45, 0.5}, []bool{false, false, false, false}},
		{"half behind slow links", []float64{0.9, 0.01, 0.9, 0.01}, []bool{true, false, true, false}},
		{"more than half behind slow links", []float64{0.9, 0.01, 0.9, 0.9}, []bool{false, false, false, false}},
		{"a single member", []float64{0.9}, []bool{false}},
		{"never more than half in all", []float64{-1, -1, 0.01, 0.95, 0.01}, []bool{true, true, false, false, false}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := &Session{m: &Manager{cfg: Config{Log: log.New(io.Discard, "", 0)}}, members: map[uint64]*member{}, Want: chunk.Sum(nil)}
			for i, l := range c.losses {
				mb := &member{node: uint64(i), addr: &net.UDPAddr{}, lastSeen: time.Now(), dropped: l < 0}
				if l >= 0 {
					mb.status = Status{Received: uint64(10000 * (1 - l)), Lost: uint64(10000 * l)}
				}
				s.members[uint64(i)] = mb
			}
			s.dropStragglers()
			for i, w := range c.want {
				if got := s.members[uint64(i)].dropped; got != w {
					t.Errorf("member %d (loss %.2f): dropped %v, want %v", i, c.losses[i], got, w)
				}
			}
		})
	}
}

// TestSessionFindsRate: four receivers behind a 40 Mbit/s bottleneck
// (modelled in their drop hooks: a datagram sent at rate R is lost with
// probability 1 - 40 Mbit/R, the same datagrams for every receiver, as
// at a real bottleneck) and no rate cap. The sender must find the rate:
// every receiver completes, none is dropped as a straggler, and the
// repairs stay small. At a fixed rate far above the bottleneck, every
// member lost most datagrams and was dropped.
func TestSessionFindsRate(t *testing.T) {
	lo := loopback(t)
	w := newWorld(t)
	const capacity = 40e6
	var s *Session
	bottleneck := func(d *Data) bool {
		r := float64(s.m.pacer.rateBits())
		if r <= capacity {
			return false
		}
		// a fixed pseudo-random position per datagram: the same drops
		// for every receiver
		u := math.Mod(float64(d.Seq)*0.6180339887498949, 1)
		return u < 1-capacity/r
	}
	nodes := []*node{w.node(t, "a", chunk.ID{}), w.node(t, "b", chunk.ID{}), w.node(t, "c", chunk.ID{}), w.node(t, "d", chunk.ID{})}
	for _, n := range nodes {
		n.drop = bottleneck
	}
	m := newManager(t, w, lo, Config{Wait: 5 * time.Second, MinReceivers: len(nodes)})
	s, err := m.Open(w.v2, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	receive(t, lo, s.Group, w.v2, nodes)
	<-s.Done()
	for _, n := range nodes {
		t.Logf("%s: %+v", n.name, n.res)
		if n.err != nil || !n.res.Complete || n.res.Dropped {
			t.Errorf("%s: %v %+v", n.name, n.err, n.res)
		}
	}
	inf := s.Info()
	t.Logf("sent %d bytes for %d in %d passes; rate at the end %.0f Mbit/s", inf.SentBytes, inf.Bytes, inf.Pass, float64(inf.RateBits)/1e6)
	if inf.SentBytes > inf.Bytes*3/2+(1<<20) {
		t.Errorf("sent %d bytes for %d bytes of content: the rate stayed above the bottleneck", inf.SentBytes, inf.Bytes)
	}
	for _, mb := range inf.Members {
		if mb.State != "done" {
			t.Errorf("member %s is %s", mb.Name, mb.State)
		}
	}
}
