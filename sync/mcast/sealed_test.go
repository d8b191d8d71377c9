package mcast

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"hash/crc32"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	gosync "sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/client"
	"github.com/systemimager/sim/snapshot/snapshottest"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/store/storetest"
	simsync "github.com/systemimager/sim/sync"
	"github.com/systemimager/sim/sync/seal"
	"golang.org/x/net/ipv4"
)

// capture is a stranger on the segment: it joins group and keeps every
// datagram that arrives, registering with nobody.
type capture struct {
	c    *net.UDPConn
	mu   gosync.Mutex
	got  [][]byte
	from []string // each datagram's source
	done chan struct{}
}

func startCapture(t *testing.T, lo *net.Interface, grp *net.UDPAddr) *capture {
	t.Helper()
	c, err := net.ListenMulticastUDP("udp4", lo, grp)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadBuffer(16 << 20)
	k := &capture{c: c, done: make(chan struct{})}
	go func() {
		defer close(k.done)
		buf := make([]byte, 9216)
		for {
			n, src, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			k.mu.Lock()
			k.got = append(k.got, bytes.Clone(buf[:n]))
			k.from = append(k.from, src.String())
			k.mu.Unlock()
		}
	}()
	return k
}

// stop ends the capture and returns its datagrams.
func (k *capture) stop() [][]byte {
	k.c.Close()
	<-k.done
	return k.got
}

// privateWorld: a server store with one commit holding a marker file of
// random (incompressible, so stored raw: its bytes are in the plain
// datagrams as they are) content, served with reads behind token.
type privateWorld struct {
	srv    *store.Store
	src    string
	want   chunk.ID
	marker []byte
}

const testToken = "reader-secret"

func newPrivateWorld(t *testing.T) *privateWorld {
	w := &privateWorld{srv: storetest.New(t), src: t.TempDir()}
	snapshottest.RandomFiles(t, w.src, 11, map[string]int{"secret/marker": 256 << 10, "a/big": 3 << 20, "b/small": 3000})
	w.want = commitDir(t, w.srv, w.src)
	var err error
	if w.marker, err = os.ReadFile(filepath.Join(w.src, "secret/marker")); err != nil {
		t.Fatal(err)
	}
	return w
}

// serve mounts a manager (sealed or not) on a server whose reads need
// testToken, and returns its URL.
func (w *privateWorld) serve(t *testing.T, lo *net.Interface, sealed bool, receivers, passes int, fec ...FEC) (*Manager, string) {
	cfg := Config{Wait: 10 * time.Second, MinReceivers: receivers, RateBits: 400e6, Sealed: sealed, MaxPasses: passes}
	if len(fec) > 0 {
		cfg.FEC = fec[0]
	}
	m := newManager(t, &world{srv: w.srv}, lo, cfg)
	srv := &simsync.Server{Store: w.srv, ReadTokens: []string{testToken}}
	if !srv.ReadsClosed() {
		t.Fatal("reads are open with a read token")
	}
	m.Mount(srv)
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	return m, hs.URL
}

// found counts the 32-byte windows of the marker, one every 512 bytes,
// that some datagram holds.
func (w *privateWorld) found(dgs [][]byte) (hits, windows int) {
	for off := 0; off+32 <= len(w.marker); off += 512 {
		windows++
		for _, d := range dgs {
			if bytes.Contains(d, w.marker[off:off+32]) {
				hits++
				break
			}
		}
	}
	return hits, windows
}

// fetch installs want on an empty node through the multicast transport
// (the session document over HTTP with token, the session, then HTTP
// for the rest), and checks the tree out.
func (w *privateWorld) fetch(t *testing.T, lo *net.Interface, url string, tamper func([]byte)) (Result, simsync.PullStats, string) {
	st := storetest.New(t)
	r, err := simsync.NewRemote(url, testToken)
	if err != nil {
		t.Fatal(err)
	}
	tr := &Node{Remote: r, Iface: lo, Timeout: 5 * time.Second, Name: "node", tamper: tamper}
	ps, err := simsync.FetchCommit(context.Background(), st, r, tr, w.want, true)
	if err != nil {
		t.Fatal(err)
	}
	res, _ := ps.Report.(Result)
	dir := filepath.Join(t.TempDir(), "root")
	if _, err := client.Checkout(context.Background(), st, w.want, dir, client.CheckoutOptions{NoSync: true}); err != nil {
		t.Fatal(err)
	}
	if d, err := snapshottest.Diff(w.src, dir); err != nil || len(d) > 0 {
		t.Errorf("checked-out tree differs from the source: %v %v", err, d[:min(len(d), 5)])
	}
	return res, ps, dir
}

