package bt_test

import (
	"context"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/systemimager/sim/client"
	"github.com/systemimager/sim/snapshot/snapshottest"
	"github.com/systemimager/sim/store/storetest"
	simsync "github.com/systemimager/sim/sync"
	"github.com/systemimager/sim/sync/bt"
	"github.com/systemimager/sim/sync/synctest"
)

var btRoutes = synctest.Routes(
	"GET "+bt.Prefix+"torrent", "GET "+bt.Prefix+"announce", "GET "+bt.Prefix+"seed/{}", "GET "+bt.Prefix+"status", "HEAD "+bt.Prefix+"seed/{}",
)

// FuzzSeederServer drives the seeder's endpoints (torrent documents, the
// tracker, the web seed, status) as sim serve mounts them: no panic, no
// 5xx for bad input.
func FuzzSeederServer(f *testing.F) {
	st := storetest.New(f)
	src := filepath.Join(f.TempDir(), "src")
	snapshottest.RandomFiles(f, src, 1, map[string]int{"etc/motd": 300, "usr/bin/tool": 300000})
	id, _, err := client.Commit(context.Background(), st, src, client.CommitOptions{Image: "img"})
	if err != nil {
		f.Fatal(err)
	}
	srv := &simsync.Server{Store: st, Planner: simsync.NewPlanner(st)}
	s := &bt.Seeder{Store: st, Planner: srv.Planner, Listen: "127.0.0.1:0"}
	if err := s.Start(); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(s.Close)
	s.Mount(srv)
	// A seeded torrent, for the web seed and status seeds.
	w := httptest.NewRecorder()
	srv.ServeHTTP(w, synctest.Request(btRoutes, 0, "", "want="+id.String(), 0, synctest.Tokens{}, "", nil))
	tor, err := bt.DecodeTorrent(w.Body.Bytes())
	if err != nil {
		f.Fatal(err)
	}
	ih := tor.InfoHash.HexString()
	f.Add(uint8(0), "", "want="+id.String()+"&have="+id.String(), uint8(0), []byte(nil))
	f.Add(uint8(1), "", "info_hash=%aa%bb&peer_id=12345678901234567890&port=6881&left=0&event=started", uint8(0), []byte(nil))
	f.Add(uint8(2), ih+"/"+tor.Info.Name, "", uint8(0), []byte(nil))
	f.Add(uint8(2), "zz/x", "", uint8(0), []byte(nil))
	f.Add(uint8(3), "", "", uint8(0), []byte(nil))
	f.Fuzz(func(t *testing.T, k uint8, arg, query string, auth uint8, body []byte) {
		synctest.Serve(t, srv, synctest.Request(btRoutes, k, arg, query, auth, synctest.Tokens{}, "", body))
	})
}
