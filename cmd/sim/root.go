package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/systemimager/sim/client/progress"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"
)

// env is what one command line runs with. Nothing is global, so that
// `sim serve` can run several forwarded command lines at once.
type env struct {
	stdout, stderr io.Writer
	storeDir       string
	json           bool
	// cwd resolves relative paths of a command line forwarded to
	// `sim serve` from another directory; "" means the process's own.
	cwd string
	// st, when set, is the store a running server already holds open,
	// and served what runs in that server (its sessions, its seeder).
	st     *store.Store
	served *serving
	// args and ctx are the command line being run, for forwarding.
	args []string
	ctx  context.Context
	// term, when set, is what the terminal of a forwarded command line
	// is (the server's own stdout is not it).
	term *terminal
}

// terminal says which of a command line's outputs are terminals, and
// the size of the one stdout is on.
type terminal struct {
	Stdout bool `json:"stdout,omitempty"`
	Stderr bool `json:"stderr,omitempty"`
	Cols   int  `json:"cols,omitempty"`
	Rows   int  `json:"rows,omitempty"`
}

// terminalOf is what this process's stdout and stderr are (the size is
// stdout's, else stderr's).
func (e *env) terminalOf() terminal {
	if e.term != nil {
		return *e.term
	}
	var t terminal
	size := func(f *os.File) {
		if t.Cols > 0 {
			return
		}
		if ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ); err == nil {
			t.Cols, t.Rows = int(ws.Col), int(ws.Row)
		}
	}
	if f, ok := e.stdout.(*os.File); ok && isTerminal(f) {
		t.Stdout = true
		size(f)
	}
	if f, ok := e.stderr.(*os.File); ok && isTerminal(f) {
		t.Stderr = true
		size(f)
	}
	return t
}

// progressTerminal is where a progress bar goes: stderr, when it is a
// terminal (here, or at the far end of a forwarded command line).
func (e *env) progressTerminal() (progress.Terminal, bool) {
	t := e.terminalOf()
	if !t.Stderr {
		return progress.Terminal{}, false
	}
	pt := progress.Terminal{Out: e.stderr}
	if e.term != nil {
		pt.Cols = max(t.Cols, 40) // the server's stderr is a stream, not the terminal
	}
	return pt, true
}

// path makes p absolute against the command line's working directory.
func (e *env) path(p string) string {
	if e.cwd == "" || filepath.IsAbs(p) || store.IsRemote(p) {
		return p
	}
	return filepath.Join(e.cwd, p)
}

