package mcast

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/systemimager/sim/chunk"
	simnode "github.com/systemimager/sim/client/node"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/store/storetest"
	simsync "github.com/systemimager/sim/sync"
)

// memCorpus is the real tree the receiver-memory measurement sends: a
// Debian root filesystem (184 MB, 9185 entries; 65 MB stored).
const memCorpus = "/var/cache/sim/corpus/v2"

// memChildEnv, set, makes the test binary the measured receiver: mode
// (install: node.Checkout through the multicast transport, as sim
// checkout --transport multicast does; http: the same over HTTP;
// receive: Receive alone into a Sink; lossy: receive losing 1% of the
// data datagrams), the server's URL, and where a
// heap profile at the peak goes (may be empty).
const memChildEnv = "SIM_MCAST_MEM_CHILD"

// memReport is what the measured receiver process reports.
type memReport struct {
	Mode      string  `json:"mode"`
	PeakInuse uint64  `json:"peak_heap_inuse"` // HeapInuse's peak (sampled every 2 ms)
	PeakHeap  uint64  `json:"peak_heap_mapped"`
	MaxRSS    int64   `json:"max_rss"` // getrusage: the process's peak RSS
	CPU       float64 `json:"cpu_s"`   // user + sys of the whole process
	User, Sys float64
	Seconds   float64 `json:"seconds"`
	Result    string  `json:"result"`
	PeakMem   int64   `json:"peak_mem"` // Result.PeakMem: the receiver's window of objects
	Err       string  `json:"err,omitempty"`
}

// TestReceiverMemory sends a real Debian tree (memCorpus) from a real
// sender to one real receiver on loopback multicast, the receiver in a
// process of its own (this test binary again) so that its heap and CPU
// are its own, and holds its peak heap under a bound: what a receiver
// holds is a window (objects being put together and awaiting the
// decoder, bounded by ReceiveConfig.MemLimit; the Feed's frames for the
// checkout beside the fetch), not the image.
func TestReceiverMemory(t *testing.T) {
	lo := loopback(t)
	if testing.Short() {
		t.Skip("commits and sends a 184 MB tree")
	}
	if _, err := os.Stat(memCorpus); err != nil {
		t.Skipf("no corpus: %v", err)
	}
	srv := storetest.New(t)
	want := commitDir(t, srv, memCorpus)
	t.Logf("committed %s as %s", memCorpus, want.Short())
	w := &world{srv: srv}
	m := newManager(t, w, lo, Config{RateBits: 400e6, Wait: 10 * time.Second, MinReceivers: 1})
	hsrv := &simsync.Server{Store: srv}
	m.Mount(hsrv)
	hs := httptest.NewServer(hsrv)
	defer hs.Close()
	modes := []string{"receive", "install"}
	if s := os.Getenv("SIM_MCAST_MEM_MODES"); s != "" {
		modes = strings.Split(s, ",")
	}
	for _, mode := range modes {
		prof := ""
		if d := os.Getenv("SIM_MCAST_MEM_PROFILE"); d != "" {
			prof = filepath.Join(d, mode)
		}
		c := exec.Command(os.Args[0], "-test.run=^TestReceiverMemoryChild$", "-test.count=1")
		c.Env = append(os.Environ(), memChildEnv+"="+mode+","+hs.URL+","+prof)
		c.Stderr = os.Stderr
		out, err := c.Output()
		if err != nil {
			t.Fatalf("%s: receiver: %v\n%s", mode, err, out)
		}
		var rep memReport
		sc := bufio.NewScanner(strings.NewReader(string(out)))
		found := false
		for sc.Scan() {
			if s, ok := strings.CutPrefix(sc.Text(), "MEMREPORT "); ok {
				found = json.Unmarshal([]byte(s), &rep) == nil
			}
		}
		if !found {
			t.Fatalf("%s: no report:\n%s", mode, out)
		}
		t.Logf("%s: peak heap in use %.1f MB, heap mapped %.1f MB, max RSS %.1f MB, objects held %.1f MB, CPU %.2f s (user %.2f, sys %.2f) in %.1f s; %s",
			mode, float64(rep.PeakInuse)/1e6, float64(rep.PeakHeap)/1e6, float64(rep.MaxRSS)/1e6, float64(rep.PeakMem)/1e6, rep.CPU, rep.User, rep.Sys, rep.Seconds, rep.Result)
		if rep.Err != "" {
			t.Errorf("%s: %s", mode, rep.Err)
		}
		if mode == "receive" && rep.PeakMem > memWindow {
			t.Errorf("%s: the receiver held %.1f MB of objects at once, over %.0f MB (a few objects)", mode, float64(rep.PeakMem)/1e6, float64(memWindow)/1e6)
		}
		if rep.PeakMem > DefaultMemLimit {
			t.Errorf("%s: the receiver held %.1f MB of objects at once, over DefaultMemLimit", mode, float64(rep.PeakMem)/1e6)
		}
		if mode == "receive" && rep.PeakInuse > memBound {
			t.Errorf("receive: the receiver's heap peaked at %.1f MB, over the %.0f MB bound", float64(rep.PeakInuse)/1e6, float64(memBound)/1e6)
		}
	}
}

