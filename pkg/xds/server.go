// Package xds serves Envoy's aggregated discovery service (SotW and Delta) from push contexts: it owns the
// connections and their protocol state, the debounce of config events, and the push queue.
package xds

import (
	"cmp"
	"context"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"

	"github.com/meshd/meshd/pkg/model"
)

// Options configure a DiscoveryServer.
type Options struct {
	Debounce DebounceOptions
	// PushConcurrency bounds how many proxies are pushed to at once (Istio's PILOT_PUSH_THROTTLE).
	PushConcurrency int
	// Generators by type URL for Envoy proxies, and by GeneratorKey(generator, typeURL) for other generators
	// such as proxyless gRPC.
	Generators map[string]model.Generator
	// Debug serves the /debug endpoints for debug requests over ADS (model.DebugTypePrefix); nil turns them off.
	Debug http.Handler
	// SystemNamespace is the control plane's namespace: authenticated callers from it may read every debug
	// endpoint over ADS.
	SystemNamespace string
	Logger          *slog.Logger
}

// GeneratorKey is the Generators key for proxies that announce ISTIO_META_GENERATOR=generator.
func GeneratorKey(generator, typeURL string) string { return generator + "/" + typeURL }

// DiscoveryServer is the ADS server.
type DiscoveryServer struct {
	discoverygrpc.UnimplementedAggregatedDiscoveryServiceServer

	env  *model.Environment
	opts Options
	log  *slog.Logger

	updates chan *model.PushRequest
	queue   *pushQueue
	sem     chan struct{}

	push atomic.Pointer[model.PushContext]
	// started is set by Start before the first push context is built: changes reported earlier are part of
	// that first snapshot, so they need no push of their own.
	started atomic.Bool
	// stop is closed when the server stops; set before started.
	stop <-chan struct{}
	// pushMu serialises push-context builds (the debouncer already serialises; explicit debug pushes may not).
	pushMu sync.Mutex

	mu    sync.RWMutex
	conns map[string]*Connection
	seq   atomic.Int64
}

