package main

import (
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/anacrolix/torrent/bencode"
	"github.com/anacrolix/torrent/metainfo"

	"github.com/systemimager/sim/snapshot/snapshottest"
	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
	"github.com/systemimager/sim/sync/bt"
)

// aria2 runs aria2c (Debian package aria2) on loopback only: no DHT, no
// local peer discovery, every piece checked, gone once complete. It
// returns aria2c's output.
func aria2(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := exec.CommandContext(ctx, "aria2c", append([]string{
		"--dir=" + dir, "--interface=127.0.0.1",
		"--check-integrity=true", "--bt-enable-lpd=false", "--enable-dht=false", "--enable-dht6=false",
		"--seed-time=0", "--follow-torrent=mem", "--file-allocation=none", "--allow-overwrite=true",
		"--summary-interval=0", "--console-log-level=warn", "--bt-stop-timeout=60"}, args...)...)
	out, err := c.CombinedOutput()
	return string(out), err
}

func needAria2(t *testing.T) {
	if _, err := exec.LookPath("aria2c"); err != nil {
		t.Skip("aria2c not installed (Debian package aria2: make deps): cannot prove a standard client joins")
	}
}

func httpGet(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", url, resp.Status, b)
	}
	return b
}

// TestStandardClientJoins: aria2c, given only the .torrent that sim serve
// publishes for an image, downloads the payload from sim's swarm (the
// origin, found through the tracker, super-seeding; and the web seed),
// every piece verified; the same with the origin peer alone (no url-list)
// and with the web seed alone (no tracker, so no peer). The three
// downloads are the same bytes, every piece hashes to the torrent sim's
// own nodes join, and those bytes, imported frame by frame into an empty
// store, install the image exactly with nothing more to fetch.
func TestStandardClientJoins(t *testing.T) {
	needAria2(t)
	st := newStore(t)
	src := filepath.Join(t.TempDir(), "img")
	files := map[string]int{"etc/motd": 200, "usr/bin/big": 3 << 20}
	for i := 0; i < 20; i++ {
		files[fmt.Sprintf("usr/lib/lib%d.so", i)] = 50000 + i*9000
	}
	snapshottest.RandomFiles(t, src, 7, files)
	ok(t, st, "commit", src, "--image", "img", "-m", "one")
	url := startServer(t, st, "--bt-listen", "127.0.0.1:0", "--bt-super-seed")

	// sim's own node, over BitTorrent.
	node := filepath.Join(t.TempDir(), "node")
	ok(t, node, "checkout", "--from", url, "--transport", "bittorrent", "--bt-listen", "127.0.0.1:0", "img", filepath.Join(node, "root"))
	snapshottest.Equal(t, src, filepath.Join(node, "root"), snapshottest.IgnoreRootTimes())

	var refs simsync.RefsResponse
	if err := json.Unmarshal(httpGet(t, url+"/v1/refs"), &refs); err != nil {
		t.Fatal(err)
	}
	id := refs.Images["img"]
	doc, err := bt.DecodeTorrent(httpGet(t, url+bt.Prefix+"torrent?want="+id.String()))
	if err != nil {
		t.Fatal(err)
	}

	tf := httpGet(t, url+bt.Prefix+"torrents/img.torrent")
	mi, err := metainfo.Load(bytes.NewReader(tf))
	if err != nil {
		t.Fatalf("the .torrent does not parse: %v", err)
	}
	if mi.HashInfoBytes() != doc.InfoHash {
		t.Fatalf(".torrent info hash %s, sim's nodes join %s", mi.HashInfoBytes(), doc.InfoHash)
	}
	if mi.Announce != url+bt.Prefix+"announce" || len(mi.UrlList) != 1 || mi.UrlList[0] != url+bt.Prefix+"seed/"+doc.InfoHash.HexString()+"/" {
		t.Fatalf("announce %q, url-list %q", mi.Announce, mi.UrlList)
	}
	// By commit id and from a base that is the same commit.
	if b := httpGet(t, url+bt.Prefix+"torrents/"+id.String()+".torrent"); !bytes.Equal(b, tf) {
		t.Fatal("the .torrent by commit id differs from the one by image name")
	}
	for path, want := range map[string]int{"torrents/nosuch.torrent": 404, "torrents/img": 404, "torrents/img.torrent?from=img": 400, "torrents/img.torrent?from=nosuch": 404} {
		resp, err := http.Get(url + bt.Prefix + path)
		if err != nil {
			t.Fatal(err)
		}
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s: %s (%s), want %d", path, resp.Status, bytes.TrimSpace(msg), want)
		}
	}

	name := doc.Info.Name
	variant := func(what string, edit func(*metainfo.MetaInfo)) []byte {
		dir := t.TempDir()
		var arg string
		if edit == nil {
			arg = url + bt.Prefix + "torrents/img.torrent"
		} else {
			m := *mi
			edit(&m)
			b, err := bencode.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			arg = filepath.Join(dir, "edited.torrent")
			if err := os.WriteFile(arg, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		dl := filepath.Join(dir, "dl")
		start := time.Now()
		if out, err := aria2(t, dl, arg); err != nil {
			t.Fatalf("aria2c, %s: %v\n%s", what, err, out)
		}
		got, err := os.ReadFile(filepath.Join(dl, name))
		if err != nil {
			t.Fatalf("aria2c, %s: %v", what, err)
		}
		t.Logf("aria2c, %s: %d bytes, %d pieces in %s", what, len(got), doc.Info.NumPieces(), time.Since(start).Round(time.Millisecond))
		if int64(len(got)) != doc.Length() {
			t.Fatalf("aria2c, %s: %d bytes, the torrent has %d", what, len(got), doc.Length())
		}
		for p := 0; p < doc.Info.NumPieces(); p++ {
			pl := doc.Info.PieceLength
			end := min(int64(p+1)*pl, doc.Length())
			if h := sha1.Sum(got[int64(p)*pl : end]); !bytes.Equal(h[:], doc.Info.Pieces[p*20:p*20+20]) {
				t.Fatalf("aria2c, %s: piece %d does not hash to sim's torrent", what, p)
			}
		}
		return got
	}
	before := uploaded(t, url, doc.InfoHash)
	full := variant("the .torrent as served", nil)
	peerOnly := variant("origin peer only (no url-list)", func(m *metainfo.MetaInfo) { m.UrlList = nil })
	if up := uploaded(t, url, doc.InfoHash) - before; up < doc.Length() {
		t.Errorf("the origin peer sent %d bytes to aria2c, the payload is %d: it did not serve the peer-only download", up, doc.Length())
	}
	webOnly := variant("web seed only (no tracker, no peer)", func(m *metainfo.MetaInfo) { m.Announce = ""; m.AnnounceList = nil })
	if !bytes.Equal(full, peerOnly) || !bytes.Equal(full, webOnly) {
		t.Fatal("aria2c's three downloads differ")
	}

	// The payload aria2c got, imported frame by frame, is the image.
	imp := newStore(t)
	s, err := store.Open(imp)
	if err != nil {
		t.Fatal(err)
	}
	sink := simsync.NewSink(s)
	for _, r := range doc.Records {
		if err := sink.Frame(r.Comp, int(r.ULen), full[r.Off:r.Off+r.Len], r.Entries); err != nil {
			t.Fatalf("frame at %d of aria2c's download: %v", r.Off, err)
		}
	}
	if _, err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	var co checkoutOut
	decodeJSON(t, ok(t, imp, "checkout", "--from", url, "--transport", "http", "--json", id.String(), filepath.Join(t.TempDir(), "root")), &co)
	if co.Transfer.NewBlobs != 0 {
		t.Errorf("after importing aria2c's download, the checkout fetched %d more objects", co.Transfer.NewBlobs)
	}
}

// uploaded is what the origin has sent peers of the torrent ih.
func uploaded(t *testing.T, url string, ih metainfo.Hash) int64 {
	var st []bt.TorrentStatus
	if err := json.Unmarshal(httpGet(t, url+bt.Prefix+"status"), &st); err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if s.InfoHash == ih.HexString() {
			return s.Uploaded
		}
	}
	t.Fatalf("torrent %s not seeded", ih)
	return 0
}
