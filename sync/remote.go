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
	"net"
	"net/http"
	"os"
	"strings"
	gosync "sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store"
)

// Remote is a sim server seen from a client. Every request sim makes to a
// server goes through it: one place for the bearer token, the CA, the
// retries of transient failures and the wording of errors.
type Remote struct {
	// URL names the server: its base URL (http://imageserver:7480), or
	// the comma-separated base URLs of several frontends of one store
	// (http://fe1:7480,http://fe2:7480) as NewRemote was given them.
	URL    string
	Token  string // bearer token, for push (and reads on a closed server)
	Client *http.Client
	// Retries is how many times a request that can be repeated (no
	// streamed body) is tried again after a transient failure: the
	// server unreachable, or answering 502, 503 or 504. Waits double from
	// one second. 0: no retries.
	Retries int
	// RequireSignature makes every fetch from this server require a
	// valid signature by a key the local store trusts, whatever the
	// store's own policy (--require-signature; OSTree's per-remote
	// sign-verify).
	RequireSignature bool
	// StallTimeout cuts a response whose body brings less than 64 KiB in
	// that long (and is not over): a server that stops sending, or
	// drips, cannot hold a node forever. 0: two minutes; < 0: never.
	StallTimeout time.Duration
	// Received, when set, counts every response body byte read from the
	// server (a command's progress bar reads it).
	Received *atomic.Int64
	// Logf, when set, is told when requests move to another frontend.
	Logf func(format string, a ...any)

	// bases are the frontends' base URLs (NewRemote); requests go to
	// bases[cur] until it fails, then to the next. Empty: URL alone.
	bases []string
	cur   atomic.Int32
}

// Copy returns a Remote like r (same frontends, the one now in use
// first), for a caller that changes its Token or Retries for some
// requests without touching r's.
func (r *Remote) Copy() *Remote {
	c := &Remote{URL: r.URL, Token: r.Token, Client: r.Client, Retries: r.Retries, RequireSignature: r.RequireSignature,
		StallTimeout: r.StallTimeout, Received: r.Received, Logf: r.Logf, bases: r.bases}
	c.cur.Store(r.cur.Load())
	return c
}

// stallBytes is the least a response body must bring per StallTimeout.
const stallBytes = 64 << 10

// ErrStalled is wrapped when a response was cut for bringing too little.
var ErrStalled = errors.New("the server stalled")

// NewRemote returns a Remote for url. $SIM_CA_CERT names a PEM file of
// extra CAs to trust for https.
//
// url may list several frontends of one store, comma-separated
// (http://fe1:7480,http://fe2:7480): requests go to the first until it
// fails (refused, reset, stalled, 502/503/504), then to the next, and an
// interrupted stream is resumed from the next with only what is still
// missing (see FetchCommit). A host name that resolves to several
// addresses needs no list for a frontend that refuses: every connection
// tries the addresses in order.
func NewRemote(url, token string) (*Remote, error) {
	var bases []string
	for _, u := range strings.Split(url, ",") {
		u = strings.TrimRight(strings.TrimSpace(u), "/")
		if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
			return nil, fmt.Errorf("remote %q: want an http:// or https:// URL (or several, comma-separated)", u)
		}
		bases = append(bases, u)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 8
	tr.ResponseHeaderTimeout = 5 * time.Minute
	r := &Remote{URL: strings.Join(bases, ","), Token: token, Client: &http.Client{Transport: tr}, Retries: 3, bases: bases}
	if ca := os.Getenv("SIM_CA_CERT"); ca != "" {
		if err := r.TrustCAFile(ca); err != nil {
			return nil, fmt.Errorf("SIM_CA_CERT: %w", err)
		}
	}
	return r, nil
}

// TrustCAFile adds the PEM certificates in file to the CAs an https
// server's certificate may chain to (besides the system's): a private
// CA, as sim.ca= gives the installer.
func (r *Remote) TrustCAFile(file string) error {
	pem, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	tr, ok := r.Client.Transport.(*http.Transport)
	if !ok {
		return errors.New("CA: not an HTTP transport")
	}
	var pool *x509.CertPool
	if tr.TLSClientConfig != nil && tr.TLSClientConfig.RootCAs != nil {
		pool = tr.TLSClientConfig.RootCAs
	} else if pool, _ = x509.SystemCertPool(); pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return fmt.Errorf("CA %s: no PEM certificate found", file)
	}
	tr.TLSClientConfig = &tls.Config{RootCAs: pool}
	return nil
}

// String is the server's URL.
func (r *Remote) String() string { return r.URL }

