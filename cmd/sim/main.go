// Command sim is the command-line interface of sim, a content-addressed,
// versioned store for whole system images. Each command lives in its own
// file as newXCommand() with an options struct; only this package chooses
// messages and exit codes (0 ok, 1 error, 2 usage).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
)

func main() {
	if os.Getpid() == 1 {
		initMain() // the netboot initrd's /init; never returns
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	if p := os.Getenv("SIM_CPUPROFILE"); p != "" {
		// For `make bench` investigations: go tool pprof bin/sim FILE.
		if f, err := os.Create(p); err == nil {
			pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}
	code := run(ctx, os.Args[1:], &env{stdout: os.Stdout, stderr: os.Stderr})
	stop()
	pprof.StopCPUProfile()
	os.Exit(code)
}

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
	fmt.Fprintf(e.stderr, "sim: %v\n", err)
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
