// Package s3 is sim's client for an S3 object store (Ceph's radosgw in
// production and in tests): the few operations the S3 store backend needs,
// with the semantics radosgw 16 actually has (ARCHITECTURE.md "The store
// on S3").
package s3

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// ErrExists is returned by PutCreateOnce when the key already exists
// (HTTP 412 to `If-None-Match: *`).
var ErrExists = errors.New("object already exists")

// ErrUnknown is returned by PutCreateOnce when the server answered a
// conditional write with a 5xx or the connection broke: the write may or
// may not have happened. Re-read and decide.
var ErrUnknown = errors.New("outcome of conditional write unknown")

// ErrNotFound is returned for a key the bucket does not hold.
var ErrNotFound = errors.New("no such object")

// ErrUnavailable wraps every failure that says nothing about the bucket's
// contents: a broken or refused connection, a request that timed out, an
// HTTP 5xx. A caller that walks the store (fsck, gc) must stop on it and
// say the store could not be read, never report the object damaged.
var ErrUnavailable = errors.New("object store unavailable")

// RequestTimeout bounds one request (its retries included). A command
// doing thousands of requests is bounded per request, not as a whole:
// loading a thousand index files on a loaded gateway must not fail only
// because all of them together took long. A var only so that tests can
// shorten it.
var RequestTimeout = 2 * time.Minute

// FileTimeout bounds the upload or download of one whole file (a pack).
const FileTimeout = 10 * time.Minute

// op gives one request its own deadline under the caller's context.
func op(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, RequestTimeout)
}

// Location is a parsed s3://BUCKET[/PREFIX]?endpoint=URL location.
type Location struct {
	Bucket      string
	Prefix      string // "" or ends in "/"
	Endpoint    string // URL: http://host:port or https://host
	Region      string
	Credentials string // file named by ?credentials=
}

// String is the canonical form of the location (without credentials file).
func (l Location) String() string {
	s := "s3://" + l.Bucket
	if l.Prefix != "" {
		s += "/" + strings.TrimSuffix(l.Prefix, "/")
	}
	return s + "?endpoint=" + l.Endpoint
}

// IsLocation reports whether loc uses the s3:// scheme.
func IsLocation(loc string) bool { return strings.HasPrefix(strings.ToLower(loc), "s3://") }

// ParseLocation parses s3://BUCKET[/PREFIX]?endpoint=URL[&credentials=FILE][&region=R].
// Credentials in the location itself are refused: they would end up in
// shell histories and process lists.
func ParseLocation(loc string) (Location, error) {
	var l Location
	if !IsLocation(loc) {
		return l, fmt.Errorf("store %q: not an s3:// location", loc)
	}
	u, err := url.Parse(loc)
	if err != nil {
		return l, fmt.Errorf("store %q: %w", loc, err)
	}
	if u.User != nil {
		return l, fmt.Errorf("store %q: credentials do not belong in the location: use $AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY or a file (?credentials=FILE or $SIM_S3_CREDENTIALS)", redact(loc))
	}
	l.Bucket = u.Host
	if l.Bucket == "" {
		return l, fmt.Errorf("store %q: no bucket (want s3://BUCKET[/PREFIX]?endpoint=URL)", loc)
	}
	if p := strings.Trim(u.Path, "/"); p != "" {
		if strings.Contains(p, "//") || strings.Contains(p, "..") {
			return l, fmt.Errorf("store %q: bad prefix %q", loc, p)
		}
		l.Prefix = p + "/"
	}
	q := u.Query()
	for k := range q {
		switch k {
		case "endpoint", "credentials", "region":
		default:
			return l, fmt.Errorf("store %q: unknown parameter %q (known: endpoint, credentials, region)", loc, k)
		}
	}
	l.Endpoint = q.Get("endpoint")
	if l.Endpoint == "" {
		return l, fmt.Errorf("store %q: no endpoint: add ?endpoint=http://HOST:PORT (the S3 gateway)", loc)
	}
	eu, err := url.Parse(l.Endpoint)
	if err != nil || (eu.Scheme != "http" && eu.Scheme != "https") || eu.Host == "" || (eu.Path != "" && eu.Path != "/") {
		return l, fmt.Errorf("store %q: endpoint %q is not http(s)://HOST[:PORT]", loc, l.Endpoint)
	}
	l.Endpoint = eu.Scheme + "://" + eu.Host
	l.Region = q.Get("region")
	if l.Region == "" {
		l.Region = "us-east-1"
	}
	l.Credentials = q.Get("credentials")
	return l, nil
}

