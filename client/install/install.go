package install

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	gosync "sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/client"
	"github.com/systemimager/sim/client/catalog"
	"github.com/systemimager/sim/client/disk"
	"github.com/systemimager/sim/client/layout"
	"github.com/systemimager/sim/client/netcfg"
	"github.com/systemimager/sim/snapshot"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/store/sign"
	simsync "github.com/systemimager/sim/sync"
)

// Doc is a catalog document a node gets: an override or a script.
type Doc struct {
	Name   string   `json:"name"`
	Commit chunk.ID `json:"commit"`
}

// Config is what the server answers a node on GET /v1/install/config.
type Config struct {
	Node     string   `json:"node,omitempty"` // "" for an unregistered node (sim.image= only)
	Hostname string   `json:"hostname,omitempty"`
	MAC      string   `json:"mac,omitempty"`
	IP       string   `json:"ip,omitempty"`
	Gateway  string   `json:"gateway,omitempty"`
	Image    string   `json:"image"`
	Commit   chunk.ID `json:"commit"`
	Layout   string   `json:"layout"`
	LayoutID chunk.ID `json:"layout_commit"`
	Disk     string   `json:"disk,omitempty"`
	// Network is the node's network spec (nil: one NIC from MAC, IP and
	// Gateway; see NetSpec).
	Network   *netcfg.Spec `json:"network,omitempty"`
	Overrides []Doc        `json:"overrides,omitempty"`
	Scripts   []Doc        `json:"scripts,omitempty"`
	// PreScripts run in the installer before the disk is partitioned.
	PreScripts []Doc `json:"pre_scripts,omitempty"`
	// Token is the node's own token, minted for it by the server when
	// an enroll (or admin) token asked for a registered node's config
	// (sync.MintNodeToken, named node-NAME; the one before is revoked).
	// The installer keeps it in the node's store and reports with it;
	// the response is Cache-Control: no-store. Empty otherwise.
	Token string `json:"token,omitempty"`
	// After is what the installer does once installed (the node's, else
	// its first group's that has one: poweroff, reboot, kexec, shell);
	// empty: as the kernel command line says (default poweroff).
	After string `json:"after,omitempty"`
}

// Status is one progress report, POSTed to /v1/install/status.
type Status struct {
	Node    string    `json:"node,omitempty"`
	MAC     string    `json:"mac,omitempty"`
	Image   string    `json:"image,omitempty"`
	Commit  string    `json:"commit,omitempty"`
	Step    string    `json:"step"`
	State   string    `json:"state"` // running, failed, done
	Message string    `json:"message,omitempty"`
	Bytes   int64     `json:"bytes,omitempty"` // bytes received from the server so far
	Time    time.Time `json:"time"`
	Elapsed float64   `json:"elapsed_s"`
}

// States of a Status.
const (
	Running = "running"
	Failed  = "failed"
	Done    = "done"
)

// Installed is written to /var/lib/sim/installed.json on the new root as
// the very last step before unmounting: its presence means the install
// completed. Later `sim checkout --from` updates use the node store beside
// it, whose checkout record for "/" names this commit.
type Installed struct {
	Node   string   `json:"node,omitempty"`
	Image  string   `json:"image"`
	Commit chunk.ID `json:"commit"`
	// Effective is what was checked out: the image with the overrides
	// laid over it (Effective), the commit itself when there are none.
	Effective chunk.ID  `json:"effective,omitzero"`
	Layout    chunk.ID  `json:"layout_commit"`
	Overrides []Doc     `json:"overrides,omitempty"`
	Server    string    `json:"server"`
	Time      time.Time `json:"time"`
	Disk      string    `json:"disk"`
	// The identity written (for an update offline, and sim agent).
	Hostname string       `json:"hostname,omitempty"`
	MAC      string       `json:"mac,omitempty"`
	IP       string       `json:"ip,omitempty"`
	Gateway  string       `json:"gateway,omitempty"`
	Network  *netcfg.Spec `json:"network,omitempty"`
	// Agent: the sim agent's unit was installed and enabled.
	Agent bool `json:"agent,omitempty"`
}

// InstalledPath is installed.json in the node store storeDir.
func InstalledPath(storeDir string) string { return filepath.Join(storeDir, "installed.json") }

// ReadInstalled reads the node store's installed.json (os.ErrNotExist
// when sim did not install this node).
func ReadInstalled(storeDir string) (*Installed, error) {
	b, err := os.ReadFile(InstalledPath(storeDir))
	if err != nil {
		return nil, err
	}
	var in Installed
	if err := json.Unmarshal(b, &in); err != nil {
		return nil, fmt.Errorf("%s: %w", InstalledPath(storeDir), err)
	}
	return &in, nil
}