// Base is the base URL requests go to now: the frontend in use.
func (r *Remote) Base() string {
	if len(r.bases) == 0 {
		return r.URL
	}
	return r.bases[int(r.cur.Load())%len(r.bases)]
}

// Bases are every frontend's base URL, the one in use first.
func (r *Remote) Bases() []string {
	if len(r.bases) == 0 {
		return []string{r.URL}
	}
	i := int(r.cur.Load())
	return append(append([]string(nil), r.bases[i:]...), r.bases[:i]...)
}

// failover moves requests from base (which just failed with err) to the
// next frontend, if there is one and no other request moved them
// already, and says so through Logf. It reports whether a next frontend
// exists.
func (r *Remote) failover(base string, err error) bool {
	n := len(r.bases)
	if n < 2 {
		return false
	}
	for i, b := range r.bases {
		if b != base {
			continue
		}
		next := (i + 1) % n
		if r.cur.CompareAndSwap(int32(i), int32(next)) && r.Logf != nil {
			r.Logf("server %s failed (%v): switched to %s", base, err, r.bases[next])
		}
		return true
	}
	return true
}

// ErrRemoteNotFound is returned when the server does not have a thing.
var ErrRemoteNotFound = errors.New("not on the server")

// HTTPError is a server's answer other than 2xx.
type HTTPError struct {
	Method, URL string
	Code        int
	Msg         string // the first line or so of the body
}

func (e *HTTPError) Error() string {
	return fmt.Sprintf("%s %s: %d %s: %s", e.Method, e.URL, e.Code, http.StatusText(e.Code), e.Msg)
}

// Is makes a 404 match ErrRemoteNotFound.
func (e *HTTPError) Is(target error) bool {
	return target == ErrRemoteNotFound && e.Code == http.StatusNotFound
}

// Transient says whether the request may succeed if tried again.
func (e *HTTPError) Transient() bool {
	return e.Code == http.StatusBadGateway || e.Code == http.StatusServiceUnavailable || e.Code == http.StatusGatewayTimeout
}

// request is one call to the server.
type request struct {
	method, path, ctype string
	// body, when set, is the whole body: the request can be repeated.
	body []byte
	// stream, when set, is a body that can be read once.
	stream io.Reader
	// timeout bounds the whole exchange when > 0 (small control requests).
	timeout time.Duration
}

// do sends req, retrying transient failures of repeatable requests, and
// returns a 2xx response (the caller closes its body).
//
// With several frontends, a transient failure moves on to the next at
// once; the waits come after each round of them all, and Retries counts
// rounds.
func (r *Remote) do(ctx context.Context, q request) (*http.Response, error) {
	resp, _, err := r.doAt(ctx, q)
	return resp, err
}

// doAt is do, also returning the base URL that answered.
func (r *Remote) doAt(ctx context.Context, q request) (*http.Response, string, error) {
	wait := time.Second
	n := max(len(r.bases), 1)
	for try := 0; ; try++ {
		base := r.Base()
		resp, err := r.once(ctx, base, q)
		if err == nil {
			return resp, base, nil
		}
		if ctx.Err() != nil || !transient(err) {
			return nil, base, err
		}
		// Even a request that cannot be repeated moves the next ones on.
		r.failover(base, err)
		if q.stream != nil || try >= (r.Retries+1)*n-1 {
			return nil, base, err
		}
		if (try+1)%n != 0 {
			continue
		}
		select {
		case <-ctx.Done():
			return nil, base, err
		case <-time.After(wait):
		}
		wait *= 2
	}
}

// broken is what a stream from base that ended early with err (from
// Decode) means: with several frontends, a server that died or stalled
// mid-stream is a partial delivery (ErrTruncated: what arrived is kept
// and the rest asked of the next frontend); with one, err as it is.
func (r *Remote) broken(base string, err error) error {
	if err == nil || len(r.bases) < 2 {
		return err
	}
	if errors.Is(err, ErrTruncated) || errors.Is(err, ErrStalled) || transient(err) {
		r.failover(base, err)
		if !errors.Is(err, ErrTruncated) {
			err = fmt.Errorf("%w: %w", ErrTruncated, err)
		}
	}
	return err
}

func transient(err error) bool {
	var h *HTTPError
	if errors.As(err, &h) {
		return h.Transient()
	}
	// A certificate the node does not trust, or a server that does not
	// speak TLS, stays so: no retry (url.Error, which wraps them, is a
	// net.Error too).
	var ue x509.UnknownAuthorityError
	var he x509.HostnameError
	var ce x509.CertificateInvalidError
	var ve *tls.CertificateVerificationError
	var re tls.RecordHeaderError
	if errors.As(err, &ue) || errors.As(err, &he) || errors.As(err, &ce) || errors.As(err, &ve) || errors.As(err, &re) {
		return false
	}
	// No answer at all: connection refused, reset, a timeout.
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET)
}