// memWindow bounds the objects a receiver holds at once in
// TestReceiverMemory's transfer (receive mode, no loss): the one or two
// arriving and the few the decoder has yet to do (objects are about 4
// MiB of stored frames; corpus v2 makes 43 of 1.5 MB on average).
// Measured: 6.9 MB. Before objects were decoded as they completed, a
// receiver held all of them: 65 MB. In the install the decoder shares
// the CPU and the disk with the checkout and may trail by more (8.7 to
// 26 MB measured): there it is DefaultMemLimit that bounds them.
const memWindow = 32 << 20

// memBound bounds the receiver's heap (HeapInuse, sampled) in
// TestReceiverMemory's receive mode: the window (memWindow at most),
// the Sink's decoded frames (a 4 MiB buffer or two) and the store's
// fixed part (badger's memtable arenas, 21 MB, the pack writer), about
// 45 MB live, and the GC's slack (GOGC=100: the heap grows to twice
// what was live at the last collection): 90 MB, and a margin. Measured:
// 80 MB; before (every object held until the last block was in, then
// decoded at once) 177 MB, growing with the image. The install (with
// the checkout beside the fetch) adds the Feed's frames (up to
// sync.DefaultFeedBytes, 128 MiB) and the store's frame cache (48 MiB)
// when the checkout trails the fetch: it is measured, not bounded here.
const memBound = 120e6

// TestReceiverMemoryChild is the measured receiver of TestReceiverMemory
// (skipped unless run by it).
func TestReceiverMemoryChild(t *testing.T) {
	env := os.Getenv(memChildEnv)
	if env == "" {
		t.Skip("run by TestReceiverMemory")
	}
	lo := loopback(t)
	mode, rest, _ := strings.Cut(env, ",")
	url, prof, _ := strings.Cut(rest, ",")
	rep := memReport{Mode: mode}
	st := storetest.New(t)
	r, err := simsync.NewRemote(url, "")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "root")

	// Sample the heap: runtime/metrics does not stop the world.
	samples := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/unused:bytes"},
		{Name: "/memory/classes/heap/free:bytes"}}
	stop, stopped := make(chan struct{}), make(chan struct{})
	var peakProf []byte
	go func() {
		defer close(stopped)
		tk := time.NewTicker(2 * time.Millisecond)
		defer tk.Stop()
		lastProf := uint64(0)
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
			}
			metrics.Read(samples)
			inuse := samples[0].Value.Uint64() + samples[1].Value.Uint64()
			mapped := inuse + samples[2].Value.Uint64()
			rep.PeakInuse = max(rep.PeakInuse, inuse)
			rep.PeakHeap = max(rep.PeakHeap, mapped)
			if prof != "" && inuse > lastProf+lastProf/10 {
				// a heap profile near the peak: what is live there
				lastProf = inuse
				if os.Getenv("SIM_MCAST_MEM_GC") != "" {
					runtime.GC() // the profile then shows what is live now
				}
				var b strings.Builder
				pprof.Lookup("heap").WriteTo(&b, 0)
				peakProf = []byte(b.String())
			}
		}
	}()
	if prof != "" {
		if f, err := os.Create(prof + ".cpu"); err == nil {
			pprof.StartCPUProfile(f)
			defer f.Close()
		}
	}
	var ru0, ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	start := time.Now()
	ctx := context.Background()
	switch mode {
	case "install", "http":
		o := simnode.CheckoutOptions{Store: st, Remote: r, Ref: "img", Dir: dir}
		var nd *Node
		if mode == "install" {
			nd = &Node{Remote: r, Iface: lo, Timeout: 15 * time.Second, Name: "memnode"}
			o.Transport = nd
		}
		res, err := simnode.Checkout(ctx, o)
		if err != nil {
			rep.Err = err.Error()
		} else {
			rep.Result = fmt.Sprintf("fetched %d bytes (wire), feed %+v", res.Transfer.WireBytes, res.Feed)
			if mode == "install" {
				if mr, ok := res.Transfer.Report.(Result); ok {
					rep.PeakMem = mr.PeakMem
					rep.Result += fmt.Sprintf("; multicast %+v", mr)
					if !mr.Complete {
						rep.Err = "multicast incomplete"
					}
				}
			}
		}
	case "receive", "lossy":
		o, err := OpenRemote(ctx, r, mustResolve(t, r))
		if err != nil {
			t.Fatal(err)
		}
		var drop func(*Data) bool
		if mode == "lossy" {
			// 1% of the data datagrams lost: FEC rebuilds, repair passes
			rng := mrand.New(mrand.NewPCG(1, 2))
			drop = func(*Data) bool { return rng.Float64() < 0.01 }
		}
		res, err := receiveDoc(ctx, o, lo, st, drop)
		rep.PeakMem = res.PeakMem
		rep.Result = fmt.Sprintf("%+v", res)
		if err != nil || !res.Complete {
			rep.Err = fmt.Sprintf("receive: %v complete=%v", err, res.Complete)
		}
	}
	rep.Seconds = time.Since(start).Seconds()
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	close(stop)
	<-stopped
	if prof != "" {
		pprof.StopCPUProfile()
	}
	tv := func(a, b syscall.Timeval) float64 { return float64(b.Nano()-a.Nano()) / 1e9 }
	rep.User, rep.Sys = tv(ru0.Utime, ru1.Utime), tv(ru0.Stime, ru1.Stime)
	rep.CPU = rep.User + rep.Sys
	rep.MaxRSS = ru1.Maxrss << 10
	if prof != "" && peakProf != nil {
		os.WriteFile(prof+".heap", peakProf, 0o644)
	}
	b, _ := json.Marshal(rep)
	fmt.Printf("MEMREPORT %s\n", b)
	runtime.KeepAlive(st)
}

