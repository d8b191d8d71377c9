// Package s3test starts a real single-host Ceph cluster (one monitor, one
// bluestore OSD on a 4 GiB file, radosgw on 127.0.0.1) for tests, with an
// S3 user and bucket. One cluster serves a whole test binary: call Start
// from TestMain and Stop after m.Run.
package s3test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/systemimager/sim/store/s3"
)

// Cluster is a running test cluster.
type Cluster struct {
	Dir       string
	Endpoint  string // http://127.0.0.1:PORT
	AccessKey string
	SecretKey string
	Bucket    string

	conf  string
	procs []proc
}

type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

var (
	once    sync.Once
	shared  *Cluster
	skipMsg string
	failErr error
)

// Binaries the cluster needs (Debian bookworm: ceph-mon ceph-osd radosgw).
var Binaries = []string{"ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph", "ceph-authtool", "monmaptool"}

// Shared starts the binary's cluster on first use. skip is non-empty when
// it cannot run here (not root, binaries missing); err when it should have
// and did not start.
func Shared() (c *Cluster, skip string, err error) {
	once.Do(func() {
		if os.Geteuid() != 0 {
			skipMsg = "the Ceph test cluster needs root (ceph daemons, 4 GiB bluestore file)"
			return
		}
		for _, b := range Binaries {
			if _, err := exec.LookPath(b); err != nil {
				skipMsg = fmt.Sprintf("the Ceph test cluster needs %s (apt-get install -y --no-install-recommends ceph-mon ceph-osd radosgw)", b)
				return
			}
		}
		shared, failErr = Start()
	})
	return shared, skipMsg, failErr
}

