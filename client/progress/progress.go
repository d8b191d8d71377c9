// Package progress shows how far a long piece of work has come, on a
// terminal: a bar drawn in place by mpb (github.com/vbauerster/mpb, the
// one progress library of sim's commands) with bytes done (of the
// total, when known), items, rate and elapsed time. Off a terminal it
// draws nothing: logs and pipes get each command's own summary line.
package progress

import (
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"

	"github.com/systemimager/sim/sync/units"
)

// Figures are where the work is: Bytes done of Total (0: not known),
// Items (files, objects) done.
type Figures struct {
	Bytes, Total, Items int64
}

// Counter is what work updates as it goes, from any goroutine.
type Counter struct {
	Bytes, Total, Items atomic.Int64
}

// Figures reads c.
func (c *Counter) Figures() Figures {
	return Figures{Bytes: c.Bytes.Load(), Total: c.Total.Load(), Items: c.Items.Load()}
}

// Terminal is where a bar is drawn: Out, a terminal Cols wide (0: ask
// it, when Out is one). A command forwarded to sim serve draws into the
// stream to its own terminal, which the server only knows the width of.
type Terminal struct {
	Out  io.Writer
	Cols int
}

// Show draws the work that read reports, as name (items counted in
// itemUnit: "files", "objects"; "" shows none), until the returned stop
// is called; stop removes the bar, so the command's summary takes its
// place; calling it again does nothing. read is called from another goroutine, several times a second.
func Show(t Terminal, name, itemUnit string, read func() Figures) (stop func()) {
	start := time.Now()
	opts := []mpb.ContainerOption{mpb.WithOutput(t.Out), mpb.WithRefreshRate(150 * time.Millisecond)}
	if t.Cols > 0 {
		opts = append(opts, mpb.ForceTTY(), mpb.WithAutoRefresh(), mpb.WithWidth(t.Cols))
	}
	p := mpb.New(opts...)
	// The total is often unknown (a commit walks a tree it has not
	// measured): then a spinner, and the counts beside it.
	f := read()
	var b *mpb.Bar
	counts := decor.Any(func(decor.Statistics) string {
		f := read()
		s := units.Bytes(f.Bytes)
		if f.Total > 0 {
			s += " / " + units.Bytes(f.Total)
		}
		if itemUnit != "" {
			s += fmt.Sprintf(", %d %s", f.Items, itemUnit)
		}
		if secs := time.Since(start).Seconds(); secs > 0.5 {
			s += ", " + units.PerSecond(float64(f.Bytes)/secs)
		}
		return s
	}, decor.WCSyncSpaceR)
	prepend := []decor.Decorator{decor.Name(name+":", decor.WCSyncSpaceR)}
	if f.Total > 0 {
		prepend = append(prepend, decor.Percentage(decor.WCSyncSpace))
	}
	bopts := []mpb.BarOption{
		mpb.PrependDecorators(prepend...),
		mpb.AppendDecorators(counts, decor.Elapsed(decor.ET_STYLE_GO, decor.WCSyncSpace)),
		mpb.BarRemoveOnComplete(),
	}
	if f.Total > 0 {
		b = p.New(f.Total, mpb.BarStyle(), append(bopts, mpb.BarWidth(30))...)
	} else {
		b = p.New(0, mpb.SpinnerStyle(), append(bopts, mpb.BarWidth(1))...)
	}
	done := make(chan struct{})
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				f := read()
				if f.Total > 0 {
					b.SetTotal(f.Total, false)
				}
				b.SetCurrent(f.Bytes)
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(done)
			<-polled
			b.Abort(true) // drop it: the summary follows
			p.Wait()
		})
	}
}