// WriteInstalled writes in as the node store's installed.json, atomically.
func WriteInstalled(storeDir string, in *Installed) error {
	b, _ := json.MarshalIndent(in, "", "  ")
	p := InstalledPath(storeDir)
	if err := store.WriteFileAtomic(p, 0o644, func(w io.Writer) error { _, err := w.Write(append(b, '\n')); return err }); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	return nil
}

// Config is the identity the record holds, as the server would send it
// (no layout): for re-applying identity offline.
func (in *Installed) Config() *Config {
	return &Config{Node: in.Node, Hostname: in.Hostname, MAC: in.MAC, IP: in.IP, Gateway: in.Gateway, Network: in.Network,
		Image: in.Image, Commit: in.Commit, Overrides: in.Overrides}
}

// Options drive Run.
type Options struct {
	Config *Config
	Server string // recorded in installed.json
	Disk   string // overrides the config's and the layout's disk
	Target string // where the new root is mounted; default /run/sim/target
	// Fetch brings commit id and all its objects into st (the node store
	// on the new root), through whatever transport the caller chose.
	Fetch func(ctx context.Context, st *store.Store, id chunk.ID) (simsync.PullStats, error)
	// Report receives every status; it must not block for long, and is
	// called from the heartbeat goroutine too (Log is written from both).
	Report func(Status)
	Log    io.Writer
	// Agent is the sim binary installed on the node for its agent
	// (default: this program itself).
	Agent string
	// Trust are the public keys the node trusts (sim.trust=, baked into
	// the initrd); with any, or RequireSignature, the node's store
	// requires every commit it fetches (image, layout, overrides,
	// scripts) to be signed by one of them, and the layout is read from
	// its signed commit rather than taken from the server's answer: a
	// compromised server cannot make the node install what no admin
	// signed.
	Trust            []sign.PublicKey
	RequireSignature bool
	// Token and CA, when set, are kept in the node's store (token mode
	// 0600, ca.pem) for its later updates and its agent. Token is the
	// node's own (a node token naming it), never a boot token shared by
	// a fleet: FromServer sets it from what the server minted.
	Token string
	CA    []byte
	// Check, when the node requires signatures, is asked about every
	// commit of the install (image, overrides, scripts) before the disk
	// is touched: it applies st's policy to commit id without fetching
	// its objects (sync.CheckCommit). A signed layout with an unsigned
	// image must not cost the node its disk.
	Check func(ctx context.Context, st *store.Store, id chunk.ID) error
	// ShowCheckout, when set, is called as the checkout starts with
	// what counts its files and bytes (for a terminal's progress bar);
	// the checkout calls the func it returns when it ends.
	ShowCheckout func(*snapshot.Progress) (stop func())
	// After is the after-install action the kernel command line asked
	// for ("": the config's, else poweroff). KexecDir, when set, gets
	// the action decided (file KexecAfter) and, for kexec, the
	// installed system's kernel, initrd and command line, copied out
	// before the disk is unmounted (PrepareKexec): the installer's PID
	// 1 loads them then (sim.after=kexec).
	After    string
	KexecDir string
}

// StoreDir is the node's store inside the new root.
const StoreDir = "/var/lib/sim"

// Result is what a successful install did.
type Result struct {
	Disk      string        `json:"disk"`
	Parts     []disk.Part   `json:"partitions"`
	Bytes     int64         `json:"bytes"` // received from the server
	Elapsed   time.Duration `json:"elapsed_ns"`
	Installed Installed     `json:"installed"`
	// After is the after-install action decided; Kexec what it will
	// boot when that is kexec.
	After string     `json:"after,omitempty"`
	Kexec *BootEntry `json:"kexec,omitempty"`
}

type run struct {
	Options
	ctx   context.Context
	start time.Time
	mu    gosync.Mutex // step and bytes: the heartbeat reads them
	bytes int64
	step  string
}

func (r *run) setStep(step string) {
	r.mu.Lock()
	r.step = step
	r.mu.Unlock()
}

func (r *run) addBytes(n int64) {
	r.mu.Lock()
	r.bytes += n
	r.mu.Unlock()
}

// Heartbeat is how often a long step (fetch, checkout, GRUB) says it is
// still running, so a server can tell a slow node from a dead one.
var Heartbeat = 15 * time.Second

