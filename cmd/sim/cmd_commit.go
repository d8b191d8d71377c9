package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/client"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/store/sign"
	simsync "github.com/systemimager/sim/sync"
	"github.com/systemimager/sim/sync/units"
)

func newInitCommand(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "init",
		Short: "Create an empty store at --store",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, args []string) error {
			// Checked before e.path, which would join a forwarded
			// command's cwd in front of a scheme and hide it.
			if err := store.CheckLocation(e.storeDir); err != nil {
				return err
			}
			if err := store.Init(e.path(e.storeDir)); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "initialized empty sim store in %s\n", e.storeDir)
			return nil
		},
	}
}

type commitOptions struct {
	image, message, author string
	exclude, excludeFrom   []string
	oneFS, noDefaultEx     bool
	remote                 string
	rf                     remoteFlags
	sign                   string
}

// liveExcludes are left out when the source is a running system's "/":
// kernel and runtime filesystems, and temporary files (SystemImager's
// getimage.exclude does the same).
var liveExcludes = []string{"/proc/*", "/sys/*", "/dev/*", "/run/*", "/tmp/*", "/var/tmp/*",
	"/var/lib/sim/*", "/mnt/*", "/media/*", "/lost+found"}

func newCommitCommand(e *env) *cobra.Command {
	var o commitOptions
	c := &cobra.Command{
		Use:   "commit SRC --image NAME [-m MSG]",
		Short: "Snapshot directory SRC as the new head of an image",
		Long: `Snapshot directory SRC as the new head of image NAME (created if new).
Only files whose stat changed since the image's last commit are read. The
last line on stdout is the new commit id.`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if o.image == "" {
				return usageError{fmt.Errorf("commit: --image NAME is required")}
			}
			ex, err := e.excludes(o.exclude, o.excludeFrom)
			if err != nil {
				return err
			}
			src := e.path(args[0])
			if abs, _ := filepath.Abs(src); abs == "/" {
				if !o.noDefaultEx {
					ex = append(ex, liveExcludes...)
				}
				o.oneFS = true
			}
			key, err := e.readSigningKey(o.sign)
			if err != nil {
				return err
			}
			if o.remote != "" {
				return e.commitRemote(c.Context(), o, src, ex, key)
			}
			return e.withStore(func(st *store.Store) error {
				p := &snapshot.Progress{}
				stop := e.showProgress("commit", p)
				id, cm, err := client.Commit(c.Context(), st, src, client.CommitOptions{
					Image: o.image, Message: o.message, Author: o.author, Exclude: ex,
					OneFileSystem: o.oneFS, Progress: p, Sign: key,
					Warn: func(err error) { fmt.Fprintf(e.stderr, "sim: warning: %v\n", err) },
				})
				stop()
				if err != nil {
					return err
				}
				s := cm.Stats
				fmt.Fprintf(e.stderr, "%s: %d files, %d dirs, %s; read %d files, added %d blobs (%s, %s stored)\n",
					o.image, s.Files, s.Dirs, units.Bytes(s.Bytes), s.ReadFiles, s.NewBlobs, units.Bytes(s.NewBytes), units.Bytes(s.StoredBytes))
				if key == nil {
					if p, err := st.Policy(); err == nil && p.Require {
						fmt.Fprintf(e.stderr, "sim: warning: %s is not signed, and this store requires signatures: nodes and checkouts will refuse it (sim sign %s --key KEY)\n", id.Short(), o.image)
					}
				}
				fmt.Fprintln(e.stdout, id)
				return nil
			})
		},
	}
	f := c.Flags()
	f.StringVar(&o.image, "image", "", "image (branch) to commit to")
	f.StringVarP(&o.message, "message", "m", "", "commit message")
	f.StringVar(&o.author, "author", "", "author (default user@host)")
	f.StringArrayVar(&o.exclude, "exclude", nil, "exclude paths matching `PATTERN` (repeatable)")
	f.StringArrayVar(&o.excludeFrom, "exclude-from", nil, "read exclude patterns from `FILE`, one per line")
	f.BoolVar(&o.oneFS, "one-file-system", false, "do not descend into other filesystems (mount points are kept empty; implied for /)")
	f.BoolVar(&o.noDefaultEx, "no-default-excludes", false, "for /, do not leave out /proc, /sys, /dev, /run, /tmp, ...")
	f.StringVar(&o.remote, "remote", "", "commit straight into the sim server at `URL` (capture a golden client): only blobs it lacks are sent")
	f.StringVar(&o.sign, "sign", "", "sign the commit with the private key `FILE` (sim key gen)")
	o.rf.add(c)
	return c
}

// commitRemote captures src into a server's store without a local copy.
// The stat cache lives in the local cache directory, per server and image.
func (e *env) commitRemote(ctx context.Context, o commitOptions, src string, ex []string, key *sign.PrivateKey) error {
	r, err := o.rf.remote(e, o.remote)
	if err != nil {
		return err
	}
	if err := store.CheckName("image", o.image); err != nil {
		return err
	}
	m, err := snapshot.NewMatcher(ex)
	if err != nil {
		return err
	}
	cacheDir, err := os.UserCacheDir()
	if err != nil {
		cacheDir = os.TempDir()
	}
	cacheDir = filepath.Join(cacheDir, "sim")
	os.MkdirAll(cacheDir, 0o700)
	cachePath := filepath.Join(cacheDir, "stat-"+chunk.Sum([]byte(o.remote + "\x00" + o.image)).String()[:24])
	cache, _ := snapshot.LoadStatCache(cachePath)
	cp := simsync.NewCapture(ctx, r)
	p := &snapshot.Progress{}
	stop := e.showProgress("capture", p)
	start := time.Now()
	warn := func(err error) { fmt.Fprintf(e.stderr, "sim: warning: %v\n", err) }
	res, err := snapshot.Commit(ctx, cp, chunk.DefaultParams, src, snapshot.CommitOptions{
		Exclude: m, OneFileSystem: o.oneFS, Cache: cache, Progress: p, Warn: warn})
	if err == nil {
		err = cp.Flush()
	}
	stop()
	if err != nil {
		return err
	}
	cm := &store.Commit{Tree: res.Root, Time: start.UTC(), Author: o.author, Message: o.message, Stats: res.Stats}
	if cm.Author == "" {
		cm.Author = store.DefaultAuthor()
	}
	cm.Host, _ = os.Hostname()
	cm.Stats.NewBlobs = cp.Uploaded
	id, err := simsync.CommitRemote(ctx, r, o.image, cm, key)
	if err != nil {
		return err
	}
	if err := res.Cache.Save(cachePath); err != nil {
		warn(fmt.Errorf("save stat cache: %w", err))
	}
	s := res.Stats
	fmt.Fprintf(e.stderr, "%s on %s: %d files, %d dirs, %s; read %d files, offered %d blobs, uploaded %d (%s on the wire)\n",
		o.image, o.remote, s.Files, s.Dirs, units.Bytes(s.Bytes), s.ReadFiles, cp.Offered, cp.Uploaded, units.Bytes(cp.WireBytes))
	fmt.Fprintln(e.stdout, id)
	return nil
}
