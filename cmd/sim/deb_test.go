package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestDebianPackage builds the .deb with make deb, checks it with lintian
// (no errors), installs it with dpkg into a clean Debian chroot (a copy of
// the corpus' v1), and uses it there: sim --version, a store, the man
// page of sim commit (rendered with man -l: v1 has no man-db), ref
// completion in bash (and in zsh and fish from the host, with the
// chroot's binary), systemd-analyze verify of every unit, then remove and
// purge.
func TestDebianPackage(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: building and installing the package takes a minute")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: dpkg -i into a chroot")
	}
	for _, tool := range []string{"dpkg-deb", "lintian", "make", "git", "man", "systemd-analyze"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (make deps installs what is missing)", tool)
		}
	}
	c := corpus(t)
	sh := func(name string, args ...string) string {
		t.Helper()
		var out bytes.Buffer
		cmd := exec.Command(name, args...)
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out.String())
		}
		return out.String()
	}

	out := t.TempDir()
	sh("make", "-C", "../..", "deb", "DEB_OUT="+out)
	debs, _ := filepath.Glob(filepath.Join(out, "sim_*_amd64.deb"))
	if len(debs) != 1 {
		t.Fatalf("make deb made %v", debs)
	}
	deb := debs[0]
	fi, _ := os.Stat(deb)
	version := strings.TrimSpace(sh("dpkg-deb", "-f", deb, "Version"))
	t.Logf("%s: %d KiB, version %s", filepath.Base(deb), fi.Size()/1024, version)
	if !regexp.MustCompile(`^[0-9][A-Za-z0-9.+~]*$`).MatchString(version) {
		t.Errorf("version %q is not a Debian version", version)
	}
	list := sh("dpkg-deb", "-c", deb)
	for _, want := range []string{"./usr/bin/sim", "./lib/systemd/system/sim-serve.service", "./etc/default/sim",
		"./usr/share/man/man1/sim.1.gz", "./usr/share/man/man1/sim-commit.1.gz", "./usr/share/man/man1/sim-import-oci.1.gz",
		"./usr/share/bash-completion/completions/sim", "./usr/share/zsh/vendor-completions/_sim",
		"./usr/share/fish/vendor_completions.d/sim.fish", "./usr/share/doc/sim/README.Debian",
		"./usr/share/doc/sim/copyright", "./usr/share/doc/sim/changelog.gz"} {
		if !strings.Contains(list, " "+want+"\n") {
			t.Errorf("the package lacks %s", want)
		}
	}
	// Every unit of dist/systemd is in it (sim-agent.service too, once it is there).
	units, _ := filepath.Glob("../../dist/systemd/*.service")
	for _, u := range units {
		if !strings.Contains(list, "./lib/systemd/system/"+filepath.Base(u)+"\n") {
			t.Errorf("the package lacks the unit %s", filepath.Base(u))
		}
	}
	lint := exec.Command("lintian", "--fail-on", "error", deb)
	lo, err := lint.CombinedOutput()
	t.Logf("lintian:\n%s", lo)
	if err != nil {
		t.Errorf("lintian found errors: %v", err)
	}

	// A clean Debian to install into.
	root := filepath.Join(t.TempDir(), "root")
	sh("cp", "-a", filepath.Join(c, "v1"), root)
	sh("cp", deb, filepath.Join(root, "tmp/sim.deb"))
	in := func(args ...string) string {
		t.Helper()
		return sh("chroot", append([]string{root}, args...)...)
	}
	in("dpkg", "-i", "/tmp/sim.deb")

	if v := in("sim", "--version"); !strings.Contains(v, "sim "+version+"\n") || !strings.Contains(v, "go1.") {
		t.Errorf("sim --version in the chroot:\n%s", v)
	}
	var vj versionInfo
	if err := json.Unmarshal([]byte(in("sim", "version", "--json")), &vj); err != nil || vj.Version != version || len(vj.Commit) != 40 {
		t.Errorf("sim version --json: %+v (%v)", vj, err)
	}
	tok, err := os.ReadFile(filepath.Join(root, "etc/sim/tokens"))
	if st, serr := os.Stat(filepath.Join(root, "etc/sim/tokens")); err != nil || serr != nil || st.Mode().Perm() != 0o600 ||
		!regexp.MustCompile(`(?m)^[0-9a-f]{64}$`).Match(tok) {
		t.Errorf("postinst's /etc/sim/tokens: %q %v", tok, err)
	}
	in("sh", "-c", "sim init && sim commit /etc --image etc-files -m 'the chroot /etc' >/dev/null && sim tag etc-1 etc-files")

	// The man page: there, gzipped, and rendering without warnings.
	page := filepath.Join(root, "usr/share/man/man1/sim-commit.1.gz")
	mc := exec.Command("man", "--warnings", "-l", page)
	mc.Env = append(os.Environ(), "MANWIDTH=80", "MANPAGER=cat", "GROFF_NO_SGR=1")
	var mo, me bytes.Buffer
	mc.Stdout, mc.Stderr = &mo, &me
	err = mc.Run()
	text := regexp.MustCompile(".\b").ReplaceAllString(mo.String(), "") // no overstrike bold
	if err != nil || me.Len() != 0 || !strings.Contains(text, "sim-commit - Snapshot directory SRC") ||
		!strings.Contains(text, "--one-file-system") {
		t.Errorf("man -l sim-commit.1.gz: %v, warnings %q\n%s", err, me.String(), text)
	}

	// bash, in the chroot: bash-completion (the framework, which v1 lacks:
	// the host's, as apt install bash-completion would put it there)
	// finds the script by the command's name, and it completes commands
	// and refs.
	if _, err := os.Stat("/usr/share/bash-completion/bash_completion"); err != nil {
		t.Fatalf("the host has no bash-completion (make deps installs it): %v", err)
	}
	sh("cp", "-rn", "/usr/share/bash-completion", filepath.Join(root, "usr/share"))
	if got := in("bash", "-c", "source /usr/share/bash-completion/bash_completion; __load_completion sim && complete -p sim"); !strings.Contains(got, "__start_sim sim") {
		t.Errorf("bash-completion loading the script for sim: %q", got)
	}
	// (Process substitution needs /proc/self/fd.)
	sh("mount", "-t", "proc", "proc", filepath.Join(root, "proc"))
	t.Cleanup(func() { exec.Command("umount", "-l", filepath.Join(root, "proc")).Run() })
	bash := func(line string) string {
		t.Helper()
		words := strings.Fields(line)
		if strings.HasSuffix(line, " ") {
			words = append(words, "")
		}
		script := `source /usr/share/bash-completion/bash_completion; __load_completion sim
COMP_LINE="$1"; COMP_POINT=${#COMP_LINE}; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($#-1))
__start_sim; printf '%s\n' "${COMPREPLY[@]}"`
		// Only stdout: compopt says on stderr that no completion runs.
		cmd := exec.Command("chroot", append([]string{root, "bash", "-c", script, "bash", line}, words...)...)
		o, err := cmd.Output()
		if err != nil {
			t.Fatalf("bash completion of %q: %v", line, err)
		}
		return strings.TrimSpace(string(o))
	}
	if got := bash("sim lo"); got != "log" {
		t.Errorf("bash completion of 'sim lo': %q", got)
	}
	if got := strings.Fields(bash("sim log etc")); strings.Join(got, " ") != "etc-1 etc-files" {
		t.Errorf("bash completion of 'sim log etc': %q", got)
	}
	if got := bash("sim import "); got != "oci" {
		t.Errorf("bash completion of 'sim import ': %q", got)
	}
	// zsh and fish (not in v1): the host's shells, the chroot's binary and scripts.
	path := filepath.Join(root, "usr/bin") + ":" + os.Getenv("PATH")
	if _, err := exec.LookPath("fish"); err == nil {
		fc := exec.Command("fish", "--no-config", "-c", "source "+filepath.Join(root, "usr/share/fish/vendor_completions.d/sim.fish")+"; complete -C 'sim exp'")
		fc.Env = append(os.Environ(), "PATH="+path)
		if o, err := fc.CombinedOutput(); err != nil || !strings.HasPrefix(string(o), "export\t") {
			t.Errorf("fish completion of 'sim exp': %v %q", err, o)
		}
	} else {
		t.Log("fish not installed: its completion not tried")
	}
	if _, err := exec.LookPath("zsh"); err == nil {
		zc := exec.Command("zsh", "-f", "-c", "autoload -U compinit && compinit -u -D && source "+
			filepath.Join(root, "usr/share/zsh/vendor-completions/_sim")+" && whence -w _sim")
		zc.Env = append(os.Environ(), "PATH="+path)
		if o, err := zc.CombinedOutput(); err != nil || !strings.Contains(string(o), "_sim: function") {
			t.Errorf("zsh loading _sim: %v %q", err, o)
		}
	} else {
		t.Log("zsh not installed: its completion not tried")
	}

	// The units. v1 has no systemd: give the copy the targets a system
	// has (the host's), then systemd-analyze verify inside it; a broken
	// unit beside them proves the check can fail.
	targets, _ := filepath.Glob("/lib/systemd/system/*.target")
	sh("cp", append(append([]string{"-n"}, targets...), filepath.Join(root, "lib/systemd/system"))...)
	installed, _ := filepath.Glob(filepath.Join(root, "lib/systemd/system/sim-*.service"))
	if len(installed) == 0 {
		t.Fatal("no sim unit installed")
	}
	for _, u := range installed {
		sh("systemd-analyze", "verify", "--man=no", "--root="+root, "/lib/systemd/system/"+filepath.Base(u))
	}
	bad := filepath.Join(root, "lib/systemd/system/sim-broken.service")
	os.WriteFile(bad, []byte("[Service]\nExecStart=/usr/bin/sim-not-there serve\n"), 0o644)
	if o, err := exec.Command("systemd-analyze", "verify", "--man=no", "--root="+root, "/lib/systemd/system/sim-broken.service").CombinedOutput(); err == nil {
		t.Errorf("systemd-analyze verify accepted a unit whose program is missing:\n%s", o)
	}
	os.Remove(bad)

	// Remove keeps the settings and the store, purge drops the settings.
	in("dpkg", "-r", "sim")
	if _, err := os.Stat(filepath.Join(root, "usr/bin/sim")); !os.IsNotExist(err) {
		t.Errorf("/usr/bin/sim after dpkg -r: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "etc/default/sim")); err != nil {
		t.Errorf("dpkg -r removed the conffile: %v", err)
	}
	in("dpkg", "--purge", "sim")
	for _, p := range []string{"etc/default/sim", "etc/sim/tokens"} {
		if _, err := os.Stat(filepath.Join(root, p)); !os.IsNotExist(err) {
			t.Errorf("/%s after purge: %v", p, err)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "var/lib/sim/config")); err != nil {
		t.Errorf("purge removed the store: %v", err)
	}
}
