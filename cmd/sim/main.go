// Command sim is the command-line interface of sim, a content-addressed,
// versioned store for whole system images. Each command lives in its own
// file as newXCommand() with an options struct and calls one library
// function; only this package chooses messages and exit codes (0 ok,
// 1 error, 2 usage, 130 interrupted).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/systemimager/sim/client/boot"
	"github.com/systemimager/sim/store"
	simsync "github.com/systemimager/sim/sync"

	// Every transport, registered with sync for --transport and sim serve.
	_ "github.com/systemimager/sim/sync/transports"
)

func main() {
	if os.Getpid() == 1 {
		// The netboot initrd's /init; never returns.
		boot.Main(func(args []string, stderr io.Writer) int {
			return run(context.Background(), args, &env{stdout: os.Stdout, stderr: stderr})
		})
	}
	if p := os.Getenv("SIM_CPUPROFILE"); p != "" {
		// For `make bench` investigations: go tool pprof bin/sim FILE.
		if f, err := os.Create(p); err == nil {
			pprof.StartCPUProfile(f)
		}
	}
	code := runProcess(os.Args[1:])
	pprof.StopCPUProfile()
	os.Exit(code)
}

// runProcess runs a command line as the whole process: SIGINT or
// SIGTERM cancels its context (it stops, keeping what it finished), and
// if it has not returned stopGrace later, or at a second signal, the
// process exits at once: the store is crash-safe, so that loses at most
// what was in flight.
func runProcess(args []string) int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		<-sigs
		cancel()
		select {
		case <-sigs:
		case <-time.After(stopGrace):
		}
		fmt.Fprintln(os.Stderr, "sim: interrupted, and not stopped in time: exiting now (what was in flight is lost; the store is consistent)")
		os.Exit(130)
	}()
	return run(ctx, args, &env{stdout: os.Stdout, stderr: os.Stderr})
}

// stopGrace is how long a command has, after SIGINT or SIGTERM, to stop
// by itself.
const stopGrace = 1800 * time.Millisecond

// errInterrupted ends a command that stopped because it was asked to
// (sim serve on SIGTERM): exit 130, nothing more to say.
var errInterrupted = errors.New("interrupted")

// run executes one command line and returns the exit code.
func run(ctx context.Context, args []string, e *env) int {
	e.args, e.ctx = args, ctx
	root := newRootCommand(e)
	root.SetArgs(args)
	root.SetOut(e.stdout)
	root.SetErr(e.stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var f forwarded
	if errors.As(err, &f) {
		return f.code
	}
	if errors.Is(err, errInterrupted) {
		return 130
	}
	if ctx.Err() != nil {
		fmt.Fprintf(e.stderr, "sim: interrupted: %v\n", err)
		return 130
	}
	var x exitError
	if errors.As(err, &x) {
		if x.err != nil {
			fmt.Fprintf(e.stderr, "sim: %v\n", x.err)
		}
		return x.code
	}
	fmt.Fprintf(e.stderr, "sim: %v\n", err)
	var u usageError
	var fe *simsync.FlagError
	if errors.As(err, &u) || errors.As(err, &fe) || errors.Is(err, store.ErrUnknownScheme) || errors.Is(err, store.ErrBadLocation) {
		return 2
	}
	return 1
}

// usageError marks a command line that is wrong, as opposed to a command
// that failed.
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

// exitError ends a command with a chosen exit code (sim diff
// --exit-code), printing err first when there is one.
type exitError struct {
	code int
	err  error
}

func (x exitError) Error() string {
	if x.err != nil {
		return x.err.Error()
	}
	return fmt.Sprintf("exit status %d", x.code)
}

func (x exitError) Unwrap() error { return x.err }
