package install

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// debianHeader is what grub-mkconfig's 00_header and 41_custom put in
// grub.cfg (Debian bookworm's), the parts a one-time entry relies on.
const debianHeader = `if [ -s $prefix/grubenv ]; then
  set have_grubenv=true
  load_env
fi
if [ "${next_entry}" ] ; then
   set default="${next_entry}"
   set next_entry=
   save_env next_entry
   set boot_once=true
else
   set default="0"
fi
### BEGIN /etc/grub.d/41_custom ###
if [ -f  ${config_directory}/custom.cfg ]; then
  source ${config_directory}/custom.cfg
elif [ -z "${config_directory}" -a -f  $prefix/custom.cfg ]; then
  source $prefix/custom.cfg
fi
### END /etc/grub.d/41_custom ###
`

// TestWriteGrubOneshot writes the one-time installer entry into real
// GRUB directories and checks them with GRUB's own tools where the host
// has them (grub-script-check, grub-editenv).
func TestWriteGrubOneshot(t *testing.T) {
	const cmdline = "console=ttyS0,115200 sim.server=http://198.18.0.1:7480 sim.node=n1 sim.token=tok-n1"
	site := "menuentry 'site rescue' {\n\tlinux /boot/rescue\n}\n"
	cases := []struct {
		name    string
		files   map[string]string
		grubenv string // an existing environment block's variables
		err     string
		dir     string            // the GRUB directory used
		links   map[string]string // symlinks to make (path → target); they must stay links
	}{
		{name: "debian", files: map[string]string{"boot/grub/grub.cfg": debianHeader, "etc/fstab": "UUID=r00t / ext4 defaults 0 1\n"}, dir: "boot/grub"},
		{name: "site custom.cfg and grubenv kept", files: map[string]string{"boot/grub/grub.cfg": debianHeader, "boot/grub/custom.cfg": site,
			"etc/fstab": "UUID=r00t / ext4 defaults 0 1\n"}, grubenv: "saved_entry=gnulinux-simple", dir: "boot/grub"},
		{name: "rhel grub2", files: map[string]string{"boot/grub2/grub.cfg": debianHeader, "etc/fstab": "UUID=r00t / xfs defaults 0 0\n"}, dir: "boot/grub2"},
		// RHEL 8 on UEFI: the real grub.cfg and grubenv on the ESP,
		// /boot/grub2/grubenv a link to it, BLS entries for the kernels.
		{name: "rhel8 uefi", files: map[string]string{"boot/efi/EFI/redhat/grub.cfg": "insmod blscfg\n" + debianHeader + "blscfg\n",
			"boot/loader/entries/0123-4.18.0-553.el8.x86_64.conf": "title Red Hat Enterprise Linux\nlinux /vmlinuz-4.18.0-553.el8.x86_64\n",
			"boot/efi/EFI/BOOT/BOOTX64.EFI":                       "shim", "etc/fstab": "UUID=r00t / xfs defaults 0 0\n"},
			grubenv: "saved_entry=0123-4.18.0-553.el8.x86_64", dir: "boot/efi/EFI/redhat",
			links: map[string]string{"boot/grub2/grubenv": "../efi/EFI/redhat/grubenv"}},
		// RHEL 9 on UEFI: the ESP's grub.cfg is a stub loading /boot/grub2's.
		{name: "rhel9 uefi stub", files: map[string]string{"boot/grub2/grub.cfg": "insmod blscfg\n" + debianHeader + "blscfg\n",
			"boot/efi/EFI/rocky/grub.cfg": "search --no-floppy --fs-uuid --set=dev b00t\nset prefix=($dev)/grub2\nexport $prefix\nconfigfile $prefix/grub.cfg\n",
			"etc/fstab":                   "UUID=r00t / xfs defaults 0 0\n"}, dir: "boot/grub2"},
		{name: "stub only", files: map[string]string{"boot/efi/EFI/rocky/grub.cfg": "configfile $prefix/grub.cfg\n"}, err: "only hand over to another grub.cfg"},
		{name: "systemd-boot", files: map[string]string{"boot/efi/loader/loader.conf": "default arch.conf\n", "boot/efi/loader/entries/arch.conf": "title Arch\n"}, err: "systemd-boot (/boot/efi/loader/loader.conf)"},
		{name: "no GRUB", files: map[string]string{"etc/fstab": "UUID=r00t / ext4 defaults 0 1\n"}, err: "no GRUB here"},
		{name: "grub.cfg without 41_custom", files: map[string]string{"boot/grub/grub.cfg": "set default=0\nif [ \"${next_entry}\" ]; then true; fi\n"}, err: "does not read custom.cfg"},
		{name: "grub.cfg without next_entry", files: map[string]string{"boot/grub/grub.cfg": "source ${config_directory}/custom.cfg\n"}, err: "no next_entry handling"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			for p, body := range c.files {
				os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755)
				if err := os.WriteFile(filepath.Join(root, p), []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			for p, target := range c.links {
				os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755)
				if err := os.Symlink(target, filepath.Join(root, p)); err != nil {
					t.Fatal(err)
				}
			}
			if c.grubenv != "" {
				k, v, _ := strings.Cut(c.grubenv, "=")
				if err := SetGrubenv(filepath.Join(root, c.dir, "grubenv"), k, v); err != nil {
					t.Fatal(err)
				}
			}
			k, i, err := StageInstaller(root, strings.NewReader("KERNEL"), strings.NewReader("INITRD"))
			if err != nil {
				t.Fatal(err)
			}
			if b, _ := os.ReadFile(k); string(b) != "KERNEL" {
				t.Errorf("staged kernel %q", b)
			}
			if b, _ := os.ReadFile(i); string(b) != "INITRD" {
				t.Errorf("staged initrd %q", b)
			}
			o, err := WriteGrubOneshot(root, cmdline)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("got %+v, %v; want an error with %q", o, err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			// Twice: the block is replaced, not added again.
			if o, err = WriteGrubOneshot(root, cmdline); err != nil {
				t.Fatal(err)
			}
			custom := filepath.Join(root, c.dir, "custom.cfg")
			b, err := os.ReadFile(custom)
			if err != nil {
				t.Fatal(err)
			}
			s := string(b)
			if strings.Count(s, "--id "+OneshotEntry) != 1 {
				t.Errorf("custom.cfg holds %d sim entries; want 1:\n%s", strings.Count(s, "--id "+OneshotEntry), s)
			}
			for _, w := range []string{"search --no-floppy --fs-uuid --set=root r00t", "linux /boot/sim-installer/vmlinuz " + cmdline, "initrd /boot/sim-installer/initrd.img"} {
				if !strings.Contains(s, w) {
					t.Errorf("custom.cfg lacks %q:\n%s", w, s)
				}
			}
			if c.files["boot/grub/custom.cfg"] != "" && !strings.HasPrefix(s, site) {
				t.Errorf("the site's own custom.cfg entries were not kept:\n%s", s)
			}
			if fi, _ := os.Stat(custom); fi.Mode().Perm() != 0o600 {
				t.Errorf("custom.cfg mode %v; want 0600 (it holds the node's token)", fi.Mode().Perm())
			}
			if out, err := exec.Command("grub-script-check", custom).CombinedOutput(); err != nil && !isNotFound(err) {
				t.Errorf("grub-script-check %s: %v %s", custom, err, out)
			}
			for p, target := range c.links {
				if got, err := os.Readlink(filepath.Join(root, p)); err != nil || got != target {
					t.Errorf("%s: %q, %v; want it still a link to %s (GRUB reads the target)", p, got, err, target)
				}
			}
			env := filepath.Join(root, c.dir, "grubenv")
			if o.Grubenv != env {
				t.Errorf("next_entry set in %s; want %s", o.Grubenv, env)
			}
			if fi, err := os.Stat(env); err != nil || fi.Size() != 1024 {
				t.Fatalf("grubenv: %v, size %d; want 1024 bytes", err, fi.Size())
			}
			vars, err := ReadGrubenv(env)
			if err != nil {
				t.Fatal(err)
			}
			want := "next_entry=sim-reinstall"
			if c.grubenv != "" {
				want = c.grubenv + "\n" + want
			}
			var got []string
			for _, kv := range vars {
				got = append(got, kv[0]+"="+kv[1])
			}
			if strings.Join(got, "\n") != want {
				t.Errorf("grubenv holds %q; want %q", got, want)
			}
			// GRUB's own reader agrees.
			if out, err := exec.Command("grub-editenv", env, "list").Output(); err == nil {
				if strings.TrimSpace(string(out)) != want {
					t.Errorf("grub-editenv list: %q; want %q", out, want)
				}
			} else if !isNotFound(err) {
				t.Errorf("grub-editenv %s list: %v", env, err)
			}
		})
	}
}

