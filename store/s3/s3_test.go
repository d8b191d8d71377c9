package s3_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/systemimager/sim/store/s3"
	"github.com/systemimager/sim/store/s3/s3test"
)

func TestMain(m *testing.M) {
	code := m.Run()
	s3test.StopShared()
	os.Exit(code)
}

func cluster(t *testing.T) *s3test.Cluster {
	t.Helper()
	c, skip, err := s3test.Shared()
	if skip != "" {
		t.Skip(skip)
	}
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestParseLocation(t *testing.T) {
	l, err := s3.ParseLocation("s3://bkt/some/prefix?endpoint=http://127.0.0.1:7480")
	if err != nil {
		t.Fatal(err)
	}
	if l.Bucket != "bkt" || l.Prefix != "some/prefix/" || l.Endpoint != "http://127.0.0.1:7480" {
		t.Fatalf("parsed %+v", l)
	}
	for loc, want := range map[string]string{
		"s3://bkt":                               "no endpoint",
		"s3://?endpoint=http://x":                "no bucket",
		"s3://k:secret@bkt?endpoint=http://x":    "credentials do not belong",
		"s3://bkt?endpoint=ftp://x":              "is not http(s)",
		"s3://bkt?endpoint=http://x&colour=blue": `unknown parameter "colour"`,
	} {
		_, err := s3.ParseLocation(loc)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want an error with %q", loc, err, want)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: error shows the secret: %v", loc, err)
		}
	}
}

func TestMissingCredentials(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	t.Setenv("SIM_S3_CREDENTIALS", "")
	_, err := s3.Open("s3://bkt?endpoint=http://127.0.0.1:1")
	if err == nil || !strings.Contains(err.Error(), "$AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY not set") {
		t.Fatalf("got %v", err)
	}
	t.Setenv("AWS_ACCESS_KEY_ID", "x")
	_, err = s3.Open("s3://bkt?endpoint=http://127.0.0.1:1")
	if err == nil || !strings.Contains(err.Error(), "$AWS_SECRET_ACCESS_KEY not set") || strings.Contains(err.Error(), "$AWS_ACCESS_KEY_ID ") {
		t.Fatalf("got %v", err)
	}
	f := t.TempDir() + "/creds"
	os.WriteFile(f, []byte("AWS_ACCESS_KEY_ID=a\n"), 0o600)
	_, err = s3.Open("s3://bkt?endpoint=http://127.0.0.1:1&credentials=" + f)
	if err == nil || !strings.Contains(err.Error(), f) || !strings.Contains(err.Error(), "needs both") {
		t.Fatalf("got %v", err)
	}
	os.WriteFile(f, []byte("# keys\nAWS_ACCESS_KEY_ID=a\nAWS_SECRET_ACCESS_KEY=b\n"), 0o600)
	t.Setenv("SIM_S3_CREDENTIALS", f)
	if _, err = s3.Open("s3://bkt?endpoint=http://127.0.0.1:1"); err != nil {
		t.Fatal(err)
	}
}

