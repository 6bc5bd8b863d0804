package main

import (
	"context"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"sync"
)

// Type URLs the double subscribes to.
const (
	clusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	listenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"
)

// Envoy's server.state values.
const (
	stateLive            = 0
	statePreInitializing = 2
)

// state is what the admin API reports: xDS progress and drain requests.
type state struct {
	mu       sync.Mutex
	acked    map[string]int
	draining bool
	// drains counts /drain_listeners calls; gracefulInbound those that asked for both graceful and inboundonly,
	// which is what the agent must send on termination.
	drains, gracefulInbound int
}

func (s *state) ack(typeURL string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.acked == nil {
		s.acked = map[string]int{}
	}
	s.acked[typeURL]++
}

// live mirrors Envoy: initialization ends once the first CDS and LDS updates were applied.
func (s *state) live() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.liveLocked()
}

func (s *state) liveLocked() bool { return s.acked[clusterType] > 0 && s.acked[listenerType] > 0 }

// stats returns Envoy stat names and values.
func (s *state) stats() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	serverState := statePreInitializing
	if s.liveLocked() {
		serverState = stateLive
	}
	draining := 0
	if s.draining {
		draining = 1
	}
	return map[string]int{
		"cluster_manager.cds.update_success":        s.acked[clusterType],
		"cluster_manager.cds.update_rejected":       0,
		"listener_manager.lds.update_success":       s.acked[listenerType],
		"listener_manager.lds.update_rejected":      0,
		"listener_manager.total_listeners_draining": draining,
		"server.state":                                     serverState,
		"proxydouble.drain_listeners.total":                s.drains,
		"proxydouble.drain_listeners.graceful_inboundonly": s.gracefulInbound,
	}
}

func (s *state) adminMux(quit context.CancelFunc) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, r *http.Request) {
		if s.live() {
			fmt.Fprintln(w, "LIVE")
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "PRE_INITIALIZING")
	})
	mux.HandleFunc("GET /stats", s.handleStats)
	mux.HandleFunc("GET /stats/prometheus", s.handlePrometheus)
	mux.HandleFunc("POST /drain_listeners", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		s.mu.Lock()
		s.draining = true
		s.drains++
		if q.Has("graceful") && q.Has("inboundonly") {
			s.gracefulInbound++
		}
		s.mu.Unlock()
		fmt.Fprintln(w, "OK")
	})
	mux.HandleFunc("POST /quitquitquit", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "OK")
		quit()
	})
	return mux
}

// handleStats writes "name: value" lines like Envoy's /stats, honouring its filter regex.
func (s *state) handleStats(w http.ResponseWriter, r *http.Request) {
	var filter *regexp.Regexp
	if f := r.URL.Query().Get("filter"); f != "" {
		var err error
		if filter, err = regexp.Compile(f); err != nil {
			http.Error(w, "Invalid re2 regex", http.StatusBadRequest)
			return
		}
	}
	stats := s.stats()
	names := make([]string, 0, len(stats))
	for n := range stats {
		if filter == nil || filter.MatchString(n) {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "%s: %d\n", n, stats[n])
	}
}

// handlePrometheus writes the stats in Prometheus text format with Envoy's naming (envoy_ prefix, dots to
// underscores); gauges and counters are told apart as Envoy does for these stats.
func (s *state) handlePrometheus(w http.ResponseWriter, r *http.Request) {
	stats := s.stats()
	names := make([]string, 0, len(stats))
	for n := range stats {
		names = append(names, n)
	}
	sort.Strings(names)
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	for _, n := range names {
		typ := "counter"
		if n == "server.state" || strings.HasPrefix(n, "listener_manager.total_") {
			typ = "gauge"
		}
		name := "envoy_" + strings.NewReplacer(".", "_").Replace(n)
		fmt.Fprintf(w, "# TYPE %s %s\n%s %d\n", name, typ, name, stats[n])
	}
}