func (r *run) report(step, state, msg string) {
	r.mu.Lock()
	r.step = step
	bytes := r.bytes
	r.mu.Unlock()
	s := Status{Step: step, State: state, Message: msg, Bytes: bytes, Time: time.Now().UTC(),
		Elapsed: time.Since(r.start).Seconds()}
	if c := r.Config; c != nil {
		s.Node, s.MAC, s.Image = c.Node, c.MAC, c.Image
		if !c.Commit.IsZero() {
			s.Commit = c.Commit.String()
		}
	}
	if r.Log != nil {
		line := fmt.Sprintf("sim install: [%5.1fs] %s: %s", s.Elapsed, step, state)
		if msg != "" {
			line += ": " + msg
		}
		fmt.Fprintln(r.Log, line)
	}
	if r.Report != nil {
		r.Report(s)
	}
}

// Run installs. On any error it reports the failed step and returns an
// error naming it; the disk is then never marked installed (installed.json
// is written last, and removed again if unmounting fails).
func Run(ctx context.Context, o Options) (res *Result, err error) {
	r := &run{Options: o, ctx: ctx, start: time.Now()}
	if r.Target == "" {
		r.Target = "/run/sim/target"
	}
	if r.Log == nil {
		r.Log = io.Discard
	}
	var mounts []string
	release := func() {}
	beat := time.NewTicker(Heartbeat)
	stopBeat := make(chan struct{})
	beatDone := make(chan struct{})
	go func() {
		defer close(beatDone)
		for {
			select {
			case <-stopBeat:
				return
			case <-beat.C:
				r.mu.Lock()
				step := r.step
				r.mu.Unlock()
				r.report(step, Running, "still working")
			}
		}
	}()
	var once gosync.Once
	stopHeartbeat := func() {
		once.Do(func() { beat.Stop(); close(stopBeat); <-beatDone })
	}
	defer func() {
		// Stopped before the last report, so no "still working" can
		// follow a "failed" or "done".
		stopHeartbeat()
		if err != nil {
			disk.Unmount(mounts)
			release()
			err = fmt.Errorf("install failed at step %q: %w", r.step, err)
			r.report(r.step, Failed, err.Error())
		}
	}()
	c := r.Config
	if c == nil {
		r.setStep("config")
		return nil, errors.New("no install configuration")
	}
	r.report("start", Running, fmt.Sprintf("image %s (%s)", c.Image, c.Commit.Short()))

	// Layout and disk, checked before anything is written.
	r.setStep("layout")
	text := c.Layout
	if r.signed() {
		if text, err = r.beforeDisk(ctx); err != nil {
			return nil, err
		}
	}
	l, err := layout.Parse(text)
	if err != nil {
		return nil, fmt.Errorf("layout of %s: %w", c.Image, err)
	}
	// Every disk the layout names, found and planned before any is
	// touched; c.Disk and o.Disk name the first.
	var targets []target
	for i, ds := range l.AllDisks() {
		spec := ds.Spec
		if i == 0 && c.Disk != "" {
			spec = c.Disk
		}
		if i == 0 && o.Disk != "" {
			spec = o.Disk
		}
		where := "layout"
		if ds.Line > 0 {
			where = fmt.Sprintf("layout line %d", ds.Line)
		}
		d, err := disk.Find(spec)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		for _, t := range targets {
			if t.info.Path == d.Path {
				return nil, fmt.Errorf("%s: disk %s is %s, the disk of line %d too", where, spec, d.Path, t.stanza.Line)
			}
		}
		ext, err := ds.Plan(d.Path, d.Size)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		targets = append(targets, target{stanza: ds, info: d, ext: ext})
	}
	d := targets[0].info
	nparts := 0
	var paths []string
	for _, t := range targets {
		nparts += len(t.ext)
		paths = append(paths, fmt.Sprintf("%s (%d MiB)", t.info.Path, t.info.Size>>20))
	}
	r.report("layout", Running, fmt.Sprintf("disk %s, %d partitions", strings.Join(paths, ", disk "), nparts))

	// Pre-install scripts (check or wipe hardware) run before anything
	// is written: one failing leaves the disk as it was.
	if len(c.PreScripts) > 0 {
		r.setStep("pre-scripts")
		if err := r.preScripts(ctx, targets); err != nil {
			return nil, err
		}
	}

	r.setStep("partition")
	// Arrays and VGs of an earlier install a rescue system assembled
	// would hold the partitions busy.
	disk.Release(ctx, l, r.Log)
	var parts []disk.Part
	nkept := 0
	for _, t := range targets {
		// Partitions marked keep that the disk already has are placed
		// where they are and not formatted: a reinstall keeps /scratch.
		kept, err := disk.Kept(t.info, t.ext, t.stanza.Table)
		if err != nil {
			return nil, err
		}
		ps, err := disk.Partition(t.info, t.ext, t.stanza.Table)
		if err != nil {
			return nil, err
		}
		disk.MarkKept(ps, kept)
		nkept += len(kept)
		parts = append(parts, ps...)
		r.report("partition", Running, t.info.Path)
	}
	if !l.Simple() {
		// From here on the arrays and VGs are let go again whatever
		// happens (after unmounting), so the disks are free.
		release = func() { disk.Release(context.WithoutCancel(ctx), l, r.Log) }
		r.setStep("raid")
		arrays, err := disk.MakeArrays(ctx, l, parts, c.Hostname, r.Log)
		if err != nil {
			return nil, err
		}
		parts = append(parts, arrays...)
		if len(arrays) > 0 {
			r.report("raid", Running, fmt.Sprintf("%d md arrays", len(arrays)))
		}
		r.setStep("lvm")
		lvs, err := disk.MakeLVM(ctx, l, parts, r.Log)
		if err != nil {
			return nil, err
		}
		parts = append(parts, lvs...)
		if len(l.VGs) > 0 {
			r.report("lvm", Running, fmt.Sprintf("%d volume groups, %d logical volumes", len(l.VGs), len(lvs)))
		}
	}
	r.setStep("mkfs")
	// Kept arrays and LVs (assembled, activated) count with the kept
	// partitions.
	for _, p := range parts {
		if p.Kept && p.Kind != "" {
			nkept++
		}
	}
	for i := range parts {
		if err := disk.Mkfs(&parts[i]); err != nil {
			return nil, err
		}
	}
	if len(l.Subvols) > 0 {
		subs, err := disk.MakeSubvols(ctx, l, parts, r.Log)
		if err != nil {
			return nil, err
		}
		parts = append(parts, subs...)
	}
	r.report("mkfs", Running, fmt.Sprintf("%d kept", nkept))

	// Mount everything except FAT filesystems: the image's files there
	// (if any) cannot keep owners or modes, and GRUB writes the ESP itself.
	r.setStep("mount")
	if err := os.MkdirAll(r.Target, 0o755); err != nil {
		return nil, err
	}
	var fat []disk.Part
	excludes := []string{StoreDir}
	for _, p := range disk.MountOrder(parts) {
		if p.FS == layout.FSESP || p.FS == layout.FSVfat {
			fat = append(fat, p)
			excludes = append(excludes, p.Mount)
			continue
		}
		dir, err := disk.Mount(p, r.Target)
		if err != nil {
			return nil, err
		}
		mounts = append(mounts, dir)
		if p.Kept {
			// The checkout leaves a kept filesystem's files alone.
			excludes = append(excludes, p.Mount)
		}
		if p.FS.Ext() {
			excludes = append(excludes, strings.TrimSuffix(p.Mount, "/")+"/lost+found")
		}
	}
	r.report("mount", Running, r.Target)

	// The node store lives on the new root, so the node can update from
	// this base later; the image checkout leaves it alone.
	r.setStep("fetch")
	stDir := filepath.Join(r.Target, StoreDir)
	if err := store.Init(stDir); err != nil {
		return nil, fmt.Errorf("node store: %w", err)
	}
	st, err := store.Open(stDir)
	if err != nil {
		return nil, fmt.Errorf("node store: %w", err)
	}
	stOpen := true
	defer func() {
		if stOpen {
			st.Close()
		}
	}()
	if err := r.keep(st); err != nil {
		return nil, fmt.Errorf("node store: %w", err)
	}
	fetch := func(id chunk.ID) error {
		ps, err := r.Fetch(ctx, st, id)
		r.addBytes(ps.WireBytes)
		return err
	}
	if err := fetch(c.Commit); err != nil {
		return nil, fmt.Errorf("fetch %s: %w", c.Commit.Short(), err)
	}
	r.report("fetch", Running, fmt.Sprintf("%s received", fmtMB(r.bytes)))

	// The overrides are laid over the image's tree in the store, so one
	// checkout writes both, and the node's record (what an update and a
	// drift scan compare with) is exactly what is on its disk.
	r.setStep("overrides")
	for _, ov := range c.Overrides {
		if err := fetch(ov.Commit); err != nil {
			return nil, fmt.Errorf("override %s: fetch: %w", ov.Name, err)
		}
	}
	effective, err := Effective(st, c.Commit, c.Overrides, c.Hostname)
	if err != nil {
		return nil, err
	}
	if len(c.Overrides) > 0 {
		r.report("overrides", Running, fmt.Sprintf("%d laid over the image", len(c.Overrides)))
	}

	// A mount point the image lacks (a /data of the layout's own) would
	// be removed by the checkout as extraneous: leave it alone.
	if cm, err := st.Commit(effective); err == nil {
		for _, p := range parts {
			if p.FS.Mountable() && p.Mount != "/" && p.Mount != "" {
				if _, err := snapshot.Lookup(st, cm.Tree, p.Mount); err != nil {
					excludes = append(excludes, p.Mount)
				}
			}
		}
	}
	r.setStep("checkout")
	prog, stop := &snapshot.Progress{}, func() {}
	if r.ShowCheckout != nil {
		stop = r.ShowCheckout(prog)
	}
	cs, err := client.Checkout(ctx, st, effective, r.Target, client.CheckoutOptions{Exclude: excludes, Force: true, NoSync: true, Progress: prog,
		Verify: func(id chunk.ID) error { return CheckSigned(st, id, false) }})
	stop()
	if err != nil {
		return nil, err
	}
	r.report("checkout", Running, fmt.Sprintf("%d files written (%s)", cs.Written, fmtMB(cs.BytesWritten)))

	r.setStep("mount")
	for _, p := range fat {
		dir, err := disk.Mount(p, r.Target)
		if err != nil {
			return nil, err
		}
		mounts = append(mounts, dir)
	}

	r.setStep("configure")
	if err := configure(r.Target, c, parts); err != nil {
		return nil, err
	}
	if err := r.volumesConfig(l, parts); err != nil {
		return nil, err
	}
	boot, err := bootConfig(r.Target, parts)
	if err != nil {
		return nil, err
	}
	agent, err := installAgent(r.Target, o.Agent)
	if err != nil {
		return nil, err
	}
	msg := "hostname, network, fstab"
	if stack, _ := netcfg.Detect(r.Target); stack != "" && c.NetSpec().Managed() {
		msg = "hostname, network (" + stack + "), fstab"
	}
	if boot != "" {
		msg += ", " + boot
	}
	if agent {
		msg += ", sim agent"
	}
	r.report("configure", Running, msg)

	initramfs := len(l.RAIDs) > 0 || len(l.LVs) > 0
	needChroot := len(c.Scripts) > 0 || l.Bootloader == "grub" || initramfs
	var binds []string
	if needChroot {
		if binds, err = BindSystem(r.Target); err != nil {
			disk.Unmount(binds)
			return nil, err
		}
		mounts = append(mounts, binds...)
		linkByUUID(parts)
	}

	r.setStep("scripts")
	for _, s := range c.Scripts {
		if err := fetch(s.Commit); err != nil {
			return nil, fmt.Errorf("script %s: fetch: %w", s.Name, err)
		}
		body, err := catalog.ReadFile(st, s.Commit, catalog.ScriptFile)
		if err != nil {
			return nil, fmt.Errorf("script %s: %w", s.Name, err)
		}
		if err := r.runScript(s.Name, body); err != nil {
			return nil, err
		}
		r.report("scripts", Running, s.Name+" ok")
	}

	if initramfs {
		r.setStep("initramfs")
		if err := r.initramfs(l, parts); err != nil {
			return nil, err
		}
	}

	r.setStep("bootloader")
	if l.Bootloader == "grub" {
		if err := r.grub(targets, parts); err != nil {
			return nil, err
		}
		r.report("bootloader", Running, "GRUB installed")
	}
	disk.Unmount(binds)
	mounts = mounts[:len(mounts)-len(binds)]

	after, kx := r.after()

	// Record: the checkout record follows the root to "/", where the
	// node will see it after boot, then installed.json, last.
	r.setStep("record")
	if err := client.MoveRecord(st, r.Target, "/"); err != nil {
		return nil, err
	}
	if err := st.Close(); err != nil {
		return nil, fmt.Errorf("node store: %w", err)
	}
	stOpen = false
	inst := Installed{Node: c.Node, Image: c.Image, Commit: c.Commit, Effective: effective, Layout: c.LayoutID,
		Overrides: c.Overrides, Server: o.Server, Time: time.Now().UTC(), Disk: d.Path,
		Hostname: c.Hostname, MAC: c.MAC, IP: c.IP, Gateway: c.Gateway, Network: c.Network, Agent: agent}
	marker := InstalledPath(stDir)
	if err := WriteInstalled(stDir, &inst); err != nil {
		return nil, err
	}
	unix.Sync()
	if err := disk.Unmount(mounts); err != nil {
		// Remount the root to take the marker back: a disk that did not
		// unmount cleanly is not reported as installed.
		if root, ok := rootPart(parts); ok {
			if dir, merr := disk.Mount(root, r.Target); merr == nil {
				os.Remove(marker)
				disk.Unmount([]string{dir})
			}
		}
		mounts = nil
		return nil, err
	}
	mounts = nil
	if err := disk.Release(ctx, l, r.Log); err != nil {
		return nil, err
	}
	release = func() {}
	stopHeartbeat()
	r.report("done", Done, fmt.Sprintf("%s installed on %s in %.1fs, %s received", c.Commit.Short(), d.Path, time.Since(r.start).Seconds(), fmtMB(r.bytes)))
	return &Result{Disk: d.Path, Parts: parts, Bytes: r.bytes, Elapsed: time.Since(r.start), Installed: inst, After: after, Kexec: kx}, nil
}

