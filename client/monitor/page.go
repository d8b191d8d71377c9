package monitor

import (
	"embed"
	"io/fs"
	"net/http"

	simsync "github.com/systemimager/sim/sync"
)

// The fleet page: plain HTML, CSS and JavaScript, embedded in the binary
// (the server room has no internet: nothing is fetched from elsewhere,
// and the Content-Security-Policy says so to the browser).
//
//go:embed ui
var uiFiles embed.FS

// PagePrefix is where the page's assets are served.
const PagePrefix = "/ui/"

// csp allows the page only its own server: its scripts, styles and the
// API it reads (connect-src 'self' covers GET /v1/events over fetch).
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// MountPage serves the fleet page at GET / and its assets under
// PagePrefix. They are static and carry no data, so they need no token
// even on a server whose reads are closed (a browser's navigation cannot
// send one): the page asks for the token and sends it with every request
// of its own.
func MountPage(srv *simsync.Server) {
	sub, err := fs.Sub(uiFiles, "ui")
	if err != nil {
		panic(err) // the embedded directory is part of the build
	}
	files := http.StripPrefix(PagePrefix, http.FileServerFS(sub))
	srv.HandleRole("GET "+PagePrefix, simsync.RoleNone, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pageHeaders(w)
		files.ServeHTTP(w, r)
	}))
	srv.HandleRole("GET /{$}", simsync.RoleNone, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pageHeaders(w)
		http.ServeFileFS(w, r, sub, "index.html")
	}))
}

func pageHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", csp)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	// A new binary's page is taken at once (embedded files have no
	// modification time to revalidate against).
	h.Set("Cache-Control", "no-cache")
}
