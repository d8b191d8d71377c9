package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

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
}

// path makes p absolute against the command line's working directory.
func (e *env) path(p string) string {
	if e.cwd == "" || filepath.IsAbs(p) {
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
		newLayoutCommand(e), newNodeCommand(e), newNodesCommand(e), newGroupCommand(e), newOverrideCommand(e),
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

// showProgress prints p on e.stderr every 200 ms while it runs, when e.stderr
// is a terminal. The returned func stops it.
func (e *env) showProgress(what string, p *snapshot.Progress) func() {
	if f, ok := e.stderr.(*os.File); !ok || !isTerminal(f) {
		return func() {}
	}
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		start := time.Now()
		for {
			select {
			case <-done:
				fmt.Fprintf(e.stderr, "\r\033[K")
				return
			case <-t.C:
				mb := float64(p.Bytes.Load()) / 1e6
				fmt.Fprintf(e.stderr, "\r\033[K%s: %d files, %.1f MB, %.1f MB/s", what, p.Files.Load(), mb, mb/time.Since(start).Seconds())
			}
		}
	}()
	return func() { close(done); <-stopped }
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
	f, ok := e.stderr.(*os.File)
	return simsync.TransportEnv{Remote: r, Store: st, Log: e.stderr, Terminal: ok && isTerminal(f), JSON: e.json}
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
