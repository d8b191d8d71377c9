package sync_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	gosync "sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/systemimager/sim/store/storetest"
	simsync "github.com/systemimager/sim/sync"
)

// holdWriter passes an object stream through until hold bytes, then
// flushes them and blocks until the connection is gone: a frontend that
// dies in the middle of a stream, at a place the test chooses.
type holdWriter struct {
	http.ResponseWriter
	ctx  context.Context
	n    int64
	hold int64
}

func (w *holdWriter) Write(p []byte) (int, error) {
	if w.n+int64(len(p)) > w.hold {
		p = p[:w.hold-w.n]
		n, _ := w.ResponseWriter.Write(p)
		w.n += int64(n)
		w.ResponseWriter.(http.Flusher).Flush()
		<-w.ctx.Done()
		return n, w.ctx.Err()
	}
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

// TestRemoteFailover: a Remote naming two frontends of one store (two
// real listeners of one server) fetches a commit whole when the first
// refuses, answers 503, or dies in the middle of its stream; in the last
// case what arrived from the first is kept and only the rest comes from
// the second. Each time the switch is said once, naming both.
func TestRemoteFailover(t *testing.T) {
	f := setup(t)
	h := &simsync.Server{Store: f.srv}
	cases := []struct {
		name string
		// first returns the first frontend's URL and, for a frontend
		// that must die mid-stream, the function that kills it.
		first func(t *testing.T) (string, func())
	}{
		{"refused", func(t *testing.T) (string, func()) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr := ln.Addr().String()
			ln.Close() // nothing listens there now: connection refused
			return "http://" + addr, nil
		}},
		{"503", func(t *testing.T) (string, func()) {
			ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				http.Error(w, "restarting", http.StatusServiceUnavailable)
			}))
			t.Cleanup(ts.Close)
			return ts.URL, nil
		}},
		{"killed mid-stream", func(t *testing.T) (string, func()) {
			ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/v1/fetch" {
					w = &holdWriter{ResponseWriter: w, ctx: r.Context(), hold: 5 << 20}
				}
				h.ServeHTTP(w, r)
			}))
			t.Cleanup(ts.Close)
			return ts.URL, func() { ts.CloseClientConnections(); ts.Close() }
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			first, kill := tc.first(t)
			second := httptest.NewServer(h)
			t.Cleanup(second.Close)
			r := remote(t, first+","+second.URL, "")
			var got atomic.Int64
			r.Received = &got
			var mu gosync.Mutex
			var said []string
			r.Logf = func(format string, a ...any) {
				mu.Lock()
				said = append(said, fmt.Sprintf(format, a...))
				mu.Unlock()
			}
			node := storetest.New(t)
			type result struct {
				ps  simsync.PullStats
				err error
			}
			done := make(chan result, 1)
			go func() {
				ps, err := simsync.FetchCommit(context.Background(), node, r, nil, f.v2, true)
				done <- result{ps, err}
			}()
			var cut int64
			if kill != nil {
				// The first 4 MiB frame has arrived whole: kill the
				// frontend under the stream.
				for got.Load() < 4<<20 {
					select {
					case res := <-done:
						t.Fatalf("fetch ended before the kill: %+v %v", res.ps, res.err)
					case <-time.After(10 * time.Millisecond):
					}
				}
				cut = got.Load()
				kill()
			}
			res := <-done
			if res.err != nil {
				t.Fatal(res.err)
			}
			checkoutEqual(t, node, f.v2, f.src)
			if r.Base() != second.URL {
				t.Errorf("requests go to %s after the failure, want %s", r.Base(), second.URL)
			}
			mu.Lock()
			defer mu.Unlock()
			t.Logf("said %q; %d wire bytes, %d before the kill", said, res.ps.WireBytes, cut)
			if len(said) != 1 || !strings.Contains(said[0], first) || !strings.Contains(said[0], "switched to "+second.URL) {
				t.Errorf("said %q; want one line naming %s and the switch to %s", said, first, second.URL)
			}
			// The whole commit is about 6 MB of incompressible data: a
			// resume that fetched again what had arrived would read the
			// 4 MiB twice.
			if kill != nil && res.ps.WireBytes > 8<<20 {
				t.Errorf("%d wire bytes after %d had arrived from the first frontend: the resume fetched them again", res.ps.WireBytes, cut)
			}
		})
	}
}

// TestRemoteURLList: NewRemote takes one URL or a comma-separated list
// and names a bad element.
func TestRemoteURLList(t *testing.T) {
	for _, tc := range []struct {
		in    string
		bases []string
		err   string
	}{
		{"http://a:7480/", []string{"http://a:7480"}, ""},
		{"http://a:7480, https://b:7480/", []string{"http://a:7480", "https://b:7480"}, ""},
		{"http://a:7480,b:7480", nil, `remote "b:7480"`},
		{"http://a:7480,", nil, `remote ""`},
	} {
		r, err := simsync.NewRemote(tc.in, "")
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want one naming %s", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if got := r.Bases(); strings.Join(got, " ") != strings.Join(tc.bases, " ") || r.Base() != tc.bases[0] {
			t.Errorf("%q: bases %q (in use %s), want %q", tc.in, got, r.Base(), tc.bases)
		}
	}
}
