package fleet

import (
	gosync "sync"
	"time"
)

// Event is one change: of a node (Node is its new state) or of a rollout.
type Event struct {
	// Seq numbers the hub's events from 1; Time is when it was published.
	Seq     uint64        `json:"seq"`
	Time    time.Time     `json:"time"`
	Type    string        `json:"type"` // "node" or "rollout"
	Node    *NodeState    `json:"node,omitempty"`
	Rollout *RolloutEvent `json:"rollout,omitempty"`
	// Missed is how many events this subscriber lost just before this
	// one (it was too slow): it should take a fresh snapshot (Nodes).
	Missed uint64 `json:"missed,omitempty"`
}

// RolloutEvent is a change of a rollout: its state, or one of its nodes'.
type RolloutEvent struct {
	ID     string `json:"id"`
	State  string `json:"state"`
	Commit string `json:"commit,omitempty"`
	// Node and NodeState when the change is a node's in this rollout.
	Node      string `json:"node,omitempty"`
	NodeState string `json:"node_state,omitempty"`
	Message   string `json:"message,omitempty"`
}

// Hub fans events out to subscribers. Publishing never blocks: a
// subscriber whose buffer is full loses the event, and learns how many it
// lost from the next one it gets (Event.Missed).
type Hub struct {
	mu   gosync.Mutex
	seq  uint64
	subs map[*Subscription]struct{}
	// recent holds the last HubHistory events (a ring, oldest at
	// recent[next] once full): what a client reconnecting with the last
	// sequence number it saw missed meanwhile.
	recent []Event
	next   int
}

// HubHistory is how many past events a Hub keeps for SubscribeAfter: a
// minute of 1,000 nodes reporting every 10 s, with room to spare.
const HubHistory = 8192

// Subscription is one subscriber's stream of events.
type Subscription struct {
	// C delivers the events, in order; it is closed by Close.
	C      <-chan Event
	c      chan Event
	hub    *Hub
	missed uint64
}

// Subscribe starts a subscription buffering up to buffer events (at
// least 1).
func (h *Hub) Subscribe(buffer int) *Subscription {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.subscribe(buffer)
}

func (h *Hub) subscribe(buffer int) *Subscription {
	if buffer < 1 {
		buffer = 1
	}
	c := make(chan Event, buffer)
	s := &Subscription{C: c, c: c, hub: h}
	if h.subs == nil {
		h.subs = map[*Subscription]struct{}{}
	}
	h.subs[s] = struct{}{}
	return s
}

// SubscribeAfter subscribes like Subscribe and, in the same step (no event
// falls between), returns the kept events numbered after seq: what a
// subscriber that saw seq last missed. ok is false when the hub no longer
// holds all of them, or never numbered seq (another server's): take a
// snapshot instead.
func (h *Hub) SubscribeAfter(seq uint64, buffer int) (s *Subscription, missed []Event, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s = h.subscribe(buffer)
	if seq > h.seq {
		return s, nil, false
	}
	n := int(h.seq - seq)
	if n > len(h.recent) {
		return s, nil, false
	}
	missed = make([]Event, 0, n)
	for i := len(h.recent) - n; i < len(h.recent); i++ {
		missed = append(missed, h.recent[(h.next+i)%len(h.recent)])
	}
	return s, missed, true
}

// Seq is the number of the last event published (0: none yet).
func (h *Hub) Seq() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.seq
}

// Close ends the subscription and closes C.
func (s *Subscription) Close() {
	h := s.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.subs[s]; ok {
		delete(h.subs, s)
		close(s.c)
	}
}

// Publish stamps e with the next sequence number and the time, and hands
// it to every subscriber that has room.
func (h *Hub) Publish(e Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seq++
	e.Seq, e.Time = h.seq, time.Now().UTC()
	if len(h.recent) < HubHistory {
		h.recent = append(h.recent, e)
	} else {
		h.recent[h.next] = e
		h.next = (h.next + 1) % HubHistory
	}
	for s := range h.subs {
		ev := e
		ev.Missed = s.missed
		select {
		case s.c <- ev:
			s.missed = 0
		default:
			s.missed++
		}
	}
}
