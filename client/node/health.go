package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"time"

	"github.com/systemimager/sim/client/disk"
	"github.com/systemimager/sim/client/install"
)

// DefaultHealthTimeout bounds each health check.
const DefaultHealthTimeout = 5 * time.Minute

// health runs the journal's checks after an update, greenboot-style: the
// rollout's commands (sh -c), then every executable of the new root's
// HealthDir in name order. Each runs chrooted into Root (directly on "/"),
// with SIM_NODE, SIM_COMMIT (the new image commit) and SIM_PREVIOUS (the
// one before) in its environment, at most the journal's timeout. The
// first failure ends them: its error names the check and its exit, out is
// the end of its output.
func (m *Machine) health(ctx context.Context, j *Journal) (out string, err error) {
	timeout := j.HealthTimeout
	if timeout <= 0 {
		timeout = DefaultHealthTimeout
	}
	env := []string{"SIM_NODE=" + m.Name, "SIM_COMMIT=" + j.To.Commit.String(), "SIM_PREVIOUS=" + j.From.Commit.String()}
	type check struct {
		name string
		args []string
	}
	var checks []check
	for _, c := range j.Health {
		checks = append(checks, check{fmt.Sprintf("--health %q", c), []string{"/bin/sh", "-c", c}})
	}
	dir := filepath.Join(m.Root, HealthDir)
	if ents, err := os.ReadDir(dir); err == nil {
		sort.Slice(ents, func(a, b int) bool { return ents[a].Name() < ents[b].Name() })
		for _, e := range ents {
			fi, err := os.Stat(filepath.Join(dir, e.Name()))
			if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
				continue
			}
			p := path.Join(HealthDir, e.Name())
			checks = append(checks, check{p, []string{p}})
		}
	}
	for _, c := range checks {
		var buf bytes.Buffer
		cctx, cancel := context.WithTimeout(ctx, timeout)
		err := install.Chroot(cctx, m.Root, env, &buf, c.args...)
		timedOut := cctx.Err() == context.DeadlineExceeded
		cancel()
		m.trace("health", c.name)
		if err != nil {
			out := tailString(buf.String(), 4000)
			if timedOut {
				return out, fmt.Errorf("health check %s: no answer within %v", c.name, timeout)
			}
			if ctx.Err() != nil {
				return out, ctx.Err()
			}
			return out, fmt.Errorf("health check %s failed: %s", c.name, firstLine(err, buf.String()))
		}
	}
	return "", nil
}

// firstLine is an exit status and the last line of the check's output.
func firstLine(err error, out string) string {
	msg := err.Error()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		msg = ee.Error() // Chroot's error ends with the whole output
	}
	lines := bytes.Split(bytes.TrimSpace([]byte(out)), []byte("\n"))
	if last := string(bytes.TrimSpace(lines[len(lines)-1])); last != "" {
		return msg + ": " + last
	}
	return msg
}

func tailString(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

func unmount(dirs []string) { disk.Unmount(dirs) }