// after decides the after-install action (the command line's, else the
// config's, else poweroff) and, for kexec, copies the installed
// system's boot entry out of the new root while it is mounted. A kexec
// that cannot be prepared becomes a firmware reboot, said on the
// console: the install itself is whole, and the disk boots.
func (r *run) after() (string, *BootEntry) {
	a := r.Options.After
	if a == "" && r.Config != nil {
		a = r.Config.After
	}
	if a == "" {
		a = AfterPoweroff
	}
	var e *BootEntry
	if a == AfterKexec {
		if r.KexecDir == "" {
			// By hand (no installer PID 1 to load it): nothing to do.
			fmt.Fprintln(r.Log, "sim install: kexec: only the netboot installer kexecs (sim.after=kexec); not kexecing")
		} else {
			var err error
			r.setStep("kexec")
			if e, err = PrepareKexec(r.Target, r.KexecDir); err != nil {
				fmt.Fprintf(r.Log, "sim install: kexec: %v; rebooting through the firmware instead\n", err)
				a = AfterReboot
			} else {
				r.report("kexec", Running, fmt.Sprintf("%s from %s: %s", strings.TrimPrefix(e.Kernel, r.Target), e.From, e.Cmdline))
			}
		}
	}
	if r.KexecDir != "" {
		if err := os.MkdirAll(r.KexecDir, 0o700); err == nil {
			os.WriteFile(filepath.Join(r.KexecDir, KexecAfter), []byte(a+"\n"), 0o644)
		}
	}
	return a, e
}

