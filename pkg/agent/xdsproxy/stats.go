package xdsproxy

import (
	"sync"
	"sync/atomic"
)

// stats counts streams and per-type traffic for Acked and Status.
type stats struct {
	mu     sync.Mutex
	seq    uint64
	active int
	types  map[string]*TypeStats
}

// open registers a new stream, held by one goroutine until streamRef.hold adds another.
func (s *stats) open() *streamRef {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	s.active++
	r := &streamRef{s: s, id: s.seq}
	r.n.Store(1)
	return r
}

func (s *stats) closed() {
	s.mu.Lock()
	s.active--
	s.mu.Unlock()
}

func (s *stats) typ(typeURL string) *TypeStats {
	t := s.types[typeURL]
	if t == nil {
		t = &TypeStats{}
		s.types[typeURL] = t
	}
	return t
}

func (s *stats) response(typeURL string) {
	s.mu.Lock()
	s.typ(typeURL).Responses++
	s.mu.Unlock()
}

// request counts r as an ACK or NACK; a request without a response nonce is a subscription change (or a
// stream's first request), neither.
func (s *stats) request(r ackInfo) {
	if r.nonce == "" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.nack {
		s.typ(r.typeURL).NACKs++
		return
	}
	s.typ(r.typeURL).ACKs++
}

func (s *stats) acked(typeURL string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.types[typeURL]
	return t != nil && t.ACKs > 0
}

func (s *stats) snapshot() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := Status{ActiveStreams: s.active, Types: make(map[string]TypeStats, len(s.types))}
	for k, v := range s.types {
		out.Types[k] = *v
	}
	return out
}

// streamRef counts the goroutines serving one stream (the handler and the request pump): the stream stays
// active until the last of them is done, so the count going to zero means nothing of it is left running.
type streamRef struct {
	s  *stats
	id uint64
	n  atomic.Int32
}

func (r *streamRef) hold() { r.n.Add(1) }

func (r *streamRef) release() {
	if r.n.Add(-1) == 0 {
		r.s.closed()
	}
}