// New returns a server over env. Call Start before serving.
func New(env *model.Environment, opts Options) *DiscoveryServer {
	if opts.PushConcurrency <= 0 {
		opts.PushConcurrency = 100
	}
	if opts.Debounce.After == 0 && opts.Debounce.Max == 0 {
		opts.Debounce = DefaultDebounce()
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &DiscoveryServer{
		env:     env,
		opts:    opts,
		log:     opts.Logger.With("component", "xds"),
		updates: make(chan *model.PushRequest, 128),
		queue:   newPushQueue(),
		sem:     make(chan struct{}, opts.PushConcurrency),
		conns:   map[string]*Connection{},
	}
}

// Register adds the ADS service to a gRPC server.
func (s *DiscoveryServer) Register(g *grpc.Server) {
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(g, s)
}

// Start builds the first push context, then runs the debounce and push workers until ctx is done.
func (s *DiscoveryServer) Start(ctx context.Context) {
	s.stop = ctx.Done()
	s.started.Store(true)
	s.Push(model.NewPushRequest(true, model.ReasonGlobalUpdate))
	go debounce(s.updates, ctx.Done(), s.opts.Debounce, s.Push)
	go s.sendPushes(ctx.Done())
	go func() {
		<-ctx.Done()
		s.queue.close()
	}()
}

// Ready reports whether the first push context has been built.
func (s *DiscoveryServer) Ready() bool { return s.push.Load() != nil }

// PushContext returns the current push context (nil before Start).
func (s *DiscoveryServer) PushContext() *model.PushContext { return s.push.Load() }

// ConfigUpdate queues a change for the debounced push. Sources call it for every event; before Start it
// only counts the event.
func (s *DiscoveryServer) ConfigUpdate(req *model.PushRequest) {
	for r := range req.Reason {
		inboundUpdates.WithLabelValues(string(r)).Inc()
	}
	if !s.started.Load() {
		return
	}
	select {
	case s.updates <- req:
	case <-s.stop:
	}
}

// Push builds a new push context for req and queues every affected connection. It is called by the
// debouncer; tests and debug handlers may call it directly to push at once.
func (s *DiscoveryServer) Push(req *model.PushRequest) {
	s.pushMu.Lock()
	start := time.Now()
	prev := s.push.Load()
	push := model.NewPushContext(s.env, prev, req)
	pushContextBuildTime.Observe(time.Since(start).Seconds())
	s.push.Store(push)
	s.pushMu.Unlock()

	servicesGauge.Set(float64(len(push.AllServices())))
	endpointsGauge.Set(float64(push.EndpointCount()))
	for r, n := range req.Reason {
		pushTriggers.WithLabelValues(string(r)).Add(float64(n))
	}
	// A copy: the caller's request may be merged elsewhere.
	r := *req
	r.Push = push
	req = escalate(&r, push, prev)

	affected := 0
	hosts := updatedHostnames(req)
	for _, c := range s.Connections() {
		if !req.Full && !c.watchesAnyHost(hosts) {
			continue
		}
		affected++
		s.queue.enqueue(c, req)
	}
	s.log.Debug("push", "version", push.Version, "full", req.Full, "reasons", req.Reason,
		"connections", affected, "build", time.Since(start))
}

// escalate turns an endpoint-only request into a full one when the endpoint change alters clusters (the
// identities they verify, whether they speak mesh mTLS), so CDS is pushed too. The push context stays the
// same: config did not change, and cluster caches are keyed by those endpoint properties.
func escalate(req *model.PushRequest, push, prev *model.PushContext) *model.PushRequest {
	if req.Full || prev == nil {
		return req
	}
	hosts := updatedHostnames(req)
	for _, s := range push.AllServices() {
		if (hosts == nil || hosts[s.Hostname]) && push.EndpointsChangeClusters(prev, s.Hostname) {
			full := *req
			full.Full = true
			return &full
		}
	}
	return req
}

// updatedHostnames returns the services whose endpoints an endpoint-only request changed; nil means all.
func updatedHostnames(req *model.PushRequest) map[string]bool {
	if req.Full || len(req.ConfigsUpdated) == 0 {
		return nil
	}
	hosts := map[string]bool{}
	for k := range req.ConfigsUpdated {
		if k.Kind == model.KindEndpoints {
			hosts[k.Name] = true
		}
	}
	return hosts
}

// sendPushes hands queued connections to their stream goroutines, at most PushConcurrency at a time.
func (s *DiscoveryServer) sendPushes(stop <-chan struct{}) {
	for {
		select {
		case s.sem <- struct{}{}:
		case <-stop:
			return
		}
		c, req := s.queue.dequeue()
		if c == nil {
			<-s.sem
			return
		}
		var once sync.Once
		ev := &pushEvent{req: req, done: func() {
			once.Do(func() {
				<-s.sem
				s.queue.markDone(c)
			})
		}}
		go func() {
			select {
			case c.pushes <- ev:
			case <-c.stop:
				ev.done()
			}
		}()
	}
}

func (s *DiscoveryServer) addConnection(c *Connection) {
	s.mu.Lock()
	s.conns[c.ID] = c
	s.mu.Unlock()
	xdsClients.WithLabelValues(proxyVersion(c.proxy)).Inc()
}

func (s *DiscoveryServer) removeConnection(c *Connection) {
	s.mu.Lock()
	delete(s.conns, c.ID)
	s.mu.Unlock()
	s.queue.remove(c)
	xdsClients.WithLabelValues(proxyVersion(c.proxy)).Dec()
}

func proxyVersion(p *model.Proxy) string {
	if p.Metadata.IstioVersion != "" {
		return p.Metadata.IstioVersion
	}
	return "unknown"
}

// Connections returns the live connections sorted by id.
func (s *DiscoveryServer) Connections() []*Connection {
	s.mu.RLock()
	out := make([]*Connection, 0, len(s.conns))
	for _, c := range s.conns {
		out = append(out, c)
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b *Connection) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// QueueLen reports how many connections wait for a push.
func (s *DiscoveryServer) QueueLen() int { return s.queue.len() }

func (s *DiscoveryServer) newConnectionID(p *model.Proxy) string {
	return p.ID + "-" + strconv.FormatInt(s.seq.Add(1), 10)
}

func (s *DiscoveryServer) generator(p *model.Proxy, typeURL string) model.Generator {
	if g := p.Metadata.Generator; g != "" {
		if gen, ok := s.opts.Generators[GeneratorKey(g, typeURL)]; ok {
			return gen
		}
	}
	return s.opts.Generators[typeURL]
}
