// Package status is the agent's status server (port 15020, like pilot-agent's): the pod's readiness, the merged
// Prometheus scrape of proxy, agent and app, the kubelet's rewritten app probes, and a few local-only operator
// endpoints. It deliberately never forwards to the proxy's admin API, which would expose secrets and config.
package status

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DefaultAddr is pilot-agent's status port.
const DefaultAddr = ":15020"

// adminTimeout bounds each call to the proxy's admin API: readiness probes have short timeouts of their own.
const adminTimeout = time.Second

// Options configure the status server.
type Options struct {
	// Addr is where to listen; "" means DefaultAddr.
	Addr string
	// AdminAddr is the proxy's admin address ("127.0.0.1:15000"); "" in proxyless mode.
	AdminAddr string
	// PrometheusAddr is the proxy's Prometheus listener ("127.0.0.1:15090"); "" in proxyless mode.
	PrometheusAddr string
	// Ready is the agent's own readiness (e.g. the first CDS and LDS ACKed through the XDS proxy); nil means
	// always ready.
	Ready func() error
	// AppProbes is ISTIO_KUBE_APP_PROBERS: the app's probes by the path the injector rewrote them to.
	AppProbes string
	// AppMetrics is ISTIO_PROMETHEUS_ANNOTATIONS: where to scrape the app, e.g.
	// {"scrape":"true","path":"/metrics","port":"9090"}.
	AppMetrics string
	// AgentMetrics is the agent's own registry, merged into /stats/prometheus; nil means none.
	AgentMetrics prometheus.Gatherer
	// NDSZ returns the body of /debug/ndsz (the DNS proxy's name table); nil serves 404.
	NDSZ func() any
	// OnQuit is called, in its own goroutine, on POST /quitquitquit; nil serves 404.
	OnQuit func()
	Logger *slog.Logger
}

// Server is the status server.
type Server struct {
	opts    Options
	log     *slog.Logger
	ln      net.Listener
	srv     *http.Server
	admin   *http.Client
	probes  map[string]*appProbe
	metrics *scraper
}

// New validates the options and binds the listener, so Addr is known before Serve.
func New(opts Options) (*Server, error) {
	if opts.Addr == "" {
		opts.Addr = DefaultAddr
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	log := opts.Logger.With("component", "status")
	probes, err := parseProbes(opts.AppProbes)
	if err != nil {
		return nil, err
	}
	metrics, err := newScraper(opts, log)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("status server: listen on %s: %w", opts.Addr, err)
	}
	s := &Server{
		opts:    opts,
		log:     log,
		ln:      ln,
		admin:   &http.Client{Timeout: adminTimeout},
		probes:  probes,
		metrics: metrics,
	}
	s.srv = &http.Server{Handler: s.mux(), ReadHeaderTimeout: 10 * time.Second}
	return s, nil
}

// Addr is the bound address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve serves until ctx is done, then shuts down gracefully.
func (s *Server) Serve(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	s.log.Info("status server listening", "addr", s.Addr().String())
	select {
	case err := <-errc:
		return fmt.Errorf("status server: %w", err)
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(shutdown); err != nil {
		return fmt.Errorf("status server shutdown: %w", err)
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("status server: %w", err)
	}
	return nil
}

func (s *Server) mux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz/ready", s.handleReady)
	mux.HandleFunc("GET /stats/prometheus", s.metrics.handle)
	mux.HandleFunc("GET /app-health/", s.handleAppProbe)
	if s.opts.OnQuit != nil {
		mux.HandleFunc("POST /quitquitquit", localOnly(s.handleQuit))
	}
	if s.opts.NDSZ != nil {
		mux.HandleFunc("GET /debug/ndsz", s.handleNDSZ)
	}
	mux.HandleFunc("/debug/pprof/", localOnly(pprof.Index))
	mux.HandleFunc("/debug/pprof/cmdline", localOnly(pprof.Cmdline))
	mux.HandleFunc("/debug/pprof/profile", localOnly(pprof.Profile))
	mux.HandleFunc("/debug/pprof/symbol", localOnly(pprof.Symbol))
	mux.HandleFunc("/debug/pprof/trace", localOnly(pprof.Trace))
	return mux
}

// localOnly refuses requests from outside the pod: these endpoints stop the agent or expose its internals.
func localOnly(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
			http.Error(w, "only requests from localhost are allowed", http.StatusForbidden)
			return
		}
		h(w, r)
	}
}

func (s *Server) handleReady(w http.ResponseWriter, r *http.Request) {
	if err := s.checkReady(r.Context()); err != nil {
		s.log.Debug("not ready", "err", err)
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.WriteHeader(http.StatusOK)
}

// checkReady is the agent's readiness and then the proxy's: Envoy reports LIVE only once its initial config
// (CDS, then LDS) is applied.
func (s *Server) checkReady(ctx context.Context) error {
	if s.opts.Ready != nil {
		if err := s.opts.Ready(); err != nil {
			return fmt.Errorf("agent not ready: %w", err)
		}
	}
	if s.opts.AdminAddr == "" {
		return nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.opts.AdminAddr+"/ready", nil)
	if err != nil {
		return fmt.Errorf("proxy readiness request: %w", err)
	}
	resp, err := s.admin.Do(req)
	if err != nil {
		return fmt.Errorf("proxy not ready: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
	state := strings.TrimSpace(string(body))
	if resp.StatusCode != http.StatusOK || state != "LIVE" {
		return fmt.Errorf("proxy not ready: %d %s", resp.StatusCode, state)
	}
	return nil
}

func (s *Server) handleQuit(w http.ResponseWriter, r *http.Request) {
	s.log.Info("quitquitquit: shutting down", "remote", r.RemoteAddr)
	w.WriteHeader(http.StatusOK)
	// Its own goroutine: OnQuit may stop this server, which waits for this handler.
	go s.opts.OnQuit()
}

func (s *Server) handleNDSZ(w http.ResponseWriter, r *http.Request) {
	body, err := json.MarshalIndent(s.opts.NDSZ(), "", "  ")
	if err != nil {
		s.log.Error("ndsz", "err", err)
		http.Error(w, "ndsz: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(body)
}
