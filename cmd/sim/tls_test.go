package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/systemimager/sim/snapshot/snapshottest"
)

// selfSigned writes a certificate for 127.0.0.1 and its key.
func selfSigned(t *testing.T, dir string) (cert, key string) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sim test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(k)
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return cert, key
}

// TestServeTLS: nodes install over HTTPS, trusting the server's CA from
// $SIM_CA_CERT, and refuse a server they cannot verify.
func TestServeTLS(t *testing.T) {
	st := newStore(t)
	src := t.TempDir()
	writeFiles(t, src, map[string]string{"etc/motd": "over tls\n"})
	ok(t, st, "commit", src, "--image", "img")
	cert, key := selfSigned(t, t.TempDir())
	url := strings.Replace(startServer(t, st, "--tls-cert", cert, "--tls-key", key), "http://", "https://", 1)

	node := filepath.Join(t.TempDir(), "node")
	root := filepath.Join(t.TempDir(), "root")
	if r := sim(t, node, "checkout", "--from", url, "img", root); r.code != 1 || !strings.Contains(r.stderr, "certificate") {
		t.Errorf("unverified server accepted: %+v", r)
	}
	t.Setenv("SIM_CA_CERT", cert)
	ok(t, node, "checkout", "--from", url, "img", root)
	snapshottest.Equal(t, src, root)
}
