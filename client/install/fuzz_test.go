package install

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/systemimager/sim/client"
	"github.com/systemimager/sim/client/catalog"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/store/storetest"
	simsync "github.com/systemimager/sim/sync"
	"github.com/systemimager/sim/sync/synctest"
)

var installRoutes = synctest.Routes(
	"GET /v1/install/config", "POST /v1/install/status", "GET /v1/install/status",
	"GET /v1/install/ipxe", "GET /v1/install/kernel", "GET /v1/install/initrd", "GET /v1/install/{}",
)

// FuzzInstallServer drives the install protocol as sim serve mounts it,
// with any query, credential and body: no panic, no 5xx for bad input,
// and a status report lands in the log only from the node's own token or
// an admin's.
func FuzzInstallServer(f *testing.F) {
	st := storetest.New(f)
	ctx := context.Background()
	src := f.TempDir()
	os.WriteFile(filepath.Join(src, "motd"), []byte("hi\n"), 0o644)
	if _, _, err := client.Commit(ctx, st, src, client.CommitOptions{Image: "debian"}); err != nil {
		f.Fatal(err)
	}
	if _, err := catalog.CommitFiles(ctx, st, catalog.LayoutImage("debian"), map[string][]byte{catalog.LayoutFile: []byte("part root rest ext4 /\n")}, "layout"); err != nil {
		f.Fatal(err)
	}
	reg, err := catalog.LoadRegistry(st)
	if err != nil {
		f.Fatal(err)
	}
	if err := reg.AddNode(&catalog.Node{Name: "n01", MAC: "52:54:00:12:34:01", Image: "debian"}); err != nil {
		f.Fatal(err)
	}
	if _, err := reg.Save(ctx, st, "n01"); err != nil {
		f.Fatal(err)
	}
	tok := synctest.Tokens{Read: "sim_read", Node: "sim_node", Admin: "sim_admin"}
	for name, t := range map[string]store.Token{tok.Read: {Name: "r", Role: "read"}, tok.Node: {Name: "n01", Role: "node", Node: "n01"}, tok.Admin: {Name: "a", Role: "admin"}} {
		t.Created = time.Now()
		if err := st.AddToken(t, simsync.TokenHash(name)); err != nil {
			f.Fatal(err)
		}
	}
	nb := f.TempDir()
	os.WriteFile(filepath.Join(nb, "vmlinuz"), []byte("kernel"), 0o644)
	srv := &simsync.Server{Store: st}
	x := NewService(st, nb, nil)
	x.Mount(srv)
	for k, seed := range []struct{ query, body string }{
		{"node=n01", ""}, {"", `{"node":"n01","step":"fetch","state":"running","bytes":5}`}, {"", ""},
		{"mac=52-54-00-12-34-01", ""}, {"", ""}, {"", ""}, {"", ""},
		{"mac=zz&image=../x", `{"step":"x","message":"` + string(make([]byte, 100)) + `"}`},
	} {
		for auth := uint8(0); auth < 4; auth++ {
			f.Add(uint8(k), "", seed.query, auth, []byte(seed.body))
		}
	}
	logf := StatusLog(st.Dir())
	f.Fuzz(func(t *testing.T, k uint8, arg, query string, auth uint8, body []byte) {
		before, _ := os.Stat(logf)
		r := synctest.Request(installRoutes, k, arg, query, auth, tok, "application/json", body)
		w := synctest.Serve(t, srv, r)
		after, _ := os.Stat(logf)
		grew := after != nil && (before == nil || after.Size() != before.Size())
		if grew && auth%6 != 2 && !synctest.IsAdmin(auth) {
			t.Fatalf("a status without the node's or an admin's token was logged (%d)", w.Code)
		}
	})
}
