package install

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// The node's agent (sim agent, client/agent): the installer puts this
// program on the node and enables its systemd unit, so every node it
// installs reports to its server and takes its updates (README "Day 2").
// Both live where an update of the node leaves them: the binary in the
// node store's directory (protected by every checkout), the unit among the
// identity files an update preserves.
const (
	AgentBinary = StoreDir + "/bin/sim"
	AgentUnit   = "etc/systemd/system/sim-agent.service"
	agentLink   = "etc/systemd/system/multi-user.target.wants/sim-agent.service"
)

// AgentFiles are the agent's unit and its enabling link (relative to the
// root), which an update preserves.
var AgentFiles = []string{AgentUnit, agentLink}

// agentUnitText runs the agent on the whole system. The server and the
// node's name come from installed.json; its output goes to the console
// too, so a node shows what its updates do.
const agentUnitText = `# written by sim install: the node's agent reports to the image server
# named in /var/lib/sim/installed.json and carries out its updates.
[Unit]
Description=sim agent: reports to the image server, applies its updates
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=` + AgentBinary + ` agent --root /
Restart=always
RestartSec=5
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
`

// installAgent copies bin (default: this program) to the new root and
// enables the agent's unit; an image without systemd gets neither (it
// reports false).
func installAgent(root, bin string) (bool, error) {
	if _, err := os.Stat(filepath.Join(root, "lib/systemd/system")); err != nil {
		if _, err := os.Stat(filepath.Join(root, "usr/lib/systemd/system")); err != nil {
			return false, nil
		}
	}
	if bin == "" {
		var err error
		if bin, err = os.Executable(); err != nil {
			return false, fmt.Errorf("sim agent: cannot find this program: %w", err)
		}
	}
	if err := copyFile(bin, filepath.Join(root, AgentBinary), 0o755); err != nil {
		return false, fmt.Errorf("sim agent: %w", err)
	}
	if _, err := writeFile(root, AgentUnit, agentUnitText, 0o644); err != nil {
		return false, fmt.Errorf("sim agent: %w", err)
	}
	if _, err := enable(root, agentLink, "/"+AgentUnit); err != nil {
		return false, fmt.Errorf("sim agent: %w", err)
	}
	return true, nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	tmp := dst + ".sim-tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, mode)
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}