func TestOps(t *testing.T) {
	c := cluster(t)
	cl, err := c.Client(c.Bucket, "ops-"+t.Name())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	data := bytes.Repeat([]byte("0123456789"), 100000)
	if err := cl.Put(ctx, "a/obj", data); err != nil {
		t.Fatal(err)
	}
	got, err := cl.GetRange(ctx, "a/obj", 12345, 1000)
	if err != nil || !bytes.Equal(got, data[12345:13345]) {
		t.Fatalf("range: %v, equal %v", err, bytes.Equal(got, data[12345:13345]))
	}
	if got, err := cl.Get(ctx, "a/obj"); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("get: %v", err)
	}
	if _, err := cl.Get(ctx, "a/missing"); !errors.Is(err, s3.ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
	if err := cl.PutCreateOnce(ctx, "a/once", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if err := cl.PutCreateOnce(ctx, "a/once", []byte("2")); !errors.Is(err, s3.ErrExists) {
		t.Fatalf("second create: %v", err)
	}
	if got, _ := cl.Get(ctx, "a/once"); string(got) != "1" {
		t.Fatalf("create-once overwritten: %q", got)
	}
	for i := 3; i >= 0; i-- {
		if err := cl.Put(ctx, fmt.Sprintf("l/%d", i), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	ls, err := cl.List(ctx, "l/", 0)
	if err != nil || len(ls) != 4 || ls[0].Key != "l/0" || ls[3].Key != "l/3" {
		t.Fatalf("list: %v %v", ls, err)
	}
	if ls, err := cl.List(ctx, "l/", 1); err != nil || len(ls) != 1 || ls[0].Key != "l/0" {
		t.Fatalf("list 1: %v %v", ls, err)
	}
	if d, err := cl.ListDirs(ctx, ""); err != nil || strings.Join(d, ",") != "a,l" {
		t.Fatalf("dirs: %v %v", d, err)
	}
	if err := cl.Delete(ctx, "a/once"); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Get(ctx, "a/once"); !errors.Is(err, s3.ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
}

// TestCreateOnceRace: 16 writers create one key; exactly one wins, every
// other is told ErrExists (or ErrUnknown, then the object shows who won).
func TestCreateOnceRace(t *testing.T) {
	c := cluster(t)
	cl, err := c.Client(c.Bucket, "race")
	if err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 5; round++ {
		key := fmt.Sprintf("k%d", round)
		var wg sync.WaitGroup
		res := make([]error, 16)
		for i := range res {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res[i] = cl.PutCreateOnce(context.Background(), key, []byte(fmt.Sprint(i)))
			}()
		}
		wg.Wait()
		won := -1
		for i, err := range res {
			switch {
			case err == nil:
				if won >= 0 {
					t.Fatalf("round %d: writers %d and %d both won", round, won, i)
				}
				won = i
			case errors.Is(err, s3.ErrExists), errors.Is(err, s3.ErrUnknown):
			default:
				t.Fatalf("round %d writer %d: %v", round, i, err)
			}
		}
		got, err := cl.Get(context.Background(), key)
		if err != nil {
			t.Fatal(err)
		}
		if won >= 0 && string(got) != fmt.Sprint(won) {
			t.Fatalf("round %d: %d won but the object holds %q", round, won, got)
		}
	}
}

// TestUnavailable: failures of the gateway or the network wrap
// ErrUnavailable; answers about the object (404, 403) do not.
func TestUnavailable(t *testing.T) {
	closed := httptest.NewServer(http.NotFoundHandler())
	closedURL := closed.URL
	closed.Close()
	for _, tc := range []struct {
		name        string
		status      int
		code        string
		unavailable bool
		notFound    bool
	}{
		{"503", http.StatusServiceUnavailable, "ServiceUnavailable", true, false},
		{"500", http.StatusInternalServerError, "InternalError", true, false},
		{"404", http.StatusNotFound, "NoSuchKey", false, true},
		{"403", http.StatusForbidden, "AccessDenied", false, false},
		{"refused", 0, "", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			endpoint := closedURL
			if tc.status != 0 {
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Content-Type", "application/xml")
					w.WriteHeader(tc.status)
					fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>x</Message></Error>`, tc.code)
				}))
				defer srv.Close()
				endpoint = srv.URL
			}
			l, err := s3.ParseLocation("s3://bkt?endpoint=" + endpoint)
			if err != nil {
				t.Fatal(err)
			}
			cl, err := s3.New(l, s3.Keys{AccessKey: "a", SecretKey: "b"})
			if err != nil {
				t.Fatal(err)
			}
			_, err = cl.Get(context.Background(), "packs/x.pack")
			if err == nil {
				t.Fatal("no error")
			}
			if errors.Is(err, s3.ErrUnavailable) != tc.unavailable || errors.Is(err, s3.ErrNotFound) != tc.notFound {
				t.Fatalf("%v: unavailable %v (want %v), not found %v (want %v)", err,
					errors.Is(err, s3.ErrUnavailable), tc.unavailable, errors.Is(err, s3.ErrNotFound), tc.notFound)
			}
		})
	}
}

// TestListStalls: a gateway that answers a listing's first page and then
// goes quiet fails the listing as unavailable once RequestTimeout passes
// without a key, however long the whole listing may take.
func TestListStalls(t *testing.T) {
	defer func(d time.Duration) { s3.RequestTimeout = d }(s3.RequestTimeout)
	// Long enough for the first page on a loaded machine (the timer runs
	// from the listing's start: a first page later than this would end
	// the listing before the second is asked for), far under the minute
	// the test waits.
	s3.RequestTimeout = 3 * time.Second
	stalled := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		w.Header().Set("Content-Type", "application/xml")
		switch {
		case q.Has("location"):
			fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><LocationConstraint xmlns="http://s3.amazonaws.com/doc/2006-03-01/"></LocationConstraint>`)
		case q.Get("continuation-token") != "":
			select {
			case stalled <- struct{}{}:
			default:
			}
			<-r.Context().Done() // the second page never comes
		default:
			fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">`+
				`<Name>bkt</Name><Prefix>packs/</Prefix><KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated>`+
				`<NextContinuationToken>page2</NextContinuationToken><Contents><Key>packs/a.pack</Key><Size>1</Size></Contents></ListBucketResult>`)
		}
	}))
	defer srv.Close()
	l, err := s3.ParseLocation("s3://bkt?endpoint=" + srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := s3.New(l, s3.Keys{AccessKey: "a", SecretKey: "b"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := cl.List(context.Background(), "packs/", 0)
		done <- err
	}()
	select {
	case err = <-done:
	case <-time.After(time.Minute):
		t.Fatal("the listing still waits a minute after the gateway went quiet")
	}
	select {
	case <-stalled:
	default:
		t.Fatalf("the second page was never asked for (err %v)", err)
	}
	if !errors.Is(err, s3.ErrUnavailable) {
		t.Fatalf("a stalled listing: %v, want it unavailable", err)
	}
}
