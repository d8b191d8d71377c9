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
// in that run is the proof there was none. Then sim node reinstall
// --local through the node's agent: the one-time GRUB entry boots the
// installer, which installs again and kexecs into the result.
func TestMetalKexec(t *testing.T) {
	needMetal(t)
	t.Parallel() // with the other VM tests (metal_test.go, TestMetalVM)
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

	// sim node reinstall --local: the disk boots again and stays up
	// (the test unit powers off on the first boot only); its agent
	// takes the order, stages the installer, writes the one-time GRUB
	// entry and reboots (which ends qemu: -no-reboot).
	since := time.Now()
	up := make(chan string, 1)
	go func() { up <- m.boot(v, "", 10*time.Minute) }()
	var con2 string
	exited := false
	waitFor(t, "n7's agent reports from the booted disk", 8*time.Minute, func() (bool, string) {
		select {
		case con2 = <-up:
			exited = true
			return true, ""
		default:
		}
		var out nodesOut
		decodeJSON(t, ok(t, m.store, "nodes", "--json"), &out)
		for _, n := range out.Nodes {
			if n.Name == "n7" && n.LastSeen != nil && n.LastSeen.After(since) {
				return true, ""
			}
		}
		return false, "n7 not seen since the boot"
	})
	if exited {
		t.Fatalf("the installed system stopped before its agent reported; console tail:\n%s", tail(con2, 4000))
	}
	out := ok(t, m.store, "node", "reinstall", "n7", "--local")
	if !strings.Contains(out, "n7: installer staged in /boot/sim-installer, one-time GRUB entry sim-reinstall") {
		t.Errorf("sim node reinstall --local n7 said:\n%s", out)
	}
	con2 = <-up
	t.Logf("reinstall --local: the node rebooted %.1f s after power-on", v.elapsed.Seconds())

	// The next boot of the disk: GRUB boots the installer once, which
	// installs n7 again and kexecs into it (n7's --after kexec).
	con = m.boot(v, "", 15*time.Minute)
	for _, w := range []string{"sim: booting the installer (reinstall)", "sim.node=n7", "SIM INSTALL DONE", "kexec into the installed system", "SIM-HELLO host=n7 post=post-ok n7 override=override-ok"} {
		if !strings.Contains(con, w) {
			t.Fatalf("reinstall boot: console lacks %q; tail:\n%s", w, tail(con, 4000))
		}
	}
	if st2 := m.statuses()["n7"]; st2.State != install.Done || !st2.Time.After(st.Time) {
		t.Errorf("n7 after the local reinstall: %+v; want a done install later than %v", st2, st.Time)
	}
	t.Logf("FIGURE reinstall --local (GRUB one-time entry → installer → kexec): %.1f s from power-on to the reinstalled system's report", v.elapsed.Seconds())
}
