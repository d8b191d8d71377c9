package sync

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store"
)

// Remote is a sim server seen from a client.
type Remote struct {
	URL    string // base URL, e.g. http://imageserver:7480
	Token  string // bearer token, for push (and reads on a closed server)
	Client *http.Client
}

// NewRemote returns a Remote for url. $SIM_CA_CERT names a PEM file of
// extra CAs to trust for https.
func NewRemote(url, token string) (*Remote, error) {
	url = strings.TrimRight(url, "/")
	if !strings.HasPrefix(url, "http://") && !strings.HasPrefix(url, "https://") {
		return nil, fmt.Errorf("remote %q: want an http:// or https:// URL", url)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 8
	tr.ResponseHeaderTimeout = 5 * time.Minute
	if ca := os.Getenv("SIM_CA_CERT"); ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("SIM_CA_CERT: %w", err)
		}
		pool, _ := x509.SystemCertPool()
		if pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("SIM_CA_CERT %s: no certificate found", ca)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool}
	}
	return &Remote{URL: url, Token: token, Client: &http.Client{Transport: tr}}, nil
}

// String is the server's URL.
func (r *Remote) String() string { return r.URL }

// ErrRemoteNotFound is returned when the server does not have a thing.
var ErrRemoteNotFound = errors.New("not on the server")

func (r *Remote) do(ctx context.Context, method, path string, body io.Reader, ctype string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, r.URL+path, body)
	if err != nil {
		return nil, err
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if r.Token != "" {
		req.Header.Set("Authorization", "Bearer "+r.Token)
	}
	resp, err := r.Client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, r.URL+path, err)
	}
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 2048))
		resp.Body.Close()
		err := fmt.Errorf("%s %s: %s: %s", method, r.URL+path, resp.Status, bytes.TrimSpace(msg))
		if resp.StatusCode == http.StatusNotFound {
			err = fmt.Errorf("%w: %v", ErrRemoteNotFound, err)
		}
		return nil, err
	}
	return resp, nil
}

// Get is a GET of path (e.g. "/v1/bt/torrent?...") on the server, for
// the transports that add endpoints of their own. A status other than
// 2xx is an error (wrapping ErrRemoteNotFound for 404).
func (r *Remote) Get(ctx context.Context, path string) (*http.Response, error) {
	return r.do(ctx, "GET", path, nil, "")
}

// Refs lists the server's images and tags.
func (r *Remote) Refs(ctx context.Context) (*RefsResponse, error) {
	resp, err := r.do(ctx, "GET", "/v1/refs", nil, "")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out RefsResponse
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("refs from %s: %w", r.URL, err)
	}
	return &out, nil
}

// Resolve turns a ref into a commit id on the server: an image name, a
// tag, or a full commit id, optionally followed by ~N. kind is "image",
// "tag" or "commit" ("commit" too when ~N walked back).
func (r *Remote) Resolve(ctx context.Context, ref string) (chunk.ID, string, error) {
	base, back, err := store.SplitAncestry(ref)
	if err != nil {
		return chunk.ID{}, "", err
	}
	id, kind, err := r.resolveBase(ctx, base)
	for i := 0; err == nil && i < back; i++ {
		var b []byte
		if b, err = r.Commit(ctx, id); err != nil {
			break
		}
		var c *store.Commit
		if c, err = store.DecodeCommit(id, b); err != nil {
			break
		}
		if len(c.Parents) == 0 {
			return id, "", fmt.Errorf("%s: commit %s has no parent", ref, id.Short())
		}
		id, kind = c.Parents[0], "commit"
	}
	return id, kind, err
}

func (r *Remote) resolveBase(ctx context.Context, ref string) (chunk.ID, string, error) {
	refs, err := r.Refs(ctx)
	if err != nil {
		return chunk.ID{}, "", err
	}
	if id, ok := refs.Images[ref]; ok {
		return id, "image", nil
	}
	if id, ok := refs.Tags[ref]; ok {
		return id, "tag", nil
	}
	if id, err := chunk.Parse(ref); err == nil {
		if _, err := r.Commit(ctx, id); err == nil {
			return id, "commit", nil
		}
	}
	return chunk.ID{}, "", fmt.Errorf("%s has no image, tag or commit %q", r.URL, ref)
}

