package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/systemimager/sim/store"
)

// A store is held open by one process at a time (badger's lock). While
// `sim serve` holds it, other sim commands on the same store send their
// command line over the unix socket <store>/sim.sock, and the server runs
// it on its open store, streaming stdout, stderr and the exit code back.
// Only the server's own user (or root) may connect.

const socketName = "sim.sock"

// socketDir is where the server socket of the store at loc lives: its
// directory, or an S3 store's local cache directory.
func socketDir(loc string) string {
	if store.IsRemote(loc) {
		if d, err := store.CacheDir(loc); err == nil {
			return d
		}
	}
	return loc
}

// forwarded carries the exit code of a command line the server ran; its
// output is already printed.
type forwarded struct{ code int }

func (f forwarded) Error() string { return fmt.Sprintf("exit status %d", f.code) }

type runRequest struct {
	Args []string `json:"args"`
	Cwd  string   `json:"cwd"`
	// Terminal is what the forwarding process's outputs are, so that the
	// server draws progress and live views for them as it would for its
	// own terminal.
	Terminal terminal `json:"terminal"`
}

// Stream frames: kind u8, length u32be, data.
const (
	frameStdout = 1
	frameStderr = 2
	frameExit   = 3
)

func socketClient(storeDir string) *http.Client {
	sock := filepath.Join(socketDir(storeDir), socketName)
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
}

// forwardToServer sends e's command line to the server holding the store.
func forwardToServer(e *env) error {
	sock := filepath.Join(socketDir(e.storeDir), socketName)
	ctx := e.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	// A server that is starting holds the store a moment before its
	// socket is there.
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		} else if i == 30 || ctx.Err() != nil {
			return fmt.Errorf("%w: %s (and no `sim serve` socket at %s)", store.ErrLocked, e.storeDir, sock)
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
	cwd, _ := os.Getwd()
	body, _ := json.Marshal(runRequest{Args: e.args, Cwd: cwd, Terminal: e.terminalOf()})
	var resp *http.Response
	var err error
	for i := 0; ; i++ {
		req, _ := http.NewRequestWithContext(ctx, "POST", "http://sim/run", bytes.NewReader(body))
		resp, err = socketClient(e.storeDir).Do(req)
		// A socket a server left behind, which the one starting now
		// replaces in a moment.
		if err == nil || i == 30 || ctx.Err() != nil || !(errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT)) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("%w: %s, and its server did not answer on %s: %v", store.ErrLocked, e.storeDir, sock, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("sim serve refused the command: %s", bytes.TrimSpace(msg))
	}
	var hdr [5]byte
	for {
		if _, err := io.ReadFull(resp.Body, hdr[:]); err != nil {
			if ctx.Err() != nil {
				// Interrupted here: the server saw the connection end and
				// stopped the command, keeping what it finished.
				return errInterrupted
			}
			return fmt.Errorf("sim serve: connection lost: %w", err)
		}
		n := binary.BigEndian.Uint32(hdr[1:])
		data := make([]byte, n)
		if _, err := io.ReadFull(resp.Body, data); err != nil {
			return fmt.Errorf("sim serve: connection lost: %w", err)
		}
		switch hdr[0] {
		case frameStdout:
			e.stdout.Write(data)
		case frameStderr:
			e.stderr.Write(data)
		case frameExit:
			if n != 4 {
				return errors.New("sim serve: bad exit frame")
			}
			return forwarded{int(binary.BigEndian.Uint32(data))}
		}
	}
}

// frameWriter writes one kind of output frame to a streaming response.
type frameWriter struct {
	mu   *sync.Mutex
	w    io.Writer
	kind byte
}

func (f frameWriter) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var hdr [5]byte
	hdr[0] = f.kind
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(p)))
	if _, err := f.w.Write(hdr[:]); err != nil {
		return 0, err
	}
	if _, err := f.w.Write(p); err != nil {
		return 0, err
	}
	if fl, ok := f.w.(http.Flusher); ok {
		fl.Flush()
	}
	return len(p), nil
}

// serveSocket listens on <storeDir>/sim.sock (mode 0600) and runs the
// command lines other sim processes forward there on st, with the
// server's services sv.
func serveSocket(ctx context.Context, st *store.Store, storeDir string, sv *serving) (*http.Server, error) {
	// In the store's directory; an S3 store's local cache directory.
	sock := filepath.Join(st.Dir(), socketName)
	os.Remove(sock) // stale: we hold the store lock, so no server owns it
	ul, err := net.Listen("unix", sock)
	if err != nil {
		return nil, err
	}
	os.Chmod(sock, 0o600)
	local := &http.Server{Handler: runHandler(st, storeDir, sv),
		BaseContext: func(net.Listener) context.Context { return ctx },
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if uc, ok := c.(*net.UnixConn); ok {
				return context.WithValue(ctx, connKey{}, uc)
			}
			return ctx
		}}
	go func() {
		local.Serve(ul)
		os.Remove(sock)
	}()
	return local, nil
}

// runHandler serves forwarded command lines on the unix socket.
func runHandler(st *store.Store, storeDir string, sv *serving) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != "POST" || r.URL.Path != "/run" {
			http.NotFound(w, r)
			return
		}
		if err := checkPeer(r); err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
		var req runRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
			http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
			return
		}
		for _, a := range req.Args {
			if a == "serve" {
				http.Error(w, "sim serve cannot be forwarded", http.StatusBadRequest)
				return
			}
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.WriteHeader(http.StatusOK)
		mu := &sync.Mutex{}
		e := &env{stdout: frameWriter{mu, w, frameStdout}, stderr: frameWriter{mu, w, frameStderr},
			cwd: req.Cwd, st: st, served: sv, term: &req.Terminal}
		// The store flag must name the store this server holds.
		args := append([]string{"--store", storeDir}, req.Args...)
		code := run(r.Context(), args, e)
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(code))
		frameWriter{mu, w, frameExit}.Write(b[:])
	})
}

type connKey struct{}

// checkPeer allows the server's own user and root.
func checkPeer(r *http.Request) error {
	c, _ := r.Context().Value(connKey{}).(*net.UnixConn)
	if c == nil {
		return errors.New("not a unix socket connection")
	}
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var cerr error
	raw.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
	if cerr != nil {
		return cerr
	}
	if cred.Uid != 0 && int(cred.Uid) != os.Geteuid() {
		return fmt.Errorf("uid %d may not use this store", cred.Uid)
	}
	return nil
}