// signed says whether the node requires signed commits.
func (r *run) signed() bool { return r.RequireSignature || len(r.Trust) > 0 }

// trust sets the node's trust policy on st.
func (r *run) trust(st *store.Store) error {
	for _, k := range r.Trust {
		if err := st.TrustKey(k); err != nil {
			return err
		}
	}
	if !r.signed() {
		return nil
	}
	return st.SetRequireSignature(true)
}

// keep sets up the node's store: its trust policy, and the token and CA
// it will talk to its server with after the install.
func (r *run) keep(st *store.Store) error {
	if err := r.trust(st); err != nil {
		return err
	}
	if r.Token != "" {
		if err := store.WriteFileAtomic(filepath.Join(st.Dir(), TokenName), 0o600, func(w io.Writer) error {
			_, err := io.WriteString(w, r.Token+"\n")
			return err
		}); err != nil {
			return err
		}
	}
	if len(r.CA) > 0 {
		return store.WriteFileAtomic(filepath.Join(st.Dir(), CAName), 0o644, func(w io.Writer) error { _, err := w.Write(r.CA); return err })
	}
	return nil
}

// In the node's store directory (/var/lib/sim on the installed root),
// beside installed.json: the node's token (mode 0600) and its server's
// CA, for later updates and the node's agent.
const (
	TokenName = "token"
	CAName    = "ca.pem"
)

