package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	gosync "sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/snapshot/snapshottest"
	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
)

// rss returns the resident and peak resident memory of process pid, in
// bytes.
func rss(t *testing.T, pid int) (now, peak int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			now = kb << 10
		case "VmHWM:":
			peak = kb << 10
		}
	}
	return now, peak
}

// raiseFDs lifts this process's open-file limit to its hard limit.
func raiseFDs() uint64 {
	var l syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l)
	l.Cur = l.Max
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	return l.Cur
}

// TestMaliciousClients: sim serve (a child process, its memory measured)
// under oversized bodies, slowloris connections, 10,000 concurrent
// requests, clients that stop reading their streams, truncated pushes
// and pushes of objects with wrong ids, all at once, keeps serving
// nodes (three install the image while it lasts, and once more after),
// its memory stays bounded, and nothing bad enters the store: fsck
// --read-data is clean and the wrong objects are not there.
func TestMaliciousClients(t *testing.T) {
	if testing.Short() {
		t.Skip("load test: -short")
	}
	limit := raiseFDs()
	// This process holds the clients' sockets (the server, another
	// process, the same number): 10,000 if the fd limit allows.
	flood := 10000
	if limit < uint64(flood)+3000 {
		flood = int(limit) - 3000
	}
	st := newStore(t)
	src := filepath.Join(t.TempDir(), "src")
	files := map[string]int{}
	for i := 0; i < 24; i++ {
		files[fmt.Sprintf("usr/lib/lib%02d.so", i)] = 2 << 20 // random: 48 MB that do not compress
	}
	snapshottest.RandomFiles(t, src, 1, files)
	id := lastLine(ok(t, st, "commit", src, "--image", "img"))
	tokens := filepath.Join(t.TempDir(), "tokens")
	os.WriteFile(tokens, []byte("admin-secret\n"), 0o600)
	url, srv := startServerProcess(t, st, "--token-file", tokens, "--idle-timeout", "3s", "--no-bittorrent")
	host := strings.TrimPrefix(url, "http://")
	_, base := rss(t, srv.Process.Pid)

	var peakSeen atomic.Int64
	stopSampling := make(chan struct{})
	var sampler gosync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		for {
			select {
			case <-stopSampling:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if now, _ := rss(t, srv.Process.Pid); now > peakSeen.Load() {
				peakSeen.Store(now)
			}
		}
	}()

	var wg gosync.WaitGroup
	var stats struct {
		gosync.Mutex
		counts map[string]int
	}
	stats.counts = map[string]int{}
	count := func(what string) { stats.Lock(); stats.counts[what]++; stats.Unlock() }
	attack := func(fn func()) {
		wg.Add(1)
		go func() { defer wg.Done(); fn() }()
	}

	// Clients that ask for the whole image and never read it: 80, more
	// than the 64 stream slots. IdleTimeout frees the slots.
	var holders []net.Conn
	for i := 0; i < 80; i++ {
		c, err := net.Dial("tcp", host)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "GET /v1/fetch?want=%s HTTP/1.1\r\nHost: x\r\n\r\n", id)
		holders = append(holders, c)
	}
	// Slowloris: 2,000 connections sending their headers a byte at a time.
	attack(func() {
		var conns []net.Conn
		for i := 0; i < 2000; i++ {
			if c, err := net.Dial("tcp", host); err == nil {
				c.Write([]byte("GET /v1/refs HTTP/1.1\r\nHost: x\r\nX-Slow: "))
				conns = append(conns, c)
			}
		}
		for round := 0; round < 15; round++ {
			cut := 0
			for _, c := range conns {
				if _, err := c.Write([]byte("a")); err != nil {
					cut++
				}
			}
			if round == 14 {
				stats.Lock()
				stats.counts["slowloris connections cut by the server"] = cut
				stats.Unlock()
			}
			time.Sleep(time.Second)
		}
		for _, c := range conns {
			c.Close()
		}
	})
	// Oversized bodies: 100 MB of ids, of JSON, of status.
	attack(func() {
		big := bytes.Repeat([]byte("x"), 100<<20)
		for _, p := range []string{"/v1/objects", "/v1/have", "/v1/refs", "/v1/install/status", "/v1/push"} {
			req, _ := http.NewRequest("POST", url+p, bytes.NewReader(big))
			req.Header.Set("Authorization", "Bearer admin-secret")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				count("oversized body: connection cut")
				continue
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			count(fmt.Sprintf("oversized body: %d", resp.StatusCode))
		}
	})
	// Pushes: one truncated half-way, one with a wrong id.
	wrongData := []byte("these bytes are not what their id says")
	wrongID := chunk.Sum([]byte("something else"))
	attack(func() {
		var good, bad bytes.Buffer
		enc, _ := simsync.NewEncoder(&good)
		for i := 0; i < 50; i++ {
			b := bytes.Repeat([]byte{byte(i)}, 100000)
			enc.Blob(store.TypeData, chunk.Sum(b), b)
		}
		enc.Close()
		benc, _ := simsync.NewEncoder(&bad)
		benc.Blob(store.TypeData, wrongID, wrongData)
		benc.Close()
		for name, body := range map[string][]byte{"truncated push": good.Bytes()[:good.Len()/2], "push with a wrong id": bad.Bytes()} {
			req, _ := http.NewRequest("POST", url+"/v1/push", bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer admin-secret")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				count(name + ": error")
				continue
			}
			msg, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			count(fmt.Sprintf("%s: %d %s", name, resp.StatusCode, strings.TrimSpace(string(msg))))
		}
	})
	// 10,000 requests at once, each on its own connection.
	var answered, failed atomic.Int64
	floodStart := time.Now()
	var floodTook time.Duration
	attack(func() {
		var fw gosync.WaitGroup
		for i := 0; i < flood; i++ {
			fw.Add(1)
			go func() {
				defer fw.Done()
				c, err := net.DialTimeout("tcp", host, 60*time.Second)
				if err != nil {
					failed.Add(1)
					return
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(90 * time.Second))
				fmt.Fprintf(c, "GET /v1/commits/%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", id)
				line, err := bufio.NewReader(c).ReadString('\n')
				if err == nil && strings.HasPrefix(line, "HTTP/1.1 200") {
					answered.Add(1)
				} else {
					failed.Add(1)
				}
			}()
		}
		fw.Wait()
		floodTook = time.Since(floodStart)
	})

	// Meanwhile, nodes install.
	var installs []time.Duration
	for i := 0; i < 3; i++ {
		start := time.Now()
		ok(t, filepath.Join(t.TempDir(), "node"), "checkout", "--from", url, "img", filepath.Join(t.TempDir(), "root"), "--no-sync")
		installs = append(installs, time.Since(start))
	}
	wg.Wait()
	for _, c := range holders {
		c.Close()
	}
	start := time.Now()
	root := filepath.Join(t.TempDir(), "root")
	ok(t, filepath.Join(t.TempDir(), "node"), "checkout", "--from", url, "img", root, "--no-sync")
	snapshottest.Equal(t, src, root)
	installs = append(installs, time.Since(start))
	close(stopSampling)
	sampler.Wait()
	_, peak := rss(t, srv.Process.Pid)

	t.Logf("FIGURE malicious clients: %d concurrent requests (fd limit %d): %d answered, %d failed, in %.1fs; 80 non-reading streams, 2,000 slowloris connections",
		flood, limit, answered.Load(), failed.Load(), floodTook.Seconds())
	t.Logf("FIGURE sim serve memory: %.0f MB resident before, peak %.0f MB (sampled %.0f MB)", float64(base)/1e6, float64(peak)/1e6, float64(peakSeen.Load())/1e6)
	t.Logf("FIGURE node installs of the 48 MB image during the attack: %v; after it: %v", installs[:3], installs[3])
	for k, v := range stats.counts {
		t.Logf("%s: %d", k, v)
	}
	if answered.Load() < int64(flood)*9/10 {
		t.Errorf("only %d of %d concurrent requests were answered", answered.Load(), flood)
	}
	if peak > 1<<30 {
		t.Errorf("sim serve peaked at %d MB", peak>>20)
	}
	if stats.counts["slowloris connections cut by the server"] < 1900 {
		t.Errorf("the server kept %d slowloris connections", 2000-stats.counts["slowloris connections cut by the server"])
	}
	for k := range stats.counts {
		if strings.HasPrefix(k, "oversized body: 2") || strings.HasPrefix(k, "push with a wrong id: 2") || strings.HasPrefix(k, "truncated push: 2") {
			t.Errorf("accepted: %s", k)
		}
	}
	// Nothing bad in the store (fsck runs in the server, which holds it).
	if s := ok(t, st, "fsck", "--read-data"); !strings.Contains(s, "no errors") {
		t.Errorf("fsck: %s", s)
	}
	if resp, err := http.Get(url + "/v1/blobs/" + wrongID.String()); err != nil || resp.StatusCode != 404 {
		t.Errorf("the wrong object: %v %v", resp.StatusCode, err)
	}
}
