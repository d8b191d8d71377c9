package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
)

// version and commit are set at build time from git (the Makefile's
// -ldflags "-X main.version=... -X main.commit=..."); a plain go build
// falls back to what the Go toolchain recorded (runtime/debug).
var version, commit string

type versionInfo struct {
	Version  string `json:"version"`
	Commit   string `json:"commit"`
	Modified bool   `json:"modified,omitempty"` // built from a work tree with uncommitted changes
	Time     string `json:"commit_time,omitempty"`
	Go       string `json:"go"`
	Platform string `json:"platform"`
}

func buildVersion() versionInfo {
	v := versionInfo{Version: version, Commit: commit, Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v.Version == "" && bi.Main.Version != "(devel)" {
			v.Version = strings.TrimPrefix(bi.Main.Version, "v")
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if v.Commit == "" {
					v.Commit = s.Value
				}
			case "vcs.modified":
				v.Modified = s.Value == "true"
			case "vcs.time":
				v.Time = s.Value
			}
		}
	}
	if v.Version == "" {
		v.Version = "devel"
	}
	if v.Commit == "" {
		v.Commit = "unknown"
	}
	return v
}

func (v versionInfo) String() string {
	c := v.Commit
	if v.Modified {
		c += " (modified)"
	}
	return fmt.Sprintf("sim %s\ncommit %s\n%s %s\n", v.Version, c, v.Go, v.Platform)
}

func (e *env) printVersion() error {
	v := buildVersion()
	if e.json {
		return e.printJSON(v)
	}
	_, err := fmt.Fprint(e.stdout, v)
	return err
}

func newVersionCommand(e *env) *cobra.Command {
	c := &cobra.Command{
		Use:   "version",
		Short: "Print sim's version, the commit it was built from and the Go version (as --version)",
		Args:  cobra.NoArgs,
		RunE:  func(c *cobra.Command, args []string) error { return e.printVersion() },
	}
	e.addJSONFlag(c)
	return c
}
