package disk

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/systemimager/sim/client/layout"
)

// TestParseCaptured reads what mdadm and lvm printed in the RAID1 + LVM
// VM of TestMetalRAID (testdata/vm-raid, written by it with
// SIM_CAPTURE_TESTDATA), and decides keep on it: the refusals name the
// array or LV and what differs.
func TestParseCaptured(t *testing.T) {
	read := func(n string) string {
		b, err := os.ReadFile(filepath.Join("testdata/vm-raid", n))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	md0, err := ParseMdadmExport(read("md0.export"))
	if err != nil || md0.Level != "raid1" || md0.Devices != 2 || md0.Metadata != "1.0" ||
		!reflect.DeepEqual(md0.Members, []string{"/dev/vda2", "/dev/vdb2"}) || len(md0.Spares) != 0 {
		t.Errorf("md0: %+v %v", md0, err)
	}
	md1, err := ParseMdadmExport(read("md1.export"))
	if err != nil || md1.Metadata != "1.2" || !reflect.DeepEqual(md1.Members, []string{"/dev/vda3", "/dev/vdb3"}) {
		t.Errorf("md1: %+v %v", md1, err)
	}
	if _, err := ParseMdadmExport("hello\n"); err == nil {
		t.Error("not mdadm output: no error")
	}
	ex := ParseExamine(read("vda2.examine"))
	if ex.Level != "raid1" || ex.Devices != 2 || ex.UUID != md0.UUID {
		t.Errorf("vda2 examine: %+v (md0 %s)", ex, md0.UUID)
	}
	st, err := ParseLVM([]byte(read("pvs.json")), []byte(read("vgs.json")), []byte(read("lvs.json")))
	if err != nil || len(st.PVs) != 1 || st.PVs[0] != (LVMPV{"/dev/md1", "data"}) || len(st.VGs) != 1 || st.VGs[0].Free != 0 || len(st.LVs) != 2 {
		t.Fatalf("lvm: %+v %v", st, err)
	}
	if _, err := ParseLVM([]byte("{"), nil, nil); err == nil || !strings.Contains(err.Error(), "pvs") {
		t.Errorf("bad pvs JSON: %v", err)
	}

	for _, c := range []struct{ raid, want string }{
		{"raid md0 1 a,b ext4 /x metadata=1.0 keep", ""},
		{"raid md0 5 a,b,c ext4 /x metadata=1.0 keep", "member /dev/vda2 belongs to a raid1 array, the layout asks RAID 5"},
		{"raid md0 1 a,b,c ext4 /x metadata=1.0 keep", "array of 2 devices, the layout gives 3 members"},
		{"raid md0 1 a,b ext4 /x keep", "has metadata 1.0, the layout asks 1.2"},
	} {
		l, err := layout.Parse("part root 1G ext4 /\npart a 1G raid\npart b 1G raid\npart c rest raid\n" + c.raid + "\n")
		if err != nil {
			// c is a member only where the line names it.
			l, err = layout.Parse("part root 1G ext4 /\npart a 1G raid\npart b rest raid\n" + c.raid + "\n")
		}
		if err != nil {
			t.Fatal(err)
		}
		err = CheckKeptMember(l.RAIDs[0], "/dev/vda2", ex, "1.0", "")
		if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: %v; want %q", c.raid, err, c.want)
		}
	}

	for _, c := range []struct {
		lvs, pv string
		keep    []string // nil: made afresh
		want    string
	}{
		{"lv data/swap 32MiB swap\nlv data/scratch rest xfs /scratch keep", "/dev/md1", []string{"scratch"}, ""},
		{"lv data/swap 32MiB swap\nlv data/scratch 20GiB xfs /scratch keep", "/dev/md1", nil, "logical volume data/scratch (keep): it has"},
		{"lv data/swap 32MiB swap\nlv data/scratch rest xfs /scratch keep", "/dev/md9", nil, "it also spans /dev/md1"},
	} {
		l, err := layout.Parse("part root 1G ext4 /\npart a rest lvm\nvg data a\n" + c.lvs + "\n")
		if err != nil {
			t.Fatal(err)
		}
		keep, _, err := CheckKeptVG(l, l.VGs[0], []string{c.pv}, st, nil)
		if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%q on %s: %v; want %q", c.lvs, c.pv, err, c.want)
		}
		var got []string
		for n := range keep {
			got = append(got, n)
		}
		if c.want == "" && !reflect.DeepEqual(got, c.keep) {
			t.Errorf("%q: keeps %v, want %v", c.lvs, got, c.keep)
		}
	}
	// The PV holds another VG than the layout's.
	l, _ := layout.Parse("part root 1G ext4 /\npart a rest lvm\nvg other a\nlv other/s rest xfs /s keep\n")
	if _, _, err := CheckKeptVG(l, l.VGs[0], []string{"/dev/md1"}, st, nil); err == nil || !strings.Contains(err.Error(), "/dev/md1 holds volume group data") {
		t.Errorf("another VG: %v", err)
	}
}
