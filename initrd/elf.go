package initrd

import (
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// libDirs are searched for DT_NEEDED libraries, in ld.so's order on
// Debian amd64 (multiarch first).
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"}

// IsStatic says whether the ELF file needs no program interpreter.
func IsStatic(path string) (bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		return false, fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false, nil
		}
	}
	return true, nil
}

// Deps returns the dynamic loader and every shared library path needs,
// transitively, as absolute host paths (what ldd would print, without
// running the binary).
func Deps(root, path string) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	var walk func(p string) error
	walk = func(p string) error {
		f, err := elf.Open(filepath.Join(root, p))
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		defer f.Close()
		for _, pr := range f.Progs {
			if pr.Type == elf.PT_INTERP {
				b := make([]byte, pr.Filesz)
				if _, err := pr.ReadAt(b, 0); err != nil {
					return fmt.Errorf("%s: interpreter: %w", p, err)
				}
				interp := strings.TrimRight(string(b), "\x00")
				if !seen[interp] {
					seen[interp] = true
					out = append(out, interp)
				}
			}
		}
		libs, err := f.ImportedLibraries()
		if err != nil {
			return nil // static
		}
		for _, l := range libs {
			found := ""
			for _, d := range libDirs {
				c := filepath.Join(d, l)
				if _, err := os.Stat(filepath.Join(root, c)); err == nil {
					found = c
					break
				}
			}
			if found == "" {
				return fmt.Errorf("%s needs %s, not found in %s", p, l, strings.Join(libDirs, " "))
			}
			if seen[found] {
				continue
			}
			seen[found] = true
			out = append(out, found)
			if err := walk(found); err != nil {
				return err
			}
		}
		return nil
	}
	return out, walk(path)
}
