package auto

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	gosync "sync"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/systemimager/sim/chunk"
	simsync "github.com/systemimager/sim/sync"
)

func init() {
	simsync.RegisterTransport(simsync.TransportKind{
		Name: "auto",
		Help: "the server chooses http, bittorrent or multicast per fetch (how many nodes ask, the delta, its uplink)",
		Node: func() simsync.TransportConfig { return &nodeFlags{} },
		Serve: func() simsync.ServeConfig {
			return &serveFlags{}
		},
	})
}

// nodeFlags is a node's --auto-* options.
type nodeFlags struct {
	expect int
}

func (n *nodeFlags) Flags(f *pflag.FlagSet) {
	f.IntVar(&n.expect, "auto-nodes", 0, "transport auto: `N` nodes are fetching this commit together (a rollout's wave, a rack's install): the server answers as soon as N asked")
}

func (n *nodeFlags) Open(_ context.Context, env simsync.TransportEnv) (simsync.Transport, error) {
	if n.expect < 0 {
		return nil, &simsync.FlagError{Flag: "auto-nodes", Value: strconv.Itoa(n.expect), Err: errors.New("want 0 or more")}
	}
	if env.Open == nil {
		return nil, errors.New("transport auto: opened without the other transports")
	}
	return &Node{env: env, expect: n.expect}, nil
}

// Node is the node side: it asks, opens the transport the server named,
// and hands it the fetch.
type Node struct {
	env    simsync.TransportEnv
	expect int

	mu     gosync.Mutex
	chosen simsync.Transport
	advice Advice
	// reported is closed once the cost report (if any) was sent.
	reported chan struct{}
}

// Report is what --json shows of the choice.
type Report struct {
	Chosen    string             `json:"chosen"`
	Reason    string             `json:"reason"`
	Nodes     int                `json:"nodes"`
	Predicted map[string]float64 `json:"predicted_seconds,omitempty"`
}

// Deliver asks the server which transport to use and lets it deliver. A
// server without the advisor (older, or --no-auto) means HTTP.
func (n *Node) Deliver(ctx context.Context, want chunk.ID, haves []chunk.ID, sink *simsync.Sink) (simsync.Delivery, error) {
	adv, err := n.ask(ctx, want, haves)
	if err != nil {
		if ctx.Err() != nil {
			return simsync.Delivery{}, ctx.Err()
		}
		adv = Advice{Choice: Choice{Transport: HTTP, Reason: "no advice from the server (" + err.Error() + ")"}}
	}
	t, err := n.env.Open(ctx, adv.Transport)
	if err != nil {
		if adv.Transport == HTTP {
			return simsync.Delivery{}, err
		}
		adv.Reason = fmt.Sprintf("%s chosen but not usable here (%v): http", adv.Transport, err)
		adv.Transport = HTTP
		if t, err = n.env.Open(ctx, HTTP); err != nil {
			return simsync.Delivery{}, err
		}
	}
	n.mu.Lock()
	n.chosen, n.advice = t, adv
	n.mu.Unlock()
	if n.env.Log != nil && !n.env.JSON {
		fmt.Fprintf(n.env.Log, "transport auto: %s (%s)\n", adv.Transport, adv.Reason)
	}
	cpu0, measured := processCPU()
	d, err := t.Deliver(ctx, want, haves, sink)
	if cpu1, ok := processCPU(); err == nil && measured && ok && adv.Bytes > 0 {
		n.report(ctx, CostReport{Transport: adv.Transport, Bytes: adv.Bytes, CPUSeconds: max(cpu1-cpu0, 0), Node: n.env.Name})
	}
	d.Report = simsync.ChosenReport{Choice: Report{Chosen: adv.Transport, Reason: adv.Reason, Nodes: adv.Nodes, Predicted: adv.Predicted}, Inner: d.Report}
	return d, err
}

func (n *Node) ask(ctx context.Context, want chunk.ID, haves []chunk.ID) (Advice, error) {
	q := "?want=" + want.String()
	if len(haves) > 0 {
		hs := make([]string, len(haves))
		for i, h := range haves {
			hs[i] = h.String()
		}
		q += "&have=" + strings.Join(hs, ",")
	}
	if n.env.Name != "" {
		q += "&node=" + n.env.Name
	}
	if n.expect > 0 {
		q += "&expect=" + strconv.Itoa(n.expect)
	}
	var adv Advice
	if err := n.env.Remote.PostJSON(ctx, AdvicePath+q, nil, &adv); err != nil {
		var he *simsync.HTTPError
		if errors.As(err, &he) && (he.Code == http.StatusNotFound || he.Code == http.StatusMethodNotAllowed) {
			return Advice{}, errors.New("it runs no advisor")
		}
		return Advice{}, err
	}
	switch adv.Transport {
	case HTTP, Multicast, BitTorrent:
	default:
		return Advice{}, fmt.Errorf("it advised %q, which this sim does not know", adv.Transport)
	}
	return adv, nil
}

// reportTimeout bounds the cost report: it is advice for the server, not
// part of the fetch.
const reportTimeout = 5 * time.Second

// report tells the server what the fetch cost this node's CPU, in the
// background (Finish waits for it). Its bytes are the advice's (what the
// node lacked: the unit of the model's F); a fetch under MinReportBytes
// is not reported (fixed costs dominate it). A failure is said, not an
// error of the fetch.
func (n *Node) report(ctx context.Context, rep CostReport) {
	if rep.Bytes < MinReportBytes {
		return
	}
	done := make(chan struct{})
	n.mu.Lock()
	n.reported = done
	n.mu.Unlock()
	go func() {
		defer close(done)
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), reportTimeout)
		defer cancel()
		err := n.env.Remote.PostJSON(ctx, ReportPath, rep, nil)
		var he *simsync.HTTPError
		if errors.As(err, &he) && (he.Code == http.StatusNotFound || he.Code == http.StatusMethodNotAllowed) {
			return // an advisor older than the reports
		}
		if err != nil && n.env.Log != nil && !n.env.JSON {
			fmt.Fprintf(n.env.Log, "transport auto: reporting the fetch's cost: %v\n", err)
		}
	}()
}

// processCPU is the CPU time (user+sys) the process has used, in
// seconds; ok false when the system would not say.
func processCPU() (seconds float64, ok bool) {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds(), true
}

// Finish waits for the cost report and finishes the chosen transport.
func (n *Node) Finish(ctx context.Context) error {
	n.mu.Lock()
	t, reported := n.chosen, n.reported
	n.mu.Unlock()
	if reported != nil {
		select {
		case <-reported:
		case <-ctx.Done():
		}
	}
	if t == nil {
		return nil
	}
	return t.Finish(ctx)
}

// String is the chosen transport's name once Deliver chose, so a fetch's
// figures say what carried the objects.
func (n *Node) String() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.chosen == nil {
		return "auto"
	}
	return n.chosen.String()
}