func mustResolve(t *testing.T, r *simsync.Remote) chunk.ID {
	x, _, err := r.Resolve(context.Background(), "img")
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// receiveDoc receives the session of document o into st, alone (no
// checkout beside it).
func receiveDoc(ctx context.Context, o *OpenResponse, lo *net.Interface, st *store.Store, drop func(*Data) bool) (Result, error) {
	g, err := net.ResolveUDPAddr("udp4", o.Group)
	if err != nil {
		return Result{}, err
	}
	id, err := ParseSession(o.Session)
	if err != nil {
		return Result{}, err
	}
	sink := simsync.NewSink(st)
	res, err := Receive(ctx, ReceiveConfig{Group: g, Iface: lo, Session: id, Want: o.Want, Has: st.HasMany, Timeout: 15 * time.Second, drop: drop}, sink)
	if _, cerr := sink.Close(); err == nil {
		err = cerr
	}
	return res, err
}

// TestReceiverMemLimit: a window smaller than one object still takes one
// object at a time (an object alone always fits), leaves the others
// for later passes, and reuses its buffers without corrupting the next
// object: with FEC off and 2% loss every object has holes at the first
// pass end, and the node completes by multicast all the same.
func TestReceiverMemLimit(t *testing.T) {
	lo := loopback(t)
	w := newWorld(t)
	m := newManager(t, w, lo, Config{RateBits: 300e6, Wait: 5 * time.Second, MinReceivers: 1, FEC: FEC{Off: true}, MaxPasses: 20})
	s, err := m.Open(w.v2, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st := storetest.New(t)
	rng := mrand.New(mrand.NewPCG(7, 8))
	sink := simsync.NewSink(st)
	res, err := Receive(context.Background(), ReceiveConfig{Group: s.Group, Iface: lo, Want: w.v2, Has: st.HasMany,
		Timeout: 5 * time.Second, MemLimit: 1 << 20, drop: func(*Data) bool { return rng.Float64() < 0.02 }}, sink)
	if _, cerr := sink.Close(); err == nil {
		err = cerr
	}
	<-s.Done()
	t.Logf("%+v", res)
	if err != nil || !res.Complete {
		t.Fatalf("not complete by multicast: %v %+v", err, res)
	}
	if k := missing(t, st, w.srv, w.v2); k != 0 {
		t.Errorf("lacks %d objects of v2", k)
	}
	if res.Pass < 2 || res.Rejected != 0 {
		t.Errorf("want repair passes and no object failing verification: %+v", res)
	}
	if res.PeakMem > 8<<20 {
		t.Errorf("held %d bytes of objects with a 1 MiB limit: more than one object", res.PeakMem)
	}
}