func (r *Remote) once(ctx context.Context, base string, q request) (*http.Response, error) {
	var body io.Reader = q.stream
	if q.body != nil {
		body = bytes.NewReader(q.body)
	}
	ctx, cancel := context.WithCancel(ctx)
	if q.timeout > 0 {
		ctx, cancel = withTimeout(ctx, cancel, q.timeout)
	}
	req, err := http.NewRequestWithContext(ctx, q.method, base+q.path, body)
	if err != nil {
		cancel()
		return nil, err
	}
	if q.ctype != "" {
		req.Header.Set("Content-Type", q.ctype)
	}
	if r.Token != "" {
		req.Header.Set("Authorization", "Bearer "+r.Token)
	}
	resp, err := r.Client.Do(req)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("%s %s: %w", q.method, base+q.path, err)
	}
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 2048))
		resp.Body.Close()
		cancel()
		return nil, &HTTPError{Method: q.method, URL: base + q.path, Code: resp.StatusCode, Msg: string(bytes.TrimSpace(msg))}
	}
	// The context ends with the body: a stream can take as long as it
	// takes (as long as it moves), a control request no longer than its
	// timeout.
	resp.Body = r.watch(resp.Body, cancel, q.method+" "+base+q.path)
	return resp, nil
}

// watch wraps a response body: closing it cancels the request, and a
// body that brings less than stallBytes in a StallTimeout is cut
// (ErrStalled).
func (r *Remote) watch(body io.ReadCloser, cancel context.CancelFunc, what string) io.ReadCloser {
	d := r.StallTimeout
	if d == 0 {
		d = 2 * time.Minute
	}
	w := &watched{ReadCloser: body, cancel: cancel, what: what, window: d, received: r.Received}
	if d > 0 {
		w.timer = time.AfterFunc(d, w.check)
	}
	return w
}

type watched struct {
	io.ReadCloser
	cancel  context.CancelFunc
	what    string
	window  time.Duration
	timer   *time.Timer
	got     atomic.Int64 // bytes this window
	stalled atomic.Bool
	closed  atomic.Bool
	// received is Remote.Received.
	received *atomic.Int64
	// Only the time spent waiting for the server counts: a node busy
	// storing what it got (an fsync) is not a stalled server.
	mu     gosync.Mutex
	since  time.Time     // when the pending Read began (zero: none)
	waited time.Duration // waiting this window, besides the pending Read
}

func (w *watched) check() {
	if w.closed.Load() {
		return
	}
	w.mu.Lock()
	waited := w.waited
	if !w.since.IsZero() {
		waited += time.Since(w.since)
		w.since = time.Now()
	}
	w.waited = 0
	w.mu.Unlock()
	if got := w.got.Swap(0); got < stallBytes && waited >= w.window/2 {
		w.stalled.Store(true)
		w.cancel()
		return
	}
	w.timer.Reset(w.window)
}

func (w *watched) Read(p []byte) (int, error) {
	w.mu.Lock()
	w.since = time.Now()
	w.mu.Unlock()
	n, err := w.ReadCloser.Read(p)
	w.mu.Lock()
	w.waited += time.Since(w.since)
	w.since = time.Time{}
	w.mu.Unlock()
	w.got.Add(int64(n))
	if w.received != nil {
		w.received.Add(int64(n))
	}
	if err != nil && err != io.EOF && w.stalled.Load() {
		err = fmt.Errorf("%s: %w: under %d KiB in %s", w.what, ErrStalled, stallBytes>>10, w.window)
	}
	return n, err
}

func (w *watched) Close() error {
	w.closed.Store(true)
	if w.timer != nil {
		w.timer.Stop()
	}
	err := w.ReadCloser.Close()
	w.cancel()
	return err
}

// withTimeout bounds ctx (whose own cancel is parent) by d; the cancel it
// returns releases both.
func withTimeout(ctx context.Context, parent context.CancelFunc, d time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(ctx, d)
	return ctx, func() { cancel(); parent() }
}

// Get is a GET of path (e.g. "/v1/bt/torrent?...") on the server, for
// the transports that add endpoints of their own. A status other than
// 2xx is an *HTTPError (matching ErrRemoteNotFound for 404).
func (r *Remote) Get(ctx context.Context, path string) (*http.Response, error) {
	return r.do(ctx, request{method: "GET", path: path})
}

// maxJSON bounds a JSON answer.
const maxJSON = 16 << 20