// beforeDisk checks, in a scratch store with the node's policy and
// before the disk is touched, that every commit of the install is
// signed: it fetches the layout commit (Config.LayoutID) and returns
// the layout it holds (the server's own copy in the config must be the
// same text: a server that says otherwise is lying), and asks Check
// about the image, the overrides and the scripts.
func (r *run) beforeDisk(ctx context.Context) (string, error) {
	c := r.Config
	dir, err := os.MkdirTemp("", "sim-layout-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	sd := filepath.Join(dir, "store")
	if err := store.Init(sd); err != nil {
		return "", err
	}
	st, err := store.Open(sd)
	if err != nil {
		return "", err
	}
	defer st.Close()
	if err := r.trust(st); err != nil {
		return "", err
	}
	if _, err := r.Fetch(ctx, st, c.LayoutID); err != nil {
		return "", fmt.Errorf("layout of %s (%s): %w", c.Image, c.LayoutID.Short(), err)
	}
	b, err := catalog.ReadFile(st, c.LayoutID, catalog.LayoutFile)
	if err != nil {
		return "", fmt.Errorf("layout of %s (%s): %w", c.Image, c.LayoutID.Short(), err)
	}
	if string(b) != c.Layout {
		return "", fmt.Errorf("layout of %s: the server's layout is not the one of its signed commit %s", c.Image, c.LayoutID.Short())
	}
	if r.Check != nil {
		if err := r.Check(ctx, st, c.Commit); err != nil {
			return "", fmt.Errorf("image %s (%s): %w", c.Image, c.Commit.Short(), err)
		}
		for _, d := range append(append(append([]Doc(nil), c.Overrides...), c.Scripts...), c.PreScripts...) {
			if err := r.Check(ctx, st, d.Commit); err != nil {
				return "", fmt.Errorf("%s (%s): %w", d.Name, d.Commit.Short(), err)
			}
		}
	}
	return string(b), nil
}

func rootPart(parts []disk.Part) (disk.Part, bool) {
	for _, p := range parts {
		if p.Mount == "/" {
			return p, true
		}
	}
	return disk.Part{}, false
}

func fmtMB(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }

// BindSystem makes /dev, /proc and /sys visible in the new root target for
// GRUB and the scripts; disk.Unmount undoes it.
func BindSystem(target string) ([]string, error) {
	var done []string
	for _, m := range []struct{ src, dst, fstype string }{
		{"/dev", "dev", ""}, {"proc", "proc", "proc"}, {"sysfs", "sys", "sysfs"},
	} {
		dst := filepath.Join(target, m.dst)
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return done, err
		}
		var err error
		if m.fstype == "" {
			err = unix.Mount(m.src, dst, "", unix.MS_BIND|unix.MS_REC, "")
		} else {
			err = unix.Mount(m.src, dst, m.fstype, 0, "")
		}
		if err != nil {
			return done, fmt.Errorf("mount %s on %s: %w", m.src, dst, err)
		}
		done = append(done, dst)
	}
	return done, nil
}

