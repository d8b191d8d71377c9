package metrics

import (
	"errors"
	"fmt"
	"github.com/systemimager/sim/sync/synctest"
	"math/rand"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/systemimager/sim/client"
	"github.com/systemimager/sim/client/fleet"
	"github.com/systemimager/sim/store/storetest"
	simsync "github.com/systemimager/sim/sync"
	"github.com/systemimager/sim/sync/mcast"
)

// TestMain runs the package's tests in a private network namespace when
// it can (root), as sync/mcast's do: multicast on its own loopback, never
// on a real LAN.
func TestMain(m *testing.M) { synctest.RunInNetns(m) }

// TestMulticast: a real session on the namespace's loopback, with 3% of
// the datagrams dropped by nftables on the way in: the multicast
// counters moved by at least what the receiver got, the session shows
// its loss and its repair passes, and promtool accepts the text.
func TestMulticast(t *testing.T) {
	if os.Getenv("SIM_MCAST_NETNS") != "1" {
		t.Skip("multicast sockets: needs root (a private network namespace, so no real LAN is touched)")
	}
	lo, err := net.InterfaceByName("lo")
	if err != nil || lo.Flags&net.FlagMulticast == 0 {
		t.Skipf("no multicast loopback: %v", err)
	}
	nft, err := exec.LookPath("nft")
	if err != nil {
		t.Skip("no nft (Debian nftables): no loss to measure")
	}
	st := storetest.New(t)
	src := t.TempDir()
	big := make([]byte, 8<<20)
	rand.New(rand.NewSource(7)).Read(big)
	os.WriteFile(filepath.Join(src, "big"), big, 0o644)
	id, _, err := client.Commit(t.Context(), st, src, client.CommitOptions{Image: "img"})
	if err != nil {
		t.Fatal(err)
	}
	srv := &simsync.Server{Store: st}
	grp := &net.UDPAddr{IP: net.IPv4(239, 77, 1, 1), Port: 7490 + rand.Intn(500)}
	mg := mcast.NewManager(st, simsync.NewPlanner(st), mcast.Config{Group: grp, Iface: lo, MTU: 1500, RateBits: 400e6, Wait: 5 * time.Second, MinReceivers: 1})
	t.Cleanup(mg.Close)
	fl := fleet.New(st, nil)
	t.Cleanup(fl.Close)
	(&Metrics{Fleet: fl, Services: map[string]simsync.Service{"multicast": mg}}).Mount(t.Context(), srv)
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	get := func() *Scrape {
		t.Helper()
		s, err := Get(t.Context(), hs.URL, "")
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	before := get()

	// 3% of the data datagrams to the group's port are lost on the way in.
	rules := fmt.Sprintf("table inet loss {\n chain input {\n  type filter hook input priority 0; policy accept;\n  udp dport %d numgen random mod 100 < 3 drop\n }\n}\n", grp.Port)
	c := exec.Command(nft, "-f", "-")
	c.Stdin = strings.NewReader(rules)
	if out, err := c.CombinedOutput(); err != nil {
		t.Skipf("nft: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command(nft, "delete", "table", "inet", "loss").Run() })

	s, err := mg.Open(id, mcast.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node := storetest.New(t)
	sink := simsync.NewSink(node)
	res, err := mcast.Receive(t.Context(), mcast.ReceiveConfig{Group: s.Group, Iface: lo, Want: id, Name: "n1", Has: node.HasMany, Timeout: 10 * time.Second}, sink)
	if _, cerr := sink.Close(); err == nil {
		err = cerr
	}
	if err != nil || !res.Complete {
		t.Fatalf("receive: %v %+v", err, res)
	}
	<-s.Done()
	after := get()
	t.Logf("receiver: %+v", res)
	if d := value(t, after, "sim_multicast_sent_bytes_total") - value(t, before, "sim_multicast_sent_bytes_total"); d < float64(res.GotBytes) {
		t.Errorf("sim_multicast_sent_bytes_total moved by %v; want at least the %d bytes received", d, res.GotBytes)
	}
	if d := value(t, after, "sim_transport_sent_bytes_total", "transport", "multicast"); d != value(t, after, "sim_multicast_sent_bytes_total") {
		t.Errorf("sim_transport_sent_bytes_total{transport=multicast} = %v; want sim_multicast_sent_bytes_total's", d)
	}
	if v := value(t, after, "sim_multicast_datagrams_total"); v < float64(res.GotBytes)/1500 {
		t.Errorf("sim_multicast_datagrams_total = %v; want at least one per 1,500 bytes received", v)
	}
	if v := value(t, after, "sim_multicast_sessions", "state", "done"); v != 1 {
		t.Errorf(`sim_multicast_sessions{state="done"} = %v; want 1`, v)
	}
	// The 3% is mended by FEC's repair shards in the first pass, or by
	// repair passes where those did not suffice: which, the draw of the
	// drops decides; the counter says what the session did.
	var passes int
	for _, si := range mg.Sessions() {
		if si.ID == fmt.Sprintf("%08x", s.ID) {
			passes = si.Pass
		}
	}
	if passes < 1 {
		t.Fatalf("session %08x not listed after it was done: %+v", s.ID, mg.Sessions())
	}
	if v := value(t, after, "sim_multicast_repair_passes_total"); v != float64(passes-1) {
		t.Errorf("sim_multicast_repair_passes_total = %v; the session made %d passes", v, passes)
	}
	if res.Lost == 0 || (res.Recovered == 0 && passes < 2) {
		t.Errorf("3%% loss neither lost a datagram nor was mended (FEC rebuilt %d blocks, %d passes): %+v", res.Recovered, passes, res)
	}
	sid := fmt.Sprintf("%08x", s.ID)
	if v := value(t, after, "sim_multicast_loss_ratio", "session", sid); v <= 0 || v > 0.2 {
		t.Errorf("sim_multicast_loss_ratio{session=%s} = %v; want about the 3%% dropped", sid, v)
	}
	if err := Promtool(t.Context(), after.Text); err != nil && !errors.Is(err, ErrNoPromtool) {
		t.Error(err)
	}
}