func isNotFound(err error) bool {
	return err != nil && strings.Contains(err.Error(), exec.ErrNotFound.Error())
}

func TestInstallerCmdline(t *testing.T) {
	got, err := InstallerCmdline("BOOT_IMAGE=/boot/vmlinuz root=UUID=x ro console=ttyS0,115200 console=tty0 quiet", "http://198.18.0.1:7480", "n1", "tok", nil, "kexec")
	want := "console=ttyS0,115200 console=tty0 sim.server=http://198.18.0.1:7480 sim.node=n1 sim.token=tok sim.after=kexec"
	if err != nil || got != want {
		t.Errorf("got %q, %v; want %q", got, err, want)
	}
	for _, bad := range []struct{ server, node, token, after, err string }{
		{"", "n1", "t", "", "no server"},
		{"http://s", "n1", "t k", "", "space or quote"},
		{"http://s", "n1", "t", "explode", "want poweroff"},
	} {
		if _, err := InstallerCmdline("", bad.server, bad.node, bad.token, nil, bad.after); err == nil || !strings.Contains(err.Error(), bad.err) {
			t.Errorf("%+v: %v; want %q", bad, err, bad.err)
		}
	}
	if _, err := InstallerCmdline("", "http://s", "n1", "t", []byte("not pem"), ""); err == nil || !strings.Contains(err.Error(), "ca.pem") {
		t.Errorf("a bad ca.pem: %v", err)
	}
}