func redact(loc string) string {
	if u, err := url.Parse(loc); err == nil && u.User != nil {
		u.User = url.User("REDACTED")
		return u.String()
	}
	return "s3://…"
}

// Keys are an access key pair.
type Keys struct{ AccessKey, SecretKey string }

// LoadKeys finds the credentials: the file named by ?credentials=, else
// the file named by $SIM_S3_CREDENTIALS, else $AWS_ACCESS_KEY_ID and
// $AWS_SECRET_ACCESS_KEY. A file holds lines KEY=VALUE with the same two
// names (blank lines and # comments ignored).
func LoadKeys(l Location) (Keys, error) {
	file := l.Credentials
	src := "?credentials="
	if file == "" {
		file, src = os.Getenv("SIM_S3_CREDENTIALS"), "$SIM_S3_CREDENTIALS"
	}
	if file != "" {
		k, err := readKeysFile(file)
		if err != nil {
			return k, fmt.Errorf("s3 credentials file %s (from %s): %w", file, src, err)
		}
		return k, nil
	}
	k := Keys{os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY")}
	var missing []string
	if k.AccessKey == "" {
		missing = append(missing, "$AWS_ACCESS_KEY_ID")
	}
	if k.SecretKey == "" {
		missing = append(missing, "$AWS_SECRET_ACCESS_KEY")
	}
	if len(missing) > 0 {
		return k, fmt.Errorf("s3 store %s: no credentials: %s not set (set both, or name a file of AWS_ACCESS_KEY_ID=… and AWS_SECRET_ACCESS_KEY=… lines with ?credentials=FILE or $SIM_S3_CREDENTIALS)",
			l, strings.Join(missing, " and "))
	}
	return k, nil
}

func readKeysFile(name string) (Keys, error) {
	var k Keys
	b, err := os.ReadFile(name)
	if err != nil {
		return k, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, val, ok := strings.Cut(line, "=")
		if !ok {
			return k, fmt.Errorf("line %d: want NAME=VALUE", n)
		}
		switch strings.TrimSpace(name) {
		case "AWS_ACCESS_KEY_ID":
			k.AccessKey = strings.TrimSpace(val)
		case "AWS_SECRET_ACCESS_KEY":
			k.SecretKey = strings.TrimSpace(val)
		default:
			return k, fmt.Errorf("line %d: unknown name %q (want AWS_ACCESS_KEY_ID or AWS_SECRET_ACCESS_KEY)", n, name)
		}
	}
	if k.AccessKey == "" || k.SecretKey == "" {
		return k, fmt.Errorf("needs both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
	}
	return k, nil
}

// Stats count requests and payload bytes, for benchmarks.
type Stats struct {
	Requests, BytesUp, BytesDown int64
}

// Client talks to one bucket (and prefix) of an S3 server.
type Client struct {
	Loc Location
	mc  *minio.Client

	requests, up, down atomic.Int64
}

// Open parses loc, finds credentials and makes a client. It does not talk
// to the server.
func Open(loc string) (*Client, error) {
	l, err := ParseLocation(loc)
	if err != nil {
		return nil, err
	}
	k, err := LoadKeys(l)
	if err != nil {
		return nil, err
	}
	return New(l, k)
}

// New makes a client for l with keys k.
func New(l Location, k Keys) (*Client, error) {
	eu, _ := url.Parse(l.Endpoint)
	c := &Client{Loc: l}
	tr, err := minio.DefaultTransport(eu.Scheme == "https")
	if err != nil {
		return nil, err
	}
	mc, err := minio.New(eu.Host, &minio.Options{
		Creds:        credentials.NewStaticV4(k.AccessKey, k.SecretKey, ""),
		Secure:       eu.Scheme == "https",
		Region:       l.Region,
		BucketLookup: minio.BucketLookupPath,
		Transport:    &countingTransport{rt: tr, c: c},
		MaxRetries:   3,
	})
	if err != nil {
		return nil, fmt.Errorf("s3 store %s: %w", l, err)
	}
	c.mc = mc
	return c, nil
}

// Stats returns the requests and bytes so far.
func (c *Client) Stats() Stats {
	return Stats{c.requests.Load(), c.up.Load(), c.down.Load()}
}

type countingTransport struct {
	rt http.RoundTripper
	c  *Client
}

// totals count every client's requests in this process (benchmarks).
var totals struct{ requests, up, down atomic.Int64 }

// Totals returns the requests and bytes of all clients of this process.
func Totals() Stats {
	return Stats{totals.requests.Load(), totals.up.Load(), totals.down.Load()}
}

func (t *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	t.c.requests.Add(1)
	totals.requests.Add(1)
	if r.ContentLength > 0 {
		t.c.up.Add(r.ContentLength)
		totals.up.Add(r.ContentLength)
	}
	resp, err := t.rt.RoundTrip(r)
	if err == nil && resp.ContentLength > 0 {
		t.c.down.Add(resp.ContentLength)
		totals.down.Add(resp.ContentLength)
	}
	return resp, err
}

func (c *Client) key(k string) string { return c.Loc.Prefix + k }

func (c *Client) wrap(op, key string, err error) error {
	if err == nil {
		return nil
	}
	r := minio.ToErrorResponse(err)
	if r.StatusCode == http.StatusNotFound || r.Code == "NoSuchKey" {
		return fmt.Errorf("s3 %s %s: %w", op, c.key(key), ErrNotFound)
	}
	if r.Code == "NoSuchBucket" {
		return fmt.Errorf("s3 %s %s: bucket %s does not exist at %s", op, c.key(key), c.Loc.Bucket, c.Loc.Endpoint)
	}
	if r.Code == "InvalidAccessKeyId" || r.Code == "SignatureDoesNotMatch" || r.Code == "AccessDenied" {
		return fmt.Errorf("s3 %s %s: credentials refused by %s: %s", op, c.key(key), c.Loc.Endpoint, r.Code)
	}
	if unavailable(r.StatusCode, err) {
		return fmt.Errorf("s3 %s %s: %w (%s): %w", op, c.key(key), ErrUnavailable, c.Loc.Endpoint, err)
	}
	return fmt.Errorf("s3 %s %s: %w", op, c.key(key), err)
}

// unavailable tells a failure of the transport or the server (no HTTP
// answer, a 5xx, a timeout) from an answer about the object.
func unavailable(status int, err error) bool {
	if status >= 500 {
		return true
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	var ue *url.Error
	return status == 0 && errors.As(err, &ue)
}

// BucketExists checks the bucket, and with it the endpoint and the keys.
func (c *Client) BucketExists(ctx context.Context) (bool, error) {
	ctx, cancel := op(ctx)
	defer cancel()
	ok, err := c.mc.BucketExists(ctx, c.Loc.Bucket)
	if err != nil {
		return false, c.wrap("check bucket", "", err)
	}
	return ok, nil
}

// MakeBucket creates the bucket.
func (c *Client) MakeBucket(ctx context.Context) error {
	ctx, cancel := op(ctx)
	defer cancel()
	return c.wrap("make bucket", "", c.mc.MakeBucket(ctx, c.Loc.Bucket, minio.MakeBucketOptions{Region: c.Loc.Region}))
}

func putOpts() minio.PutObjectOptions {
	// One PUT, never multipart, up to this size: a pack is ~16 MiB plus at
	// most one large frame.
	return minio.PutObjectOptions{PartSize: 1 << 30, DisableMultipart: true, ContentType: "application/octet-stream"}
}

// Put writes key unconditionally.
func (c *Client) Put(ctx context.Context, key string, data []byte) error {
	ctx, cancel := op(ctx)
	defer cancel()
	_, err := c.mc.PutObject(ctx, c.Loc.Bucket, c.key(key), bytes.NewReader(data), int64(len(data)), putOpts())
	return c.wrap("put", key, err)
}

// PutFile uploads file name as key.
func (c *Client) PutFile(ctx context.Context, key, name string) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, FileTimeout)
	defer cancel()
	_, err = c.mc.PutObject(ctx, c.Loc.Bucket, c.key(key), f, fi.Size(), putOpts())
	return c.wrap("put", key, err)
}

// PutCreateOnce writes key only if it does not exist (`If-None-Match: *`).
// It returns nil when this call created it, ErrExists when the key was
// there (412), and an error wrapping ErrUnknown on a 5xx or a broken
// connection, when the caller must re-read to learn the outcome.
func (c *Client) PutCreateOnce(ctx context.Context, key string, data []byte) error {
	ctx, cancel := op(ctx)
	defer cancel()
	o := putOpts()
	o.SetMatchETagExcept("*")
	_, err := c.mc.PutObject(ctx, c.Loc.Bucket, c.key(key), bytes.NewReader(data), int64(len(data)), o)
	if err == nil {
		return nil
	}
	r := minio.ToErrorResponse(err)
	switch {
	case r.StatusCode == http.StatusPreconditionFailed || r.Code == "PreconditionFailed":
		return fmt.Errorf("s3 create %s: %w", c.key(key), ErrExists)
	case r.StatusCode >= 500 || r.StatusCode == 0:
		if ctx.Err() != nil {
			return fmt.Errorf("s3 create %s: %w: %w: %w", c.key(key), ErrUnknown, ErrUnavailable, ctx.Err())
		}
		return fmt.Errorf("s3 create %s: %w: %w: %v", c.key(key), ErrUnknown, ErrUnavailable, err)
	}
	return c.wrap("create", key, err)
}

// Get reads all of key.
func (c *Client) Get(ctx context.Context, key string) ([]byte, error) {
	ctx, cancel := op(ctx)
	defer cancel()
	o, err := c.mc.GetObject(ctx, c.Loc.Bucket, c.key(key), minio.GetObjectOptions{})
	if err != nil {
		return nil, c.wrap("get", key, err)
	}
	defer o.Close()
	b, err := io.ReadAll(o)
	return b, c.wrap("get", key, err)
}

// GetRange reads n bytes of key from off.
func (c *Client) GetRange(ctx context.Context, key string, off, n int64) ([]byte, error) {
	if n <= 0 {
		return nil, nil
	}
	opt := minio.GetObjectOptions{}
	if err := opt.SetRange(off, off+n-1); err != nil {
		return nil, err
	}
	ctx, cancel := op(ctx)
	defer cancel()
	o, err := c.mc.GetObject(ctx, c.Loc.Bucket, c.key(key), opt)
	if err != nil {
		return nil, c.wrap("get", key, err)
	}
	defer o.Close()
	b := make([]byte, n)
	if _, err := io.ReadFull(o, b); err != nil {
		return nil, c.wrap("get range", key, err)
	}
	return b, nil
}

// GetFile downloads key into file name (through a temporary file).
func (c *Client) GetFile(ctx context.Context, key, name string) error {
	ctx, cancel := context.WithTimeout(ctx, FileTimeout)
	defer cancel()
	o, err := c.mc.GetObject(ctx, c.Loc.Bucket, c.key(key), minio.GetObjectOptions{})
	if err != nil {
		return c.wrap("get", key, err)
	}
	defer o.Close()
	f, err := os.CreateTemp(path.Dir(name), ".get-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := io.Copy(f, o); err != nil {
		f.Close()
		return c.wrap("get", key, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), name)
}

// Size returns the size of key.
func (c *Client) Size(ctx context.Context, key string) (int64, error) {
	ctx, cancel := op(ctx)
	defer cancel()
	st, err := c.mc.StatObject(ctx, c.Loc.Bucket, c.key(key), minio.StatObjectOptions{})
	if err != nil {
		return 0, c.wrap("stat", key, err)
	}
	return st.Size, nil
}

// Object is one listed key.
type Object struct {
	Key  string // without the client's prefix
	Size int64
}

// List returns the keys under prefix in key order (newest first for keys
// ending in an inverted sequence number). max > 0 stops after max keys.
func (c *Client) List(ctx context.Context, prefix string, max int) ([]Object, error) {
	var out []Object
	opt := minio.ListObjectsOptions{Prefix: c.key(prefix), Recursive: true}
	if max > 0 && max < 1000 {
		opt.MaxKeys = max
	}
	ctx, idle := listCtx(ctx)
	defer idle.stop()
	for o := range c.mc.ListObjects(ctx, c.Loc.Bucket, opt) {
		if o.Err != nil {
			return nil, c.wrap("list", prefix, idle.err(o.Err))
		}
		idle.reset()
		out = append(out, Object{Key: strings.TrimPrefix(o.Key, c.Loc.Prefix), Size: o.Size})
		if max > 0 && len(out) >= max {
			break
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// ListDirs returns the "directories" right under prefix (which ends in
// "/"): the next key component of every key, once each, sorted.
func (c *Client) ListDirs(ctx context.Context, prefix string) ([]string, error) {
	var out []string
	ctx, idle := listCtx(ctx)
	defer idle.stop()
	for o := range c.mc.ListObjects(ctx, c.Loc.Bucket, minio.ListObjectsOptions{Prefix: c.key(prefix)}) {
		if o.Err != nil {
			return nil, c.wrap("list", prefix, idle.err(o.Err))
		}
		idle.reset()
		k := strings.TrimPrefix(o.Key, c.key(prefix))
		if strings.HasSuffix(k, "/") {
			out = append(out, strings.TrimSuffix(k, "/"))
		}
	}
	sort.Strings(out)
	return out, nil
}

// listIdle bounds a listing by the time between keys, not as a whole: a
// listing of a million keys is a thousand requests (1000 keys a page),
// and minio's ListObjects gives no hook per page. A gateway that stops
// answering mid-listing cancels it after RequestTimeout without a key.
type listIdle struct {
	t     *time.Timer
	fired atomic.Bool
	stop  context.CancelFunc
}

func listCtx(ctx context.Context) (context.Context, *listIdle) {
	ctx, cancel := context.WithCancel(ctx)
	l := &listIdle{}
	l.t = time.AfterFunc(RequestTimeout, func() { l.fired.Store(true); cancel() })
	l.stop = func() { l.t.Stop(); cancel() }
	return ctx, l
}

func (l *listIdle) reset() { l.t.Reset(RequestTimeout) }

// err makes a listing the idle timer cancelled a timeout (unavailable),
// not the caller's cancellation.
func (l *listIdle) err(err error) error {
	if l.fired.Load() {
		return fmt.Errorf("no answer for %v: %w", RequestTimeout, context.DeadlineExceeded)
	}
	return err
}

// Delete removes key (no error when it is already gone).
func (c *Client) Delete(ctx context.Context, key string) error {
	ctx, cancel := op(ctx)
	defer cancel()
	return c.wrap("delete", key, c.mc.RemoveObject(ctx, c.Loc.Bucket, c.key(key), minio.RemoveObjectOptions{}))
}
