package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/systemimager/sim/client/install"
)

// TestReinstallLocal: sim node reinstall --local through a real sim
// serve (with --netboot) and a real node agent on a root in a temp dir,
// with GRUB's files as grub-mkconfig leaves them: the agent stages the
// server's installer kernel and initrd in /boot/sim-installer, writes the
// one-time entry into custom.cfg (the site's own entries kept) and
// next_entry into grubenv, and says so; the admin's command prints it. A
// node without an agent is named, the others go on; bad flags are
// refused. (An agent whose root is not / never reboots the machine.)
func TestReinstallLocal(t *testing.T) {
	base := t.TempDir()
	srv := filepath.Join(base, "srv")
	ok(t, srv, "init")
	writeFiles(t, filepath.Join(base, "img"), map[string]string{"etc/motd": "hi\n"})
	ok(t, srv, "commit", filepath.Join(base, "img"), "--image", "tiny")
	ok(t, srv, "node", "add", "n[1-2]", "--image", "tiny", "--mac", "52:54:00:00:0e:01")
	netboot := filepath.Join(base, "netboot")
	kernel, initrd := bytes.Repeat([]byte("vmlinuz!"), 300000), bytes.Repeat([]byte("initrd.."), 500000)
	os.MkdirAll(netboot, 0o755)
	os.WriteFile(filepath.Join(netboot, "vmlinuz"), kernel, 0o644)
	os.WriteFile(filepath.Join(netboot, "initrd.img"), initrd, 0o644)

	// Usage errors come before any server is asked.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"node", "reinstall", "n1", "--kexec"}, "--kexec goes with --local"},
		{[]string{"node", "reinstall", "n1", "--local", "--after", "explode"}, "want poweroff"},
		{[]string{"node", "reinstall", "n9", "--local"}, `no node "n9"`},
		{[]string{"node", "reinstall", "n1", "--local"}, "no sim serve is running"},
	} {
		r := sim(t, srv, c.args...)
		if r.code == 0 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("sim %s: exit %d, %q; want an error with %q", strings.Join(c.args, " "), r.code, r.stderr, c.want)
		}
	}

	url := startServer(t, srv, "--netboot", netboot, "--no-bittorrent")
	root := filepath.Join(base, "n1")
	site := "menuentry 'site rescue' {\n\tlinux /boot/rescue\n}\n"
	writeFiles(t, root, map[string]string{
		"boot/grub/grub.cfg": "if [ -s $prefix/grubenv ]; then\n  load_env\nfi\nif [ \"${next_entry}\" ] ; then\n   set default=\"${next_entry}\"\n   set next_entry=\n   save_env next_entry\nfi\n" +
			"if [ -f  ${config_directory}/custom.cfg ]; then\n  source ${config_directory}/custom.cfg\nfi\n",
		"boot/grub/custom.cfg": site,
		"etc/fstab":            "UUID=0a1b2c3d-0000-4000-8000-000000000001 / ext4 errors=remount-ro 0 1\n",
	})
	if err := install.SetGrubenv(filepath.Join(root, "boot/grub/grubenv"), "saved_entry", "0"); err != nil {
		t.Fatal(err)
	}
	nstore := filepath.Join(root, install.StoreDir)
	tok := nodeToken(t, srv, "n1", nstore)
	agent := simProcess("--store", nstore, "agent", "--server", url, "--root", root, "--node", "n1", "--poll", "1s")
	var alog bytes.Buffer
	agent.Stdout, agent.Stderr = &alog, &alog
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- agent.Wait() }()
	t.Cleanup(func() {
		agent.Process.Signal(syscall.SIGTERM)
		<-exited
		if t.Failed() {
			t.Logf("agent log:\n%s", alog.String())
		}
	})
	waitFor(t, "n1's agent reports", time.Minute, func() (bool, string) {
		var out nodesOut
		decodeJSON(t, ok(t, srv, "nodes", "--json"), &out)
		for _, n := range out.Nodes {
			if n.Name == "n1" && n.LastSeen != nil {
				return true, ""
			}
		}
		return false, "n1 not seen"
	})

	start := time.Now()
	out := ok(t, srv, "node", "reinstall", "n1", "--local")
	if !strings.Contains(out, "n1: installer staged in /boot/sim-installer, one-time GRUB entry sim-reinstall") {
		t.Errorf("sim node reinstall --local n1 said:\n%s", out)
	}
	t.Logf("reinstall --local n1 answered in %.2f s", time.Since(start).Seconds())
	for f, want := range map[string][]byte{"vmlinuz": kernel, "initrd.img": initrd} {
		if b, err := os.ReadFile(filepath.Join(root, install.InstallerDir, f)); err != nil || !bytes.Equal(b, want) {
			t.Errorf("/%s/%s: %d bytes, %v; want the server's %d", install.InstallerDir, f, len(b), err, len(want))
		}
	}
	custom, _ := os.ReadFile(filepath.Join(root, "boot/grub/custom.cfg"))
	// After the running system's console= words (this host's here).
	wantLine := fmt.Sprintf(" sim.server=%s sim.node=n1 sim.token=%s\n", url, tok)
	if !strings.HasPrefix(string(custom), site) || !strings.Contains(string(custom), "search --no-floppy --fs-uuid --set=root 0a1b2c3d-0000-4000-8000-000000000001") ||
		!strings.Contains(string(custom), wantLine) || !strings.Contains(string(custom), "\tlinux /boot/sim-installer/vmlinuz ") {
		t.Errorf("custom.cfg (want the site's entry, then sim's with %q):\n%s", wantLine, custom)
	}
	if c, err := exec.LookPath("grub-script-check"); err == nil {
		if out, err := exec.Command(c, filepath.Join(root, "boot/grub/custom.cfg")).CombinedOutput(); err != nil {
			t.Errorf("grub-script-check custom.cfg: %v %s", err, out)
		}
	}
	vars, err := install.ReadGrubenv(filepath.Join(root, "boot/grub/grubenv"))
	if err != nil || fmt.Sprint(vars) != "[[saved_entry 0] [next_entry sim-reinstall]]" {
		t.Errorf("grubenv: %v %v; want saved_entry kept and next_entry=sim-reinstall", vars, err)
	}
	select {
	case err := <-exited:
		t.Fatalf("the agent exited (%v): a root other than / must not reboot the machine", err)
	default:
	}

	// n2 has no agent: named after --timeout; exit status non-zero.
	r := sim(t, srv, "node", "reinstall", "n[1-2]", "--local", "--timeout", "5s")
	if r.code == 0 || !strings.Contains(r.stderr, "n2: no answer within 5s") || !strings.Contains(r.stderr, "1 of 2 nodes not set to reinstall: n2") ||
		!strings.Contains(r.stdout, "n1: installer staged") {
		t.Errorf("reinstall n1,n2 with n2 down: exit %d\nstdout %s\nstderr %s", r.code, r.stdout, r.stderr)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "boot/grub/custom.cfg")); strings.Count(string(b), "--id sim-reinstall") != 1 {
		t.Errorf("after a second reinstall custom.cfg holds %d sim entries; want 1:\n%s", strings.Count(string(b), "--id sim-reinstall"), b)
	}
}