// GetJSON GETs path and decodes its JSON answer into v.
func (r *Remote) GetJSON(ctx context.Context, path string, v any) error {
	resp, base, err := r.doAt(ctx, request{method: "GET", path: path, timeout: time.Minute})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxJSON)).Decode(v); err != nil {
		return fmt.Errorf("GET %s%s: bad answer: %w", base, path, err)
	}
	return nil
}

// PostJSON POSTs in as JSON (nil: no body) to path and decodes the JSON
// answer into out (nil: the answer is ignored). Only for requests that
// may be repeated: a transient failure is retried.
func (r *Remote) PostJSON(ctx context.Context, path string, in, out any) error {
	q := request{method: "POST", path: path, timeout: time.Minute}
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		q.body, q.ctype = b, "application/json"
	}
	resp, base, err := r.doAt(ctx, q)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		io.Copy(io.Discard, io.LimitReader(resp.Body, maxJSON))
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxJSON)).Decode(out); err != nil {
		return fmt.Errorf("POST %s%s: bad answer: %w", base, path, err)
	}
	return nil
}

// Poll is a long poll: a GET of path that the server holds open for up
// to wait before answering 204 No Content (ok false: nothing yet) or a
// JSON answer decoded into v (ok true). It is bounded by wait plus a
// margin for a slow answer, and never retried: the caller polls again.
func (r *Remote) Poll(ctx context.Context, path string, wait time.Duration, v any) (bool, error) {
	base := r.Base()
	resp, err := r.once(ctx, base, request{method: "GET", path: path, timeout: wait + 30*time.Second})
	if err != nil {
		if transient(err) && ctx.Err() == nil {
			r.failover(base, err)
		}
		return false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNoContent {
		return false, nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxJSON)).Decode(v); err != nil {
		return false, fmt.Errorf("GET %s%s: bad answer: %w", base, path, err)
	}
	return true, nil
}

// Transient says whether err (from a Remote call) may go away if the
// request is made again: no answer at all, or 502, 503, 504.
func Transient(err error) bool { return transient(err) }

// Refs lists the server's images and tags.
func (r *Remote) Refs(ctx context.Context) (*RefsResponse, error) {
	var out RefsResponse
	if err := r.GetJSON(ctx, "/v1/refs", &out); err != nil {
		return nil, err
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
	resp, err := r.do(ctx, request{method: "GET", path: "/v1/commits/" + id.String(), timeout: time.Minute})
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
	resp, base, err := r.doAt(ctx, request{method: "GET", path: path})
	if err != nil {
		return DecodeStats{}, err
	}
	defer resp.Body.Close()
	st, err := Decode(resp.Body, rcv)
	return st, r.broken(base, err)
}

// Plan asks what Fetch would send.
func (r *Remote) Plan(ctx context.Context, want chunk.ID, haves []chunk.ID) (*PlanInfo, error) {
	path := "/v1/plan?want=" + want.String()
	if len(haves) > 0 {
		path += "&have=" + haveQuery(haves)
	}
	var p PlanInfo
	return &p, r.GetJSON(ctx, path, &p)
}

func idsBody(ids []chunk.ID) []byte {
	b := make([]byte, 0, 32*len(ids))
	for _, id := range ids {
		b = append(b, id[:]...)
	}
	return b
}

// idBatch is how many ids one request carries (the server takes 2^18).
const idBatch = 100000

// Objects streams the given blobs, a batch of ids per request.
func (r *Remote) Objects(ctx context.Context, ids []chunk.ID, rcv Receiver) (DecodeStats, error) {
	var total DecodeStats
	for len(ids) > 0 {
		n := min(len(ids), idBatch)
		resp, base, err := r.doAt(ctx, request{method: "POST", path: "/v1/objects", body: idsBody(ids[:n]), ctype: "application/octet-stream"})
		if err != nil {
			return total, err
		}
		st, err := Decode(resp.Body, rcv)
		resp.Body.Close()
		err = r.broken(base, err)
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
		resp, err := r.do(ctx, request{method: "POST", path: "/v1/have", body: idsBody(ids[:n]), ctype: "application/octet-stream", timeout: 5 * time.Minute})
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
	resp, err := r.do(ctx, request{method: "POST", path: "/v1/push", stream: pr, ctype: "application/x-sim-wire"})
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
	// Not retried: a ref update that reached the server but whose answer
	// was lost must not be applied twice (the second would fail its
	// compare-and-swap and hide that the first succeeded).
	resp, err := r.do(ctx, request{method: "POST", path: "/v1/refs", stream: bytes.NewReader(b), ctype: "application/json"})
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}