// StopShared stops the shared cluster, if one was started.
func StopShared() {
	if shared != nil {
		shared.Stop()
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Start starts a new cluster in a temporary directory. It takes ~20 s.
func Start() (*Cluster, error) {
	dir, err := os.MkdirTemp("", "sim-ceph-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir, conf: filepath.Join(dir, "ceph.conf"), Bucket: "sim-test"}
	if err := c.start(); err != nil {
		logs := c.logTail()
		c.Stop()
		return nil, fmt.Errorf("start ceph: %w\n%s", err, logs)
	}
	return c, nil
}

func (c *Cluster) logTail() string {
	var b strings.Builder
	ents, _ := os.ReadDir(filepath.Join(c.Dir, "log"))
	for _, e := range ents {
		data, _ := os.ReadFile(filepath.Join(c.Dir, "log", e.Name()))
		if len(data) > 1500 {
			data = data[len(data)-1500:]
		}
		fmt.Fprintf(&b, "--- %s\n%s\n", e.Name(), data)
	}
	return b.String()
}

func (c *Cluster) run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func (c *Cluster) daemon(name string, args ...string) error {
	cmd := exec.Command(name, args...)
	f, err := os.Create(filepath.Join(c.Dir, "log", filepath.Base(name)+".out"))
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := proc{cmd, make(chan struct{})}
	c.procs = append(c.procs, p)
	go func() { cmd.Wait(); f.Close(); close(p.done) }()
	return nil
}

func (c *Cluster) start() error {
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Second)
	defer cancel()
	d := c.Dir
	for _, sub := range []string{"log", "run", "mon", "osd/ceph-0", "rgw"} {
		if err := os.MkdirAll(filepath.Join(d, sub), 0o755); err != nil {
			return err
		}
	}
	monPort, err := freePort()
	if err != nil {
		return err
	}
	rgwPort, err := freePort()
	if err != nil {
		return err
	}
	fsid := uuid()
	conf := fmt.Sprintf(`[global]
fsid = %[1]s
mon host = [v2:127.0.0.1:%[2]d]
public addr = 127.0.0.1
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
run dir = %[3]s/run
log file = %[3]s/log/$name.log
admin socket = %[3]s/run/$name.asok
keyring = %[3]s/admin.keyring
mon data = %[3]s/mon/$cluster-$id
osd data = %[3]s/osd/$cluster-$id
osd objectstore = bluestore
bluestore block path = %[3]s/osd-block-$id
osd memory target = 943718400
ms bind ipv6 = false
[osd]
keyring = %[3]s/osd/$cluster-$id/keyring
[client.rgw.a]
keyring = %[3]s/rgw.keyring
rgw data = %[3]s/rgw
rgw frontends = beast endpoint=127.0.0.1:%[4]d
rgw thread pool size = 64
`, fsid, monPort, d, rgwPort)
	if err := os.WriteFile(c.conf, []byte(conf), 0o644); err != nil {
		return err
	}
	cf := "--conf=" + c.conf
	monKR, adminKR := filepath.Join(d, "mon.keyring"), filepath.Join(d, "admin.keyring")
	steps := [][]string{
		{"ceph-authtool", "--create-keyring", monKR, "--gen-key", "-n", "mon.", "--cap", "mon", "allow *"},
		{"ceph-authtool", "--create-keyring", adminKR, "--gen-key", "-n", "client.admin",
			"--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *"},
		{"ceph-authtool", monKR, "--import-keyring", adminKR},
		{"monmaptool", "--create", "--addv", "a", fmt.Sprintf("[v2:127.0.0.1:%d]", monPort), "--fsid", fsid, filepath.Join(d, "monmap")},
		{"ceph-mon", cf, "--mkfs", "-i", "a", "--monmap", filepath.Join(d, "monmap"), "--keyring", monKR},
	}
	for _, s := range steps {
		if _, err := c.run(ctx, s[0], s[1:]...); err != nil {
			return err
		}
	}
	if err := c.daemon("ceph-mon", cf, "-f", "-i", "a"); err != nil {
		return err
	}
	// The OSD: its key, its id, its 4 GiB block file outside its directory.
	osdKey, err := c.run(ctx, "ceph-authtool", "--gen-print-key")
	if err != nil {
		return err
	}
	osdKey = strings.TrimSpace(osdKey)
	sec := filepath.Join(d, "osd-secret.json")
	if err := os.WriteFile(sec, []byte(`{"cephx_secret": "`+osdKey+`"}`), 0o600); err != nil {
		return err
	}
	osdUUID := uuid()
	out, err := c.run(ctx, "ceph", cf, "--connect-timeout", "60", "osd", "new", osdUUID, "-i", sec)
	if err != nil {
		return err
	}
	if strings.TrimSpace(out) != "0" {
		return fmt.Errorf("ceph osd new: got id %q, want 0", strings.TrimSpace(out))
	}
	if _, err := c.run(ctx, "ceph-authtool", "--create-keyring", filepath.Join(d, "osd/ceph-0/keyring"), "--name", "osd.0", "--add-key", osdKey); err != nil {
		return err
	}
	blk, err := os.Create(filepath.Join(d, "osd-block-0"))
	if err != nil {
		return err
	}
	if err := blk.Truncate(4 << 30); err != nil {
		blk.Close()
		return err
	}
	blk.Close()
	if _, err := c.run(ctx, "ceph-osd", cf, "-i", "0", "--mkfs", "--osd-uuid", osdUUID); err != nil {
		return err
	}
	if err := c.daemon("ceph-osd", cf, "-f", "-i", "0"); err != nil {
		return err
	}
	// radosgw with its own key.
	if _, err := c.run(ctx, "ceph", cf, "auth", "get-or-create", "client.rgw.a",
		"mon", "allow rw", "osd", "allow rwx", "-o", filepath.Join(d, "rgw.keyring")); err != nil {
		return err
	}
	if err := c.waitOSDUp(ctx); err != nil {
		return err
	}
	if err := c.daemon("radosgw", cf, "-f", "-n", "client.rgw.a"); err != nil {
		return err
	}
	c.Endpoint = fmt.Sprintf("http://127.0.0.1:%d", rgwPort)
	if err := c.waitHTTP(ctx); err != nil {
		return err
	}
	c.AccessKey, c.SecretKey = "SIMTEST"+strings.ToUpper(randHex(6)), randHex(20)
	if _, err := c.run(ctx, "radosgw-admin", cf, "-n", "client.admin", "user", "create", "--uid=sim", "--display-name=sim",
		"--access-key="+c.AccessKey, "--secret="+c.SecretKey); err != nil {
		return err
	}
	cl, err := c.Client(c.Bucket, "")
	if err != nil {
		return err
	}
	return cl.MakeBucket(ctx)
}

func (c *Cluster) waitOSDUp(ctx context.Context) error {
	for {
		out, err := c.run(ctx, "ceph", "--conf="+c.conf, "osd", "stat")
		if err == nil && strings.Contains(out, "1 up") && strings.Contains(out, "1 in") {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("osd.0 not up: %s", out)
		}
		select {
		case <-ctx.Done():
		case <-time.After(300 * time.Millisecond):
		}
	}
}

func (c *Cluster) waitHTTP(ctx context.Context) error {
	for {
		for _, p := range c.procs {
			select {
			case <-p.done:
				return fmt.Errorf("%s exited: %s", p.cmd.Path, p.cmd.ProcessState)
			default:
			}
		}
		resp, err := http.Get(c.Endpoint + "/")
		if err == nil {
			resp.Body.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("radosgw not answering at %s: %w", c.Endpoint, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Location is the s3:// location of prefix in the test bucket.
func (c *Cluster) Location(prefix string) string {
	l := "s3://" + c.Bucket
	if prefix != "" {
		l += "/" + prefix
	}
	return l + "?endpoint=" + c.Endpoint
}

// Env sets the credentials in the environment (for code reading
// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
func (c *Cluster) Env() {
	os.Setenv("AWS_ACCESS_KEY_ID", c.AccessKey)
	os.Setenv("AWS_SECRET_ACCESS_KEY", c.SecretKey)
}

// Client is a client for bucket and prefix with the test user's keys.
func (c *Cluster) Client(bucket, prefix string) (*s3.Client, error) {
	loc := "s3://" + bucket
	if prefix != "" {
		loc += "/" + prefix
	}
	l, err := s3.ParseLocation(loc + "?endpoint=" + c.Endpoint)
	if err != nil {
		return nil, err
	}
	return s3.New(l, s3.Keys{AccessKey: c.AccessKey, SecretKey: c.SecretKey})
}

// Stop kills the daemons and removes the cluster's files.
func (c *Cluster) Stop() {
	for i := len(c.procs) - 1; i >= 0; i-- {
		syscall.Kill(-c.procs[i].cmd.Process.Pid, syscall.SIGKILL)
	}
	for _, p := range c.procs {
		<-p.done
	}
	c.procs = nil
	os.RemoveAll(c.Dir)
}

func uuid() string {
	b := make([]byte, 16)
	rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
