package rollout

import (
	"reflect"
	"strings"
	"testing"
)

func TestWaves(t *testing.T) {
	nodes := []string{"n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8"}
	for _, c := range []struct {
		canary int
		wave   string
		want   [][]string
		err    string
	}{
		{1, "4", [][]string{{"n1"}, {"n2", "n3", "n4", "n5"}, {"n6", "n7", "n8"}}, ""},
		{1, "", [][]string{{"n1"}, {"n2", "n3", "n4", "n5", "n6", "n7", "n8"}}, ""},
		{0, "50%", [][]string{{"n1", "n2", "n3", "n4"}, {"n5", "n6", "n7", "n8"}}, ""},
		{2, "30%", [][]string{{"n1", "n2"}, {"n3", "n4", "n5"}, {"n6", "n7", "n8"}}, ""},
		{10, "", [][]string{nodes}, ""},
		{0, "100%", [][]string{nodes}, ""},
		{1, "0", nil, "--wave 0"},
		{1, "120%", nil, "--wave 120%"},
		{-1, "", nil, "--canary -1"},
	} {
		got, err := Waves(nodes, c.canary, c.wave)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("canary %d wave %q: %v; want %q", c.canary, c.wave, err, c.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("canary %d wave %q = %v %v; want %v", c.canary, c.wave, got, err, c.want)
		}
	}
	for _, id := range []string{"r", "r0", "x1", "r1.json", "../r1"} {
		if CheckID(id) == nil {
			t.Errorf("CheckID(%q) accepted", id)
		}
	}
}