func newRootCommand(e *env) *cobra.Command {
	var showVersion bool
	root := &cobra.Command{
		Use:   "sim",
		Short: "sim: git for system images",
		Long: `sim stores whole system images (root filesystems) as deduplicated,
content-defined chunks with commit history. Images are branches, releases
are tags; nodes are installed, updated in place and rolled back from commits.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(c *cobra.Command, args []string) error {
			if showVersion {
				return e.printVersion()
			}
			return c.Help()
		},
	}
	root.Flags().BoolVar(&showVersion, "version", false, "print the version, the commit it was built from and the Go version")
	e.addJSONFlag(root)
	def := os.Getenv("SIM_STORE")
	if def == "" {
		def = "/var/lib/sim"
	}
	root.PersistentFlags().StringVar(&e.storeDir, "store", def, "store directory (default $SIM_STORE, else /var/lib/sim)")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%v (see '%s --help')", err, c.CommandPath())}
	})
	root.AddCommand(
		newInitCommand(e), newCommitCommand(e), newLogCommand(e), newShowCommand(e),
		newLsCommand(e), newCatCommand(e), newTagCommand(e), newImagesCommand(e), newImageCommand(e),
		newCheckoutCommand(e), newDiffCommand(e), newFsckCommand(e), newGCCommand(e),
		newServeCommand(e), newCloneCommand(e), newPullCommand(e), newPushCommand(e), newFetchPlanCommand(e),
		newMulticastCommand(e),
		newLayoutCommand(e), newNodeCommand(e), newNodesCommand(e), newGroupCommand(e), newHostsCommand(e), newOverrideCommand(e),
		newScriptCommand(e), newInstallCommand(e), newInitrdCommand(e), newNetbootCommand(e),
		newImportCommand(e), newExportCommand(e), newVersionCommand(e), newGenManCommand(e),
		newUpdateCommand(e), newRollbackCommand(e), newAgentCommand(e), newRolloutCommand(e), newDriftCommand(e),
	)
	e.addCompletions(root)
	// Trust (#14): signing keys, signatures, the trust policy, API tokens.
	root.AddCommand(newKeyCommand(e), newSignCommand(e), newVerifyCommand(e), newTrustCommand(e), newTokenCommand(e))
	wrapArgs(root)
	return root
}

// wrapArgs turns positional-argument errors into usage errors.
func wrapArgs(c *cobra.Command) {
	if a := c.Args; a != nil {
		c.Args = func(cmd *cobra.Command, args []string) error {
			if err := a(cmd, args); err != nil {
				return usageError{fmt.Errorf("%s: %v", cmd.CommandPath(), err)}
			}
			return nil
		}
	}
	for _, sub := range c.Commands() {
		wrapArgs(sub)
	}
}

// withStore runs fn on the store: the server's open one when running
// inside `sim serve`, else opened (and closed) for this command. When a
// server holds the store, the command line is sent to it instead
// (errForwarded tells run the outcome is already printed).
func (e *env) withStore(fn func(st *store.Store) error) error {
	if e.st != nil {
		return fn(e.st)
	}
	st, err := store.Open(e.storeDir)
	if errors.Is(err, store.ErrLocked) {
		return forwardToServer(e)
	}
	if err != nil {
		return err
	}
	err = fn(st)
	if cerr := st.Close(); err == nil {
		err = cerr
	}
	return err
}

func (e *env) addJSONFlag(c *cobra.Command) {
	c.Flags().BoolVar(&e.json, "json", false, "print JSON")
}

func (e *env) printJSON(v any) error {
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// showProgress shows p's files and bytes on a terminal's stderr while
// the work runs (package progress). The returned func stops it.
func (e *env) showProgress(what string, p *snapshot.Progress) func() {
	return e.showCount(what, "files", p)
}

// showCount is showProgress counting p.Files as unit.
func (e *env) showCount(what, unit string, p *snapshot.Progress) func() {
	t, ok := e.progressTerminal()
	if !ok {
		return func() {}
	}
	return progress.Show(t, what, unit, func() progress.Figures {
		return progress.Figures{Bytes: p.Bytes.Load(), Items: p.Files.Load()}
	})
}

// showFetch shows what r has received while a fetch runs.
func (e *env) showFetch(what string, r *simsync.Remote) func() {
	t, ok := e.progressTerminal()
	if !ok || r == nil {
		return func() {}
	}
	if r.Received == nil {
		r.Received = new(atomic.Int64)
	}
	got, from := r.Received, r.Received.Load()
	return progress.Show(t, what, "", func() progress.Figures {
		return progress.Figures{Bytes: got.Load() - from}
	})
}

// excludes gathers --exclude and --exclude-from patterns.
func (e *env) excludes(pats, files []string) ([]string, error) {
	out := append([]string(nil), pats...)
	for _, f := range files {
		p, err := snapshot.ReadPatternFile(e.path(f))
		if err != nil {
			return nil, err
		}
		out = append(out, p...)
	}
	return out, nil
}

// transportEnv is what a transport opened by this command line gets.
func (e *env) transportEnv(st *store.Store, r *simsync.Remote) simsync.TransportEnv {
	return simsync.TransportEnv{Remote: r, Store: st, Log: e.stderr, Terminal: e.terminalOf().Stderr, JSON: e.json}
}

// withReport adds a transport's own figures (Delivery.Report) under its
// name to a JSON result v ("bittorrent": {...}).
func withReport(v any, ps *simsync.PullStats) any {
	if ps == nil || ps.Report == nil || ps.Transport == "" {
		return v
	}
	b, err := json.Marshal(v)
	if err != nil {
		return v
	}
	m := map[string]any{}
	if json.Unmarshal(b, &m) != nil {
		return v
	}
	if cr, ok := ps.Report.(simsync.ChosenReport); ok {
		m["auto"] = cr.Choice
		if cr.Inner != nil {
			m[ps.Transport] = cr.Inner
		}
		return m
	}
	m[ps.Transport] = ps.Report
	return m
}

// quote shows a path with arbitrary bytes on one line.
func quote(p string) string {
	for i := 0; i < len(p); i++ {
		if p[i] < 0x20 || p[i] >= 0x7f || p[i] == '"' || p[i] == '\\' {
			return fmt.Sprintf("%q", p)
		}
	}
	if strings.ContainsAny(p, " ") {
		return fmt.Sprintf("%q", p)
	}
	return p
}
