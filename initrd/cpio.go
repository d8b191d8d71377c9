package initrd

import (
	"fmt"
	"io"
	"sort"
	"strings"
)

// Entry is one record of the archive.
type Entry struct {
	Name   string // relative, slash-separated, no leading slash
	Mode   uint32 // file type and permission bits (S_IFREG|0755 …)
	Data   []byte // file content or symlink target
	Rmajor uint32 // character/block devices
	Rminor uint32
}

// Mode bits of the newc format (as stat's st_mode).
const (
	ModeDir  = 0o040000
	ModeFile = 0o100000
	ModeLink = 0o120000
	ModeChar = 0o020000
)

// WriteCpio writes entries as a cpio "newc" archive (the kernel's
// initramfs format, Documentation/driver-api/early-userspace/
// buffer-format.rst): sorted by name so parents precede children, every
// time 0 and owner root so the same inputs give the same bytes.
func WriteCpio(w io.Writer, entries []Entry) error {
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name < entries[j].Name })
	var off int64
	write := func(b []byte) error {
		n, err := w.Write(b)
		off += int64(n)
		return err
	}
	pad := func() error {
		if r := off % 4; r != 0 {
			return write(make([]byte, 4-r))
		}
		return nil
	}
	rec := func(ino int, e Entry) error {
		if strings.HasPrefix(e.Name, "/") || strings.Contains(e.Name, "\x00") {
			return fmt.Errorf("cpio: bad name %q", e.Name)
		}
		nlink := 1
		if e.Mode&0o170000 == ModeDir {
			nlink = 2
		}
		hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
			ino, e.Mode, 0, 0, nlink, 0, len(e.Data), 0, 0, e.Rmajor, e.Rminor, len(e.Name)+1, 0)
		if err := write([]byte(hdr + e.Name + "\x00")); err != nil {
			return err
		}
		if err := pad(); err != nil {
			return err
		}
		if err := write(e.Data); err != nil {
			return err
		}
		return pad()
	}
	for i, e := range entries {
		if i > 0 && entries[i-1].Name == e.Name {
			return fmt.Errorf("cpio: %s twice", e.Name)
		}
		if err := rec(i+1, e); err != nil {
			return err
		}
	}
	return rec(0, Entry{Name: "TRAILER!!!"})
}
