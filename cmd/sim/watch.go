package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/systemimager/sim/client/fleet"
	"github.com/systemimager/sim/client/rollout"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/sync/units"
)

// The live terminal views (sim nodes --watch, sim rollout status
// --watch): on a terminal a screen redrawn in place from its top left,
// like top; elsewhere a line per change, so that a log or a pipe gets
// what happened and nothing else.

// screen redraws a whole view in place on a terminal.
type screen struct {
	w          io.Writer
	cols, rows int
	started    bool
}

func newScreen(w io.Writer, t terminal) *screen {
	return &screen{w: w, cols: t.Cols, rows: t.Rows}
}

// draw replaces what the screen shows with lines, cut to the terminal's
// width and height (the last line then says how many are hidden).
func (s *screen) draw(lines []string) {
	var b strings.Builder
	if !s.started {
		b.WriteString("\033[?25l\033[H\033[2J") // hide the cursor, clear
		s.started = true
	} else {
		b.WriteString("\033[H")
	}
	if s.rows > 1 && len(lines) > s.rows-1 {
		hidden := len(lines) - (s.rows - 2)
		lines = append(lines[:s.rows-2:s.rows-2], fmt.Sprintf("… %d more lines (a taller terminal shows them)", hidden))
	}
	for _, l := range lines {
		b.WriteString(cut(l, s.cols))
		b.WriteString("\033[K\n")
	}
	b.WriteString("\033[J")
	io.WriteString(s.w, b.String())
}

// close gives the cursor back; the last frame stays on the terminal.
func (s *screen) close() {
	if s.started {
		io.WriteString(s.w, "\033[?25h")
	}
}

// cut shortens l to cols visible characters, skipping the colour
// sequences (ESC [ ... m) when it counts.
func cut(l string, cols int) string {
	if cols <= 0 {
		return l
	}
	n := 0
	for i := 0; i < len(l); {
		if l[i] == '\033' {
			j := strings.IndexByte(l[i:], 'm')
			if j < 0 {
				return l[:i]
			}
			i += j + 1
			continue
		}
		if n == cols {
			return l[:i] + "\033[0m"
		}
		_, size := utf8.DecodeRuneInString(l[i:])
		i += size
		n++
	}
	return l
}

// stateColour is the colour a state is drawn in: an admin sees at a
// glance which nodes are busy, broken or gone.
func stateColour(state string) string {
	switch {
	case strings.HasPrefix(state, fleet.Failed), strings.HasPrefix(state, fleet.RolledBack):
		return "\033[1;31m" // bold red
	case strings.HasPrefix(state, fleet.Installing), strings.HasPrefix(state, fleet.Updating), strings.HasPrefix(state, fleet.Partial):
		return "\033[33m" // yellow
	case strings.HasPrefix(state, fleet.Idle):
		return "\033[32m" // green
	}
	return "\033[2m" // dim: offline, unknown
}

// esc wraps a terminal sequence for tabwriter.StripEscape: it then takes
// no width in the columns.
func esc(seq string) string { return "\xff" + seq + "\xff" }

// bar draws done of total in width cells.
func bar(done, total int64, width int) string {
	if total <= 0 {
		return strings.Repeat("·", width)
	}
	f := min(max(float64(done)/float64(total), 0), 1)
	n := int(f*float64(width) + 0.5)
	return strings.Repeat("█", n) + strings.Repeat("░", width-n)
}

// progressOf is a node's transfer as a live view shows it.
func progressOf(s fleet.NodeState) string {
	switch {
	case s.Total > 0:
		return fmt.Sprintf("%s %3.0f%% %s/%s", bar(s.Bytes, s.Total, 10), 100*float64(s.Bytes)/float64(s.Total), units.Bytes(s.Bytes), units.Bytes(s.Total))
	case s.Bytes > 0:
		return units.Bytes(s.Bytes)
	}
	return "-"
}

