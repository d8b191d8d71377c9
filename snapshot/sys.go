package snapshot

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// kindOf maps st_mode's file type to a Kind.
func kindOf(mode uint32) Kind {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return KindFile
	case unix.S_IFDIR:
		return KindDir
	case unix.S_IFLNK:
		return KindSymlink
	case unix.S_IFCHR:
		return KindChar
	case unix.S_IFBLK:
		return KindBlock
	case unix.S_IFIFO:
		return KindFifo
	case unix.S_IFSOCK:
		return KindSocket
	}
	return 0
}

func (k Kind) ifmt() uint32 {
	switch k {
	case KindFile:
		return unix.S_IFREG
	case KindDir:
		return unix.S_IFDIR
	case KindSymlink:
		return unix.S_IFLNK
	case KindChar:
		return unix.S_IFCHR
	case KindBlock:
		return unix.S_IFBLK
	case KindFifo:
		return unix.S_IFIFO
	case KindSocket:
		return unix.S_IFSOCK
	}
	return 0
}

// nodeFromStat fills the metadata of n from st.
func nodeFromStat(n *Node, st *unix.Stat_t) {
	n.Kind = kindOf(st.Mode)
	n.Mode = st.Mode & 07777
	n.UID, n.GID = st.Uid, st.Gid
	n.MtimeSec, n.MtimeNsec = st.Mtim.Sec, uint32(st.Mtim.Nsec)
	if n.Kind == KindChar || n.Kind == KindBlock {
		n.Major, n.Minor = unix.Major(st.Rdev), unix.Minor(st.Rdev)
	}
	if n.Kind == KindFile {
		n.Size = uint64(st.Size)
	}
}

// listXattrs reads all xattrs of path without following a final symlink.
// Filesystems without xattr support give an empty list.
func listXattrs(path string) ([]Xattr, error) {
	xs, err := readXattrs(
		func(b []byte) (int, error) { return unix.Llistxattr(path, b) },
		func(name string, b []byte) (int, error) { return unix.Lgetxattr(path, name, b) })
	if err != nil {
		return nil, fmt.Errorf("read xattrs of %s: %w", path, err)
	}
	return xs, nil
}

// listXattrsFd reads all xattrs of an open file or directory.
func listXattrsFd(fd int) ([]Xattr, error) {
	xs, err := readXattrs(
		func(b []byte) (int, error) { return unix.Flistxattr(fd, b) },
		func(name string, b []byte) (int, error) { return unix.Fgetxattr(fd, name, b) })
	if err != nil {
		return nil, fmt.Errorf("read xattrs: %w", err)
	}
	return xs, nil
}

func readXattrs(list func([]byte) (int, error), get func(string, []byte) (int, error)) ([]Xattr, error) {
	names, err := growRead(list)
	if errors.Is(err, unix.ENOTSUP) {
		return nil, nil
	}
	if err != nil || len(names) == 0 {
		return nil, err
	}
	var out []Xattr
	for _, name := range strings.Split(strings.TrimRight(string(names), "\x00"), "\x00") {
		v, err := growRead(func(b []byte) (int, error) { return get(name, b) })
		if errors.Is(err, unix.ENODATA) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		out = append(out, Xattr{Name: name, Value: v})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// growRead calls a list/get xattr syscall with a buffer that grows on
// ERANGE (the value can grow between the size query and the read).
func growRead(call func([]byte) (int, error)) ([]byte, error) {
	buf := make([]byte, 256)
	for {
		n, err := call(buf)
		if errors.Is(err, unix.ERANGE) {
			sz, err := call(nil)
			if err != nil {
				return nil, err
			}
			buf = make([]byte, sz+256)
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n:n], nil
	}
}

// fdPath names an entry of an open directory through /proc, for the
// syscalls that have no *at form (l*xattr). The directory part is the
// open fd, so no symlink in the path can redirect it.
func fdPath(dirfd int, name string) string {
	return "/proc/self/fd/" + strconv.Itoa(dirfd) + "/" + name
}

// readDirFd lists the names in an open directory from its start, with raw
// getdents: os.File would also register the fd with the runtime poller
// (fcntl, epoll_ctl), which doubles the syscalls of a walk over thousands
// of directories.
func readDirFd(fd int) ([]string, error) {
	names, _, err := readDirFdBuf(fd, nil)
	return names, err
}

// readDirFdBuf is readDirFd reading through buf (allocated when nil),
// which it returns for the next call: a walk of a thousand directories
// then allocates one buffer, not a thousand.
func readDirFdBuf(fd int, buf []byte) ([]string, []byte, error) {
	if _, err := unix.Seek(fd, 0, 0); err != nil {
		return nil, buf, err
	}
	if buf == nil {
		buf = make([]byte, 32<<10)
	}
	var names []string
	for {
		n, err := unix.Getdents(fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, buf, err
		}
		if n <= 0 {
			return names, buf, nil
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
}

// futimens sets the times of the open file fd: utimensat(fd, NULL, ts, 0),
// which x/sys/unix does not offer (UtimesNanoAt passes a path, and the
// /proc/self/fd/N path it would need costs a path walk through procfs).
func futimens(fd int, ts []unix.Timespec) error {
	_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// processUmask is the process's umask; 0777 (nothing may be left to it)
// when the kernel does not say.
func processUmask() uint32 {
	// /proc/self/status says it without changing it (umask(2) cannot
	// read it without setting it, a race with every other goroutine).
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0o777
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Umask:"); ok {
			if m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32); err == nil {
				return uint32(m)
			}
		}
	}
	return 0o777
}
