package synctest

import (
	"fmt"
	"os"
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"
)

// NetnsEnv is set to "1" in a test binary that RunInNetns re-ran in a
// private network namespace.
const NetnsEnv = "SIM_MCAST_NETNS"

// RunInNetns is a TestMain for packages whose tests send multicast: as
// root it runs the test binary again in a private network namespace
// (unshare --net) with its loopback up and multicast, so no real LAN is
// touched; elsewhere it runs the tests as they are (those needing the
// namespace skip when NetnsEnv is not "1").
func RunInNetns(m *testing.M) {
	if os.Geteuid() == 0 && os.Getenv(NetnsEnv) == "" {
		if path, err := exec.LookPath("unshare"); err == nil {
			c := exec.Command(path, append([]string{"--net", "--", os.Args[0]}, os.Args[1:]...)...)
			c.Env = append(os.Environ(), NetnsEnv+"=1")
			c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
			if err := c.Run(); err != nil {
				if ee, ok := err.(*exec.ExitError); ok {
					os.Exit(ee.ExitCode())
				}
				fmt.Fprintln(os.Stderr, "unshare:", err)
				os.Exit(1)
			}
			os.Exit(0)
		}
	}
	if os.Getenv(NetnsEnv) == "1" {
		// A fresh namespace's lo is down and not multicast.
		if fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0); err == nil {
			ifr, _ := unix.NewIfreq("lo")
			ifr.SetUint16(unix.IFF_UP | unix.IFF_LOOPBACK | unix.IFF_RUNNING | unix.IFF_MULTICAST)
			unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
			unix.Close(fd)
		}
	}
	os.Exit(m.Run())
}