// nodesFrame is the live view of the fleet at now.
func nodesFrame(rows []nodeRow, running []*rollout.Rollout, now time.Time) []string {
	count := map[string]int{}
	for _, r := range rows {
		count[r.State]++
	}
	var parts []string
	for _, s := range []string{fleet.Installing, fleet.Updating, fleet.Failed, fleet.RolledBack, fleet.Partial, fleet.Idle, fleet.Offline, fleet.Unknown} {
		if count[s] > 0 {
			parts = append(parts, esc(stateColour(s))+fmt.Sprintf("%d %s", count[s], s)+esc("\033[0m"))
		}
	}
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', tabwriter.StripEscape)
	fmt.Fprintf(tw, "%s  %d nodes: %s\n", now.Format("15:04:05"), len(rows), strings.Join(parts, ", "))
	for _, r := range running {
		fmt.Fprintf(tw, "rollout %s\n", summary(r))
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "NODE\tGROUPS\tSTATE\tPHASE\tPROGRESS\tRATE\tVIA\tASSIGNED\tCURRENT\tLAST SEEN\tDRIFT\tERROR")
	for _, r := range rows {
		rate := "-"
		if r.live.Rate > 0 {
			rate = units.PerSecond(r.live.Rate)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, dash(strings.Join(r.Groups, ",")),
			esc(stateColour(r.State))+r.state()+esc("\033[0m"), dash(r.live.Phase), progressOf(r.live), rate, dash(r.live.Transport),
			dash(short8(r.Assigned)), dash(r.current()), r.seen(now), r.drift(), dash(firstLineOf(r.LastError)))
	}
	tw.Flush()
	return strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
}

// nodeLine is a node as one line of the plain (not a terminal) view:
// what changes when the node does, and not its age, which changes every
// second.
func nodeLine(r nodeRow) string {
	l := fmt.Sprintf("%s %s", r.Name, r.state())
	if r.live.Phase != "" {
		l += " " + r.live.Phase
	}
	if p := progressOf(r.live); p != "-" && (r.State == fleet.Installing || r.State == fleet.Updating) {
		l += " " + strings.TrimLeft(p, "█░ ")
	}
	if r.live.Transport != "" {
		l += " via " + r.live.Transport
	}
	l += fmt.Sprintf(" current %s assigned %s drift %s", dash(short8(r.Current)), dash(short8(r.Assigned)), r.drift())
	if r.LastError != "" {
		l += ": " + firstLineOf(r.LastError)
	}
	return l
}

// runningRollouts are the rollouts not yet ended, oldest first.
func runningRollouts(st *store.Store, eng *rollout.Engine) []*rollout.Rollout {
	all, err := rollout.List(st.Dir())
	if err != nil {
		return nil
	}
	var out []*rollout.Rollout
	for _, r := range all {
		if r.State == rollout.Done || r.State == rollout.Aborted {
			continue
		}
		if eng != nil {
			if lr, err := eng.Get(r.ID); err == nil {
				r = lr
			}
		}
		out = append(out, r)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out
}

// watchNodes is sim nodes --watch: until ctx ends (Ctrl-C), the nodes
// live. Inside sim serve it wakes on the fleet's events (a burst of them
// is one redraw); without a server it reads what the store last knew
// every 2 s.
func (e *env) watchNodes(ctx context.Context, st *store.Store) error {
	t := e.terminalOf()
	var events <-chan fleet.Event
	if f := e.fleet(); f != nil {
		sub := f.Hub().Subscribe(1024)
		defer sub.Close()
		events = sub.C
	}
	every := time.Second // last-seen ages move
	if events == nil {
		every = 2 * time.Second
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	var scr *screen
	if t.Stdout {
		scr = newScreen(e.stdout, t)
		defer scr.close()
	}
	shown := map[string]string{}
	show := func() error {
		rows, _, err := e.nodeRows(st)
		if err != nil {
			return err
		}
		now := time.Now()
		if scr != nil {
			scr.draw(nodesFrame(rows, runningRollouts(st, e.engine()), now))
			return nil
		}
		for _, r := range rows {
			if l := nodeLine(r); shown[r.Name] != l {
				fmt.Fprintf(e.stdout, "%s %s\n", now.Format("15:04:05"), l)
				shown[r.Name] = l
			}
		}
		return nil
	}
	if err := show(); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil // Ctrl-C is how a watch ends
		case <-events:
			// Coalesce a burst (a wave's nodes reporting together) into
			// one redraw, at most ten a second.
			coalesce := time.NewTimer(100 * time.Millisecond)
		drain:
			for {
				select {
				case <-events:
				case <-coalesce.C:
					break drain
				case <-ctx.Done():
					coalesce.Stop()
					return nil
				}
			}
		case <-tick.C:
			if scr == nil && events != nil {
				continue // plain lines only change with events
			}
		}
		if err := show(); err != nil {
			return err
		}
	}
}
