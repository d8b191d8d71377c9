// Command sim is the command-line interface of sim, a content-addressed,
// versioned store for whole system images. Each command lives in its own
// file as newXCommand() with an options struct; only this package chooses
// messages and exit codes (0 ok, 1 error, 2 usage).
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
)

// Output goes through these so tests can capture it.
var (
	stdout io.Writer = os.Stdout
	stderr io.Writer = os.Stderr
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	if p := os.Getenv("SIM_CPUPROFILE"); p != "" {
		// For `make bench` investigations: go tool pprof bin/sim FILE.
		if f, err := os.Create(p); err == nil {
			pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}
	code := run(ctx, os.Args[1:])
	stop()
	pprof.StopCPUProfile()
	os.Exit(code)
}

// run executes one command line and returns the exit code.
func run(ctx context.Context, args []string) int {
	root := newRootCommand()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "sim: %v\n", err)
	var u usageError
	if errors.As(err, &u) {
		return 2
	}
	return 1
}

// usageError marks a command line that is wrong, as opposed to a command
// that failed.
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }
