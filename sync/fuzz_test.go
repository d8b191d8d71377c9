package sync_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/client"
	"github.com/systemimager/sim/snapshot/snapshottest"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/store/storetest"
	simsync "github.com/systemimager/sim/sync"
	"github.com/systemimager/sim/sync/synctest"
)

// serverRoutes are the core API's endpoints, with paths the fuzzer
// fills in.
var serverRoutes = synctest.Routes(
	"GET /v1/whoami", "GET /v1/refs", "GET /v1/commits/{}", "GET /v1/commits/{}/signatures",
	"GET /v1/blobs/{}", "GET /v1/packs/{}", "GET /v1/fetch", "GET /v1/plan",
	"POST /v1/objects", "POST /v1/have", "POST /v1/push", "POST /v1/refs",
	"GET /{}", "DELETE /v1/refs",
)

// fuzzServer is a server over a small store with one image, a tag, a
// signed commit and tokens of every role.
func fuzzServer(f *testing.F) (*simsync.Server, *store.Store, synctest.Tokens, chunk.ID) {
	st := storetest.New(f)
	src := filepath.Join(f.TempDir(), "src")
	snapshottest.RandomFiles(f, src, 1, map[string]int{"etc/motd": 300, "usr/bin/tool": 200000})
	id, _, err := client.Commit(context.Background(), st, src, client.CommitOptions{Image: "img"})
	if err != nil {
		f.Fatal(err)
	}
	st.CreateTag("v1", id)
	tok := synctest.Tokens{Read: "sim_read", Node: "sim_node", Admin: "sim_admin"}
	for name, t := range map[string]store.Token{tok.Read: {Name: "r", Role: "read"}, tok.Node: {Name: "n01", Role: "node", Node: "n01"}, tok.Admin: {Name: "a", Role: "admin"}} {
		t.Created = time.Now()
		if err := st.AddToken(t, simsync.TokenHash(name)); err != nil {
			f.Fatal(err)
		}
	}
	return &simsync.Server{Store: st, Planner: simsync.NewPlanner(st)}, st, tok, id
}

// refState is what a request without the admin token must not change.
func refState(t *testing.T, st *store.Store) string {
	ims, err := st.Images()
	if err != nil {
		t.Fatal(err)
	}
	tags, err := st.Tags()
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	fmt.Fprint(&b, ims)
	for _, tg := range tags {
		fmt.Fprint(&b, tg.Name, tg.Commit)
	}
	return b.String()
}

// FuzzServer drives the real Server with any method's path, query,
// credential and body: it never panics or answers 5xx for bad input,
// and nothing but an admin request moves a ref.
func FuzzServer(f *testing.F) {
	srv, st, tok, id := fuzzServer(f)
	raw, _ := st.CommitRaw(id)
	refs, _ := json.Marshal(simsync.RefsRequest{Commits: []json.RawMessage{raw}, Updates: []simsync.RefUpdate{{Kind: "image", Name: "img2", New: id}}})
	var wire bytes.Buffer
	enc, _ := simsync.NewEncoder(&wire)
	pl := simsync.NewPlanner(st)
	c, _ := st.Commit(id)
	pl.SendObjects(context.Background(), enc, []chunk.ID{c.Tree})
	enc.Close()
	hex := id.String()
	for k, seed := range []struct {
		arg, query string
		body       []byte
	}{
		{"", "", nil}, {"", "", nil}, {hex, "", nil}, {hex, "", nil}, {c.Tree.String(), "", nil}, {"zz", "", nil},
		{"", "want=" + hex, nil}, {"", "want=" + hex + "&have=" + hex, nil},
		{"", "", append(id[:], c.Tree[:]...)}, {"", "", c.Tree[:]}, {"", "", wire.Bytes()}, {"", "", refs}, {"x", "", nil}, {"", "", nil},
	} {
		for auth := uint8(0); auth < 6; auth += 3 {
			f.Add(uint8(k), seed.arg, seed.query, auth, seed.body)
		}
	}
	f.Fuzz(func(t *testing.T, k uint8, arg, query string, auth uint8, body []byte) {
		before := refState(t, st)
		synctest.Serve(t, srv, synctest.Request(serverRoutes, k, arg, query, auth, tok, "", body))
		if !synctest.IsAdmin(auth) && refState(t, st) != before {
			t.Fatalf("a request without the admin token moved refs")
		}
	})
}
