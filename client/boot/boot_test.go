package boot

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/systemimager/sim/initrd"
	"github.com/systemimager/sim/store/sign"
)

func TestParseCmdline(t *testing.T) {
	p, err := ParseCmdline("BOOT_IMAGE=/vmlinuz console=ttyS0 sim.server=http://10.0.2.2:7480 sim.node=n1 sim.transport=auto sim.after=reboot")
	if err != nil || p.Server != "http://10.0.2.2:7480" || p.Node != "n1" || p.Transport != "auto" || p.After != "reboot" || !p.AfterSet || p.OnError != "shell" {
		t.Errorf("got %+v %v", p, err)
	}
	// kexec: the installed system without a firmware reboot; no
	// sim.after=: the node's or group's setting decides (AfterSet false).
	if p, err := ParseCmdline("sim.server=http://s sim.after=kexec"); err != nil || p.After != "kexec" || !p.AfterSet {
		t.Errorf("sim.after=kexec: %+v %v", p, err)
	}
	if p, err := ParseCmdline("sim.server=http://s"); err != nil || p.After != "poweroff" || p.AfterSet {
		t.Errorf("no sim.after: %+v %v", p, err)
	}
	for _, bad := range []string{"console=ttyS0", "sim.server=x sim.after=explode", "sim.server=x sim.colour=red", "sim.server=x sim.onerror=none"} {
		if _, err := ParseCmdline(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestReasonWriter(t *testing.T) {
	var out strings.Builder
	l := &ReasonWriter{W: &out, Prefix: "sim: "}
	l.Write([]byte("sim install: [ 0.0s] start\nsim: install failed at step \"lay"))
	l.Write([]byte("out\": disk /dev/vda too small\nmore\n"))
	if l.Last() != "sim: install failed at step \"layout\": disk /dev/vda too small" || !strings.HasSuffix(out.String(), "more\n") {
		t.Errorf("last = %q", l.Last())
	}
}

// TestCredentials: sim.token=, sim.ca= and sim.trust= on the command line
// and the files baked into the initrd become `sim install` arguments by
// file (the token never on the console), the token file private.
func TestCredentials(t *testing.T) {
	k, _ := sign.Generate("admin")
	pub := base64.StdEncoding.EncodeToString(k.Public().Key)
	der := selfSignedDER(t)
	p, err := ParseCmdline("sim.server=https://10.0.2.2:7480 sim.token=sim_abc sim.trust=" + pub + "," + pub +
		" sim.ca=" + base64.RawURLEncoding.EncodeToString(der))
	if err != nil {
		t.Fatal(err)
	}
	if p.Token != "sim_abc" || len(p.Trust) != 2 || !p.Trust[0].Equal(k.Public()) || !strings.Contains(string(p.CA), "BEGIN CERTIFICATE") {
		t.Fatalf("parsed %+v", p)
	}
	for _, bad := range []string{"sim.server=x sim.trust=AAAA", "sim.server=x sim.trust=", "sim.server=x sim.ca=!!", "sim.server=x sim.ca=" + pub, "sim.server=x sim.token="} {
		if _, err := ParseCmdline(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	root, run := t.TempDir(), filepath.Join(t.TempDir(), "run")
	os.MkdirAll(filepath.Join(root, initrd.TrustDir), 0o755)
	os.WriteFile(filepath.Join(root, initrd.TrustDir, "ops.pub"), []byte(k.Public().Line()+"\n"), 0o644)
	os.WriteFile(filepath.Join(root, initrd.TokenFile), []byte("baked\n"), 0o600)
	args, err := Credentials(p, root, run)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"--token-file", filepath.Join(run, "token"), "--ca", filepath.Join(run, "ca.pem"),
		"--trust", filepath.Join(root, initrd.TrustDir, "ops.pub"), "--trust", filepath.Join(run, "trust-1.pub"), "--trust", filepath.Join(run, "trust-2.pub")}
	if strings.Join(args, " ") != strings.Join(want, " ") {
		t.Errorf("args %q\nwant %q", args, want)
	}
	if fi, err := os.Stat(filepath.Join(run, "token")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("token file: %v %v", fi, err)
	}
	if b, _ := os.ReadFile(filepath.Join(run, "token")); string(b) != "sim_abc\n" {
		t.Errorf("token file holds %q", b)
	}
	for _, f := range []string{"trust-1.pub", "trust-2.pub"} {
		if k2, err := sign.ReadPublicKey(filepath.Join(run, f)); err != nil || !k2.Equal(k.Public()) {
			t.Errorf("%s: %v %v", f, k2, err)
		}
	}
	// Without a command-line token, the baked one.
	p.Token = ""
	if args, _ := Credentials(p, root, run); args[1] != filepath.Join(root, initrd.TokenFile) {
		t.Errorf("baked token not used: %q", args)
	}
	if args, _ := Credentials(Params{}, t.TempDir(), run); len(args) != 0 {
		t.Errorf("nothing to pass, got %q", args)
	}
}

func selfSignedDER(t *testing.T) []byte {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}
