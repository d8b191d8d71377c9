package boot

import (
	"strings"
	"testing"
)

func TestParseCmdline(t *testing.T) {
	p, err := ParseCmdline("BOOT_IMAGE=/vmlinuz console=ttyS0 sim.server=http://10.0.2.2:7480 sim.node=n1 sim.transport=auto sim.after=reboot")
	if err != nil || p.Server != "http://10.0.2.2:7480" || p.Node != "n1" || p.Transport != "http" || p.After != "reboot" || p.OnError != "shell" {
		t.Errorf("got %+v %v", p, err)
	}
	for _, bad := range []string{"console=ttyS0", "sim.server=x sim.after=explode", "sim.server=x sim.colour=red", "sim.server=x sim.onerror=none"} {
		if _, err := ParseCmdline(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestReasonWriter(t *testing.T) {
	var out strings.Builder
	l := &ReasonWriter{W: &out, Prefix: "sim: "}
	l.Write([]byte("sim install: [ 0.0s] start\nsim: install failed at step \"lay"))
	l.Write([]byte("out\": disk /dev/vda too small\nmore\n"))
	if l.Last() != "sim: install failed at step \"layout\": disk /dev/vda too small" || !strings.HasSuffix(out.String(), "more\n") {
		t.Errorf("last = %q", l.Last())
	}
}
