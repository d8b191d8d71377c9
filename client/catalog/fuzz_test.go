package catalog

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/systemimager/sim/chunk"
)

// FuzzRegistry: node and group documents as a push could bring them
// (sim@nodes is an image like any other) never make LoadRegistry panic;
// what it accepts is what sim node add would accept (every node passes
// Check, every group check), and it resolves without panicking.
func FuzzRegistry(f *testing.F) {
	f.Add(`{"name":"n01","mac":"52:54:00:12:34:01","ip":"198.18.0.11/15","gateway":"198.18.0.1","image":"debian","groups":["compute"],"overrides":["n01"],"scripts":["motd"],"disk":"/dev/sda"}`,
		`{"name":"compute","image":"debian","overrides":["site"],"scripts":["motd"]}`)
	f.Add(`{"name":"n01","ip":"1.2.3.4/24\n[Match]"}`, `{"name":"compute","image":"../x"}`)
	f.Add(`{"name":"n01","disk":"/dev/../etc/passwd"} {}`, `{"name":"compute","bogus":1}`)
	// The way in: documents committed to the image and loaded back.
	st := openStore(f)
	if _, err := CommitFiles(context.Background(), st, NodesImage, map[string][]byte{"nodes/n01": []byte(`{"name":"n01","ip":"x"}`)}, "bad"); err != nil {
		f.Fatal(err)
	}
	if _, err := LoadRegistry(st); err == nil || !strings.Contains(err.Error(), `invalid IP "x"`) {
		f.Fatalf("a bad node document loaded: %v", err)
	}
	f.Fuzz(func(t *testing.T, node, group string) {
		files := map[string][]byte{"nodes/n01": []byte(node), "groups/compute": []byte(group)}
		r, err := decodeRegistry(chunk.ID{1}, files)
		if err != nil {
			if !strings.Contains(err.Error(), NodesImage) {
				t.Fatalf("error does not name the registry: %v", err)
			}
			return
		}
		for _, n := range r.Nodes {
			c := *n
			if err := c.Check(); err != nil {
				t.Fatalf("accepted a node sim node add refuses: %v", err)
			}
			r.Resolve(n)
		}
		for _, g := range r.Groups {
			if err := g.check(); err != nil {
				t.Fatalf("accepted a group: %v", err)
			}
			if _, err := json.Marshal(g); err != nil {
				t.Fatal(err)
			}
		}
	})
}