// forge multicasts, every 5 ms until stop closes, announcements that
// session s is done and MEMBER answers that drop every node: in plain,
// and sealed under a key that is not the session's.
func forge(t *testing.T, lo *net.Interface, s *Session, stop chan struct{}) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Error(err)
		return
	}
	defer c.Close()
	pc := ipv4.NewPacketConn(c)
	pc.SetMulticastInterface(lo)
	pc.SetMulticastLoopback(true)
	other := testSealer(t)
	done := AppendAnnounce(nil, s.ID, &Announce{State: StateDone, Block: uint16(s.block)})
	var p Packet
	if err := Decode(done, &p); err != nil {
		t.Errorf("the forged announcement would not even decode: %v", err)
	}
	for ctr := uint64(1); ; ctr++ {
		select {
		case <-stop:
			return
		case <-time.After(5 * time.Millisecond):
		}
		c.WriteToUDP(done, s.Group)
		c.WriteToUDP(AppendSealedSender(nil, s.ID, ctr<<32, done, other), s.Group)
		s.mu.Lock()
		for _, mb := range s.members {
			drop := AppendMember(nil, s.ID, &Member{Node: mb.node, State: MemberDropped})
			c.WriteToUDP(drop, mb.addr)
			c.WriteToUDP(AppendSealedSender(nil, s.ID, ctr<<32, drop, other), mb.addr)
		}
		s.mu.Unlock()
	}
}

// tamperOnce alters the first sealed data datagram of an object (not
// the manifest) that it sees: one payload byte flipped, the checksum made
// right again, as an attacker on the segment would.
func tamperOnce() func([]byte) {
	var n atomic.Int32
	return func(b []byte) {
		if len(b) > dataHead+trailerLen && b[3] == KindSealedData && binary.BigEndian.Uint32(b[12:]) > 0 && n.Add(1) == 1 {
			b[dataHead+5] ^= 0x40
			binary.BigEndian.PutUint32(b[len(b)-trailerLen:], crc32.Checksum(b[:len(b)-trailerLen], crcTable))
		}
	}
}