// linkByUUID creates /dev/disk/by-uuid links where no udev did: Debian's
// grub-mkconfig writes root=UUID=… only when that link exists.
func linkByUUID(parts []disk.Part) {
	os.MkdirAll("/dev/disk/by-uuid", 0o755)
	for _, p := range parts {
		if p.UUID == "" {
			continue
		}
		l := filepath.Join("/dev/disk/by-uuid", p.UUID)
		if _, err := os.Lstat(l); err != nil {
			os.Symlink(p.Dev, l)
		}
	}
}

// chroot runs a command in the new root with a clean environment.
func (r *run) chroot(env []string, args ...string) error {
	return Chroot(r.ctx, r.Target, env, r.Log, args...)
}

// Chroot runs args chrooted into root (directly when root is "/") with a
// clean environment plus env, its output to log (nil: nowhere). A failure
// is an error ending with the last 2000 bytes of the output.
func Chroot(ctx context.Context, root string, env []string, log io.Writer, args ...string) error {
	if log == nil {
		log = io.Discard
	}
	var cmd *exec.Cmd
	if abs, _ := filepath.Abs(root); abs == "/" {
		cmd = exec.CommandContext(ctx, args[0], args[1:]...)
	} else {
		cmd = exec.CommandContext(ctx, "chroot", append([]string{root}, args...)...)
	}
	cmd.Env = append([]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive"}, env...)
	cmd.WaitDelay = 5 * time.Second
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = io.MultiWriter(&out, log), io.MultiWriter(&out, log)
	if err := cmd.Run(); err != nil {
		tail := strings.TrimSpace(out.String())
		if len(tail) > 2000 {
			tail = "…" + tail[len(tail)-2000:]
		}
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, tail)
	}
	return nil
}

// runScript runs one post-install script in the new root; a non-zero exit
// aborts the install (SystemImager's rule).
func (r *run) runScript(name string, body []byte) error {
	rel := "/tmp/sim-post-install-" + name
	p := filepath.Join(r.Target, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o1777); err != nil {
		return err
	}
	if err := os.WriteFile(p, body, 0o755); err != nil {
		return err
	}
	defer os.Remove(p)
	c := r.Config
	env := []string{"SIM_NODE=" + c.Node, "SIM_HOSTNAME=" + c.Hostname, "SIM_IMAGE=" + c.Image,
		"SIM_COMMIT=" + c.Commit.String(), "SIM_MAC=" + c.MAC, "SIM_IP=" + c.IP}
	if err := r.chroot(env, rel); err != nil {
		return fmt.Errorf("post-install script %s: %w", name, err)
	}
	return nil
}

