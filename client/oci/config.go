package oci

import (
	"encoding/json"
	"fmt"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// RunConfig is what an image says about running it: the fields of its
// configuration's "config" object that the OCI image spec defines.
// Docker's extensions (Healthcheck, Shell, OnBuild, ...) are dropped.
type RunConfig struct {
	User         string              `json:"User,omitempty"`
	ExposedPorts map[string]struct{} `json:"ExposedPorts,omitempty"`
	Env          []string            `json:"Env,omitempty"`
	Entrypoint   []string            `json:"Entrypoint,omitempty"`
	Cmd          []string            `json:"Cmd,omitempty"`
	Volumes      map[string]struct{} `json:"Volumes,omitempty"`
	WorkingDir   string              `json:"WorkingDir,omitempty"`
	Labels       map[string]string   `json:"Labels,omitempty"`
	StopSignal   string              `json:"StopSignal,omitempty"`
}

func runConfigOf(c v1.Config) RunConfig {
	return RunConfig{User: c.User, ExposedPorts: c.ExposedPorts, Env: c.Env, Entrypoint: c.Entrypoint, Cmd: c.Cmd,
		Volumes: c.Volumes, WorkingDir: c.WorkingDir, Labels: c.Labels, StopSignal: c.StopSignal}
}

func (r RunConfig) v1() v1.Config {
	return v1.Config{User: r.User, ExposedPorts: r.ExposedPorts, Env: r.Env, Entrypoint: r.Entrypoint, Cmd: r.Cmd,
		Volumes: r.Volumes, WorkingDir: r.WorkingDir, Labels: r.Labels, StopSignal: r.StopSignal}
}

// DefaultRunConfig is what Export gives a commit that did not come from
// an image: the usual PATH and a shell.
var DefaultRunConfig = RunConfig{
	Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
	Cmd: []string{"/bin/sh"},
}

// The trailers an imported commit's message ends with, one a line after
// a blank line, as git's trailers: where the image came from and how to
// run it.
const (
	TrailerSource   = "OCI-Source"   // "oci-layout NAME", "oci-archive NAME" or "docker-archive NAME"
	TrailerManifest = "OCI-Manifest" // the image manifest's digest
	TrailerPlatform = "OCI-Platform" // os/architecture[/variant]
	TrailerConfig   = "OCI-Config"   // RunConfig as compact JSON (keys sorted)
)

// message is summary, a blank line and the trailers, in order.
func message(summary string, trailers [][2]string) string {
	var b strings.Builder
	b.WriteString(strings.TrimRight(summary, "\n"))
	b.WriteString("\n")
	for i, t := range trailers {
		if i == 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "%s: %s\n", t[0], t[1])
	}
	return strings.TrimRight(b.String(), "\n")
}

// trailer returns the value of the last line "KEY: value" of msg.
func trailer(msg, key string) (string, bool) {
	lines := strings.Split(msg, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(lines[i], key+": "); ok {
			return v, true
		}
	}
	return "", false
}

// ConfigFromMessage reads the run configuration and platform an imported
// commit's message keeps; ok is false when it has none.
func ConfigFromMessage(msg string) (rc RunConfig, platform string, ok bool, err error) {
	v, ok := trailer(msg, TrailerConfig)
	if !ok {
		return rc, "", false, nil
	}
	if err := json.Unmarshal([]byte(v), &rc); err != nil {
		return rc, "", false, fmt.Errorf("commit message: bad %s trailer: %v", TrailerConfig, err)
	}
	platform, _ = trailer(msg, TrailerPlatform)
	return rc, platform, true, nil
}