// Commit returns the encoded commit id, verified.
func (r *Remote) Commit(ctx context.Context, id chunk.ID) ([]byte, error) {
	resp, err := r.do(ctx, "GET", "/v1/commits/"+id.String(), nil, "")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	return b, chunk.Verify(id, b)
}

func haveQuery(haves []chunk.ID) string {
	s := make([]string, len(haves))
	for i, h := range haves {
		s[i] = h.String()
	}
	return strings.Join(s, ",")
}

// Fetch streams what a store holding haves lacks of commit want.
func (r *Remote) Fetch(ctx context.Context, want chunk.ID, haves []chunk.ID, rcv Receiver) (DecodeStats, error) {
	path := "/v1/fetch?want=" + want.String()
	if len(haves) > 0 {
		path += "&have=" + haveQuery(haves)
	}
	resp, err := r.do(ctx, "GET", path, nil, "")
	if err != nil {
		return DecodeStats{}, err
	}
	defer resp.Body.Close()
	return Decode(resp.Body, rcv)
}

// Plan asks what Fetch would send.
func (r *Remote) Plan(ctx context.Context, want chunk.ID, haves []chunk.ID) (*PlanInfo, error) {
	path := "/v1/plan?want=" + want.String()
	if len(haves) > 0 {
		path += "&have=" + haveQuery(haves)
	}
	resp, err := r.do(ctx, "GET", path, nil, "")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var p PlanInfo
	return &p, json.NewDecoder(resp.Body).Decode(&p)
}

func idsBody(ids []chunk.ID) io.Reader {
	b := make([]byte, 0, 32*len(ids))
	for _, id := range ids {
		b = append(b, id[:]...)
	}
	return bytes.NewReader(b)
}

// idBatch is how many ids one request carries (the server takes 2^18).
const idBatch = 100000

// Objects streams the given blobs, a batch of ids per request.
func (r *Remote) Objects(ctx context.Context, ids []chunk.ID, rcv Receiver) (DecodeStats, error) {
	var total DecodeStats
	for len(ids) > 0 {
		n := min(len(ids), idBatch)
		resp, err := r.do(ctx, "POST", "/v1/objects", idsBody(ids[:n]), "application/octet-stream")
		if err != nil {
			return total, err
		}
		st, err := Decode(resp.Body, rcv)
		resp.Body.Close()
		total.Records += st.Records
		total.Blobs += st.Blobs
		total.WireBytes += st.WireBytes
		if err != nil {
			return total, err
		}
		ids = ids[n:]
	}
	return total, nil
}

// Have asks which of ids (blobs or commits) the server holds.
func (r *Remote) Have(ctx context.Context, ids []chunk.ID) ([]bool, error) {
	out := make([]bool, 0, len(ids))
	for len(ids) > 0 {
		n := min(len(ids), idBatch)
		resp, err := r.do(ctx, "POST", "/v1/have", idsBody(ids[:n]), "application/octet-stream")
		if err != nil {
			return nil, err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return nil, err
		}
		if len(b) != n {
			return nil, fmt.Errorf("have: %d answers for %d ids", len(b), n)
		}
		for _, x := range b {
			out = append(out, x == 1)
		}
		ids = ids[n:]
	}
	return out, nil
}

// Push streams objects written by fill to the server.
func (r *Remote) Push(ctx context.Context, fill func(*Encoder) error) (*PushResult, int64, error) {
	pr, pw := io.Pipe()
	var sent int64
	go func() {
		enc, err := NewEncoder(pw)
		if err == nil {
			err = fill(enc)
		}
		if err == nil {
			err = enc.Close()
		}
		if enc != nil {
			sent = enc.Bytes()
		}
		pw.CloseWithError(err)
	}()
	resp, err := r.do(ctx, "POST", "/v1/push", pr, "application/x-sim-wire")
	pr.Close()
	if err != nil {
		return nil, sent, err
	}
	defer resp.Body.Close()
	var res PushResult
	return &res, sent, json.NewDecoder(resp.Body).Decode(&res)
}

// UpdateRefs stores commits and moves refs on the server.
func (r *Remote) UpdateRefs(ctx context.Context, req RefsRequest) error {
	b, _ := json.Marshal(req)
	resp, err := r.do(ctx, "POST", "/v1/refs", bytes.NewReader(b), "application/json")
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}
