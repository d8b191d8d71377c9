// Package synctest helps test what speaks sim's HTTP protocol: it turns
// fuzz input into requests for a real sync.Server (and what is mounted
// on it) without ever panicking on the input, and checks the answers.
// Tests only.
package synctest

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// Route is one endpoint the fuzzers vary: a method and a path in which
// "{}" is replaced by fuzzed text.
type Route struct {
	Method, Path string
}

// Routes makes routes of "METHOD PATH" patterns.
func Routes(patterns ...string) []Route {
	out := make([]Route, len(patterns))
	for i, p := range patterns {
		m, path, _ := strings.Cut(p, " ")
		out[i] = Route{Method: m, Path: path}
	}
	return out
}

// Tokens are the credentials a fuzzer may present, by role.
type Tokens struct {
	Read, Node, Admin string
}

// Request builds the request a fuzzer sends: route k (modulo the routes),
// arg in its path, query as the raw query, a credential chosen by auth
// (none, read, node, admin, garbage, "Bearer "+arg), and body. Any input
// makes a request (net/http's parsers are not in the way: the request is
// built as a server would have parsed it).
func Request(routes []Route, k uint8, arg, query string, auth uint8, tok Tokens, ctype string, body []byte) *http.Request {
	rt := routes[int(k)%len(routes)]
	r := &http.Request{
		Method:     rt.Method,
		URL:        &url.URL{Path: strings.Replace(rt.Path, "{}", arg, 1), RawQuery: query},
		Proto:      "HTTP/1.1",
		ProtoMajor: 1, ProtoMinor: 1,
		Header:     http.Header{},
		Host:       "sim.test",
		RemoteAddr: "198.18.0.9:40000",
		Body:       io.NopCloser(bytes.NewReader(body)),
	}
	r.ContentLength = int64(len(body))
	r.RequestURI = r.URL.RequestURI()
	if ctype != "" {
		r.Header.Set("Content-Type", ctype)
	}
	switch auth % 6 {
	case 1:
		r.Header.Set("Authorization", "Bearer "+tok.Read)
	case 2:
		r.Header.Set("Authorization", "Bearer "+tok.Node)
	case 3:
		r.Header.Set("Authorization", "Bearer "+tok.Admin)
	case 4:
		r.Header["Authorization"] = []string{arg}
	case 5:
		r.Header["Authorization"] = []string{"Bearer " + arg}
	}
	return r
}

// IsAdmin says whether auth (as Request takes it) presents the admin
// token.
func IsAdmin(auth uint8) bool { return auth%6 == 3 }

// Serve runs h on r and checks the answer: a status in 100..499 (bad
// input is the client's fault, never a 5xx) and, for an error, a body
// saying why.
func Serve(t *testing.T, h http.Handler, r *http.Request) *httptest.ResponseRecorder {
	t.Helper()
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code < 100 || w.Code >= 500 {
		t.Fatalf("%s %q ?%q: %d %s", r.Method, r.URL.Path, r.URL.RawQuery, w.Code, w.Body.String())
	}
	if w.Code >= 400 && w.Code != http.StatusMethodNotAllowed && w.Body.Len() == 0 {
		t.Fatalf("%s %q: %d without a reason", r.Method, r.URL.Path, w.Code)
	}
	return w
}