// preScripts fetches the pre-install scripts into a scratch store (the
// node store does not exist yet: its filesystem is not made) and runs
// each in the installer's own system, with the node's SIM_ variables and
// SIM_DISK, the (first) disk about to be partitioned, and SIM_DISKS, all
// of them, space-separated. A non-zero exit aborts the
// install before the disk is touched.
func (r *run) preScripts(ctx context.Context, targets []target) error {
	var all []string
	for _, t := range targets {
		all = append(all, t.info.Path)
	}
	dir, err := os.MkdirTemp("", "sim-pre-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	sd := filepath.Join(dir, "store")
	if err := store.Init(sd); err != nil {
		return err
	}
	st, err := store.Open(sd)
	if err != nil {
		return err
	}
	defer st.Close()
	if err := r.trust(st); err != nil {
		return err
	}
	c := r.Config
	for _, s := range c.PreScripts {
		ps, err := r.Fetch(ctx, st, s.Commit)
		r.addBytes(ps.WireBytes)
		if err != nil {
			return fmt.Errorf("pre-install script %s: fetch: %w", s.Name, err)
		}
		body, err := catalog.ReadFile(st, s.Commit, catalog.ScriptFile)
		if err != nil {
			return fmt.Errorf("pre-install script %s: %w", s.Name, err)
		}
		p := filepath.Join(dir, "pre-install-"+s.Name)
		if err := os.WriteFile(p, body, 0o755); err != nil {
			return err
		}
		cmd := exec.CommandContext(ctx, p)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "SIM_NODE="+c.Node, "SIM_HOSTNAME="+c.Hostname, "SIM_IMAGE="+c.Image,
			"SIM_COMMIT="+c.Commit.String(), "SIM_MAC="+c.MAC, "SIM_IP="+c.IP, "SIM_DISK="+all[0], "SIM_DISKS="+strings.Join(all, " "))
		out, err := cmd.CombinedOutput()
		if len(out) > 0 && r.Log != nil {
			fmt.Fprintf(r.Log, "%s", out)
		}
		if err != nil {
			tail := strings.TrimSpace(string(out))
			if len(tail) > 2000 {
				tail = "…" + tail[len(tail)-2000:]
			}
			return fmt.Errorf("pre-install script %s: %w: %s", s.Name, err, tail)
		}
		r.report("pre-scripts", Running, s.Name+" ok")
	}
	return nil
}

// grub installs GRUB from the image: for BIOS into the bios_grub
// partition's disk (on an msdos disk into the gap before its first
// partition), for UEFI onto the ESP at the removable-media path
// (EFI/BOOT/BOOTX64.EFI, so no NVRAM entry is needed and the disk boots in
// any UEFI machine), then writes grub.cfg with the image's grub-mkconfig.
func (r *run) grub(targets []target, parts []disk.Part) error {
	// BIOS GRUB goes on every disk with an msdos table or a bios_grub
	// partition: with the root mirrored, either disk boots.
	var bios []string
	esp := ""
	for _, t := range targets {
		on := t.stanza.Table == layout.TableMsdos
		for _, e := range t.ext {
			on = on || e.FS == layout.FSBiosGrub
		}
		if on {
			bios = append(bios, t.info.Path)
		}
	}
	for _, p := range parts {
		if p.FS == layout.FSESP && esp == "" {
			esp = p.Mount
		}
	}
	has := func(p string) bool { _, err := os.Stat(filepath.Join(r.Target, p)); return err == nil }
	// grub2-install, grub2-mkconfig and /boot/grub2 on RHEL-family images.
	grubInstall, grubMkconfig, grubCfg := GrubTools(r.Target)
	if grubInstall == "" {
		return errors.New("the image has neither grub-install nor grub2-install (Debian: install grub2-common and grub-pc-bin / grub-efi-amd64-bin in it; RHEL: grub2-tools and grub2-pc-modules / grub2-efi-x64-modules; or use 'bootloader none')")
	}
	if len(bios) == 0 && esp == "" {
		return errors.New("layout has neither a bios_grub nor an esp partition: GRUB has nowhere to go")
	}
	if len(bios) > 0 && !has("usr/lib/grub/i386-pc") {
		return errors.New("layout has a bios_grub partition or an msdos disk but the image lacks grub-pc-bin (/usr/lib/grub/i386-pc)")
	}
	for _, dev := range bios {
		if err := r.chroot(nil, grubInstall, "--target=i386-pc", dev); err != nil {
			return err
		}
	}
	if esp != "" {
		if !has("usr/lib/grub/x86_64-efi") {
			return errors.New("layout has an esp partition but the image lacks grub-efi-amd64-bin (/usr/lib/grub/x86_64-efi)")
		}
		if err := r.chroot(nil, grubInstall, "--target=x86_64-efi", "--efi-directory="+esp, "--removable", "--no-nvram"); err != nil {
			return err
		}
	}
	return r.chroot(nil, grubMkconfig, "-o", grubCfg)
}