// TestSealedSession: a server whose reads need a token seals its
// session. Two nodes with the token get the key in the session document
// and the image byte for byte; one of them receives a datagram that an
// attacker altered (the checksum recomputed): it does not open, counts
// as lost, is repaired by the next pass and never reaches an object
// (no object fails verification). A stranger who captured every
// datagram of the session holds no piece of the marker file, nor the
// commit id; the same capture of a plain session of the same image does
// (so the search would have found it). With a single pass, the altered
// datagram's block is not repaired by multicast: the HTTP fill, behind
// the same token, brings what it lacks.
func TestSealedSession(t *testing.T) {
	lo := loopback(t)
	w := newPrivateWorld(t)

	m, url := w.serve(t, lo, true, 2, 0)
	s, err := m.Open(w.want, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !s.Sealed() {
		t.Fatal("session of a private server not sealed")
	}
	k := startCapture(t, lo, s.Group)
	var res [2]Result
	var ps [2]simsync.PullStats
	var wg gosync.WaitGroup
	for i, tamper := range []func([]byte){nil, tamperOnce()} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i], ps[i], _ = w.fetch(t, lo, url, tamper)
		}()
	}
	// Two strangers who know the session's id (it is in every
	// datagram's header): one without a key, one with a key of its own.
	// Neither can read the announcements (so neither finds the session),
	// may register (the session would plan for them and repeat
	// everything for them each pass), or gets a byte.
	strangers := make([]Result, 2)
	for i := range strangers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cfg := ReceiveConfig{Group: s.Group, Iface: lo, Session: s.ID, Want: w.want, Name: "stranger", Timeout: 2 * time.Second}
			if i == 1 {
				k, _ := seal.NewKey()
				cfg.Key = &k
			}
			st := storetest.New(t)
			var err error
			// (the keyless one may take the forger's plain "done" below
			// for the session's end: it ends without error, with nothing)
			if strangers[i], err = Receive(context.Background(), cfg, simsync.NewSink(st)); err != nil && !strings.Contains(err.Error(), "no session") {
				t.Errorf("stranger %d: %v; want no session found", i, err)
			}
			if cs, err := st.Check(false, func(store.Problem) {}); err != nil || cs.Blobs != 0 {
				t.Errorf("stranger %d stored %d blobs (%v)", i, cs.Blobs, err)
			}
		}()
	}
	// A third one forges the session's end on the group all along, in
	// plain and sealed under a key of its own: the nodes obey only the
	// sender (else they would stop and fetch everything over HTTP).
	forged := make(chan struct{})
	go forge(t, lo, s, forged)
	wg.Wait()
	<-s.Done()
	close(forged)
	sealedDgs := k.stop()
	for i, r := range strangers {
		if r.Complete || r.GotBytes != 0 || r.Objects != 0 {
			t.Errorf("stranger %d received: %+v", i, r)
		}
	}
	for i, r := range res {
		if r.Ended || r.Dropped {
			t.Errorf("node %d obeyed a forged end: %+v", i, r)
		}
	}
	if inf := s.Info(); len(inf.Members) != 2 {
		t.Errorf("members %+v: want the two nodes holding the key", inf.Members)
	}
	for i, r := range res {
		t.Logf("node %d: %+v, %d object bytes over HTTP after multicast", i, r, ps[i].WireBytes-ps[i].TransportBytes)
		if !r.Complete || r.Rejected != 0 {
			t.Errorf("node %d: complete %v, %d objects failed verification: %+v", i, r.Complete, r.Rejected, r)
		}
	}
	if r := res[1]; r.Unopened != 1 || (r.Pass < 2 && r.Recovered < 1) || r.Lost == 0 {
		t.Errorf("tampered datagram: %d did not open, pass %d, %d lost, %d rebuilt; want 1 unopened, rebuilt by FEC or repaired in pass 2: %+v", r.Unopened, r.Pass, r.Lost, r.Recovered, r)
	}
	if res[0].Unopened != 0 {
		t.Errorf("untouched node: %d datagrams did not open", res[0].Unopened)
	}

	hits, windows := w.found(sealedDgs)
	if hits != 0 {
		t.Errorf("a stranger's capture of the sealed session holds %d of %d pieces of the marker", hits, windows)
	}
	all := bytes.Join(sealedDgs, nil)
	if bytes.Contains(all, w.want[:]) {
		t.Error("the sealed session names its commit on the group")
	}
	// what the sender multicast (the forger's are in the capture too)
	kinds := map[uint8]int{}
	for i, d := range sealedDgs {
		if len(d) > 3 && k.from[i] == s.conn.LocalAddr().String() {
			kinds[d[3]]++
		}
	}
	if kinds[KindData] != 0 || kinds[KindAnnounce] != 0 || kinds[KindRepair] != 0 || kinds[KindSealedSender] == 0 || kinds[KindSealedData] == 0 || kinds[KindSealedRepair] == 0 {
		t.Errorf("sealed session's datagrams by kind: %v", kinds)
	}
	t.Logf("sealed: a stranger captured %d datagrams (%d bytes; kinds %v): %d of %d marker pieces", len(sealedDgs), len(all), kinds, hits, windows)

	// control: the same capture of a plain session finds the marker
	m2, url2 := w.serve(t, lo, false, 1, 0)
	s2, err := m2.Open(w.want, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	k2 := startCapture(t, lo, s2.Group)
	if r, _, _ := w.fetch(t, lo, url2, nil); !r.Complete {
		t.Errorf("plain session: %+v", r)
	}
	<-s2.Done()
	plainDgs := k2.stop()
	hits, windows = w.found(plainDgs)
	t.Logf("plain: a stranger captured %d datagrams: %d of %d marker pieces", len(plainDgs), hits, windows)
	if hits < windows/2 || !bytes.Contains(bytes.Join(plainDgs, nil), w.want[:]) {
		t.Errorf("the plain session's capture holds %d of %d marker pieces (or no commit id): the search cannot see content", hits, windows)
	}

	// one pass only, without FEC: the object of the altered datagram
	// comes over HTTP
	m3, url3 := w.serve(t, lo, true, 1, 1, FEC{Off: true})
	s3, err := m3.Open(w.want, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r3, ps3, _ := w.fetch(t, lo, url3, tamperOnce())
	<-s3.Done()
	t.Logf("one pass: %+v; %d object bytes over HTTP", r3, ps3.WireBytes-ps3.TransportBytes)
	if r3.Complete || r3.Unopened != 1 || r3.Rejected != 0 || ps3.WireBytes <= ps3.TransportBytes {
		t.Errorf("one pass with an altered datagram: %+v, %d of %d bytes by multicast; want incomplete, 1 unopened, the rest over HTTP", r3, ps3.TransportBytes, ps3.WireBytes)
	}
}

// TestSealedSessionDocument: the key of a sealed session is in its
// document only: without a token (or with a wrong one) the open and the
// listing are refused (401); with the token the open answers the key,
// and the listing says "sealed" without it.
func TestSealedSessionDocument(t *testing.T) {
	lo := loopback(t)
	w := newPrivateWorld(t)
	m, url := w.serve(t, lo, true, 5, 0)
	do := func(method, path, token string) (int, string) {
		req, _ := http.NewRequest(method, url+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	open := "/v1/mcast/open?want=" + w.want.String()
	for _, tok := range []string{"", "not-the-token"} {
		for _, path := range []string{open, "/v1/mcast/sessions"} {
			method := "POST"
			if strings.HasSuffix(path, "sessions") {
				method = "GET"
			}
			if code, body := do(method, path, tok); code != http.StatusUnauthorized || strings.Contains(body, `"key"`) {
				t.Errorf("%s %s with token %q: %d %s; want 401", method, path, tok, code, body)
			}
		}
	}
	code, body := do("POST", open, testToken)
	if code != 200 {
		t.Fatalf("open with the token: %d %s", code, body)
	}
	rm, _ := simsync.NewRemote(url, testToken)
	o, err := OpenRemote(context.Background(), rm, w.want)
	if err != nil {
		t.Fatal(err)
	}
	key, err := o.SealKey()
	if err != nil || key == nil {
		t.Fatalf("document of a sealed session: key %v, %v (%+v)", key, err, o)
	}
	id, _ := ParseSession(o.Session)
	var s *Session
	for _, x := range m.sessions {
		if x.ID == id {
			s = x
		}
	}
	if k, ok := s.Key(); !ok || k != *key {
		t.Fatal("the document's key is not the session's")
	}
	code, body = do("GET", "/v1/mcast/sessions", testToken)
	if code != 200 || !strings.Contains(body, `"sealed": true`) || strings.Contains(body, hex.EncodeToString(key[:])) {
		t.Errorf("listing: %d %s; want sealed, without the key", code, body)
	}
	// a receiver cannot look for a sealed session by commit: it does
	// not announce it; one listening for it (--mcast-group) is told why
	// it finds none
	if _, err := Receive(context.Background(), ReceiveConfig{Group: s.Group, Iface: lo, Want: w.want, Key: key, Timeout: time.Second}, simsync.NewSink(storetest.New(t))); err == nil {
		t.Error("a sealed receive without a session id started")
	}
	_, err = Receive(context.Background(), ReceiveConfig{Group: s.Group, Iface: lo, Want: w.want, Timeout: time.Second}, simsync.NewSink(storetest.New(t)))
	if err == nil || !strings.Contains(err.Error(), "a sealed session was") {
		t.Errorf("listening for the commit of a sealed session: %v; want an error saying a sealed session was announced", err)
	}
}
