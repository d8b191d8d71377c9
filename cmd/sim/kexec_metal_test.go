package main

import (
	"strings"
	"testing"
	"time"

	"github.com/systemimager/sim/client/install"
)

// TestMetalKexec installs a node whose record says --after kexec (no
// sim.after= on its kernel command line): once installed, the installer
// kexecs the installed system's own kernel, initrd and command line
// (from its grub.cfg, root=UUID=), and the installed system comes up
// and reports, in the same qemu run. The VM runs with -no-reboot, so a
// firmware reboot would have ended it: the installed system reporting
// in that run is the proof there was none.
func TestMetalKexec(t *testing.T) {
	t.Parallel()
	m := newMetalLab(t)
	ok(t, m.store, "node", "add", "n7", "--mac", "52:54:00:5e:00:07", "--group", "compute", "--after", "kexec")
	if out := ok(t, m.store, "node", "show", "n7"); !strings.Contains(out, "kexec") {
		t.Errorf("sim node show n7 does not show its after-install action:\n%s", out)
	}
	v := m.newVM("kexec", 7, "3G", false)
	con := m.boot(v, "sim.server="+m.url+" sim.onerror=poweroff "+m.token("n7"), 15*time.Minute)
	if !strings.Contains(con, "SIM INSTALL DONE") {
		t.Fatalf("install did not finish; console tail:\n%s", tail(con, 4000))
	}
	st := m.statuses()["n7"]
	if st.State != install.Done {
		t.Fatalf("n7: server status %+v; want done", st)
	}
	for _, w := range []string{"kexec into the installed system", "SIM-HELLO host=n7 post=post-ok n7 override=override-ok"} {
		if !strings.Contains(con, w) {
			t.Fatalf("console lacks %q; tail:\n%s", w, tail(con, 4000))
		}
	}
	// Two kernels started in one run: the installer's and, kexeced, the
	// installed one (its command line from grub.cfg: root=UUID=).
	if n := strings.Count(con, "Linux version "); n != 2 {
		t.Errorf("%d kernel banners on the console; want 2 (installer, then the installed kernel by kexec)", n)
	}
	after := con[strings.Index(con, "kexec into the installed system"):]
	if !strings.Contains(after, "root=UUID=") || strings.Contains(after, "sim.server=") {
		t.Errorf("the kexeced kernel's command line is not the installed system's:\n%s", tail(after, 3000))
	}
	t.Logf("FIGURE kexec after install (BIOS, TCG): %.1f s from power-on to the installed system's report, one firmware boot", v.elapsed.Seconds())
}
