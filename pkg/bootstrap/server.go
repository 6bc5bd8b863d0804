// Package bootstrap assembles the discovery server: config sources, the push pipeline, the gRPC and HTTP
// servers, readiness and shutdown.
package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	meshconfig "istio.io/api/mesh/v1alpha1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshd/meshd/pkg/ca"
	"github.com/meshd/meshd/pkg/ca/rootcert"
	"github.com/meshd/meshd/pkg/config/crd"
	"github.com/meshd/meshd/pkg/debug"
	"github.com/meshd/meshd/pkg/leaderelection"
	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/clusters"
	"github.com/meshd/meshd/pkg/networking/listeners"
	"github.com/meshd/meshd/pkg/networking/nds"
	"github.com/meshd/meshd/pkg/networking/routes"
	"github.com/meshd/meshd/pkg/networking/util"
	"github.com/meshd/meshd/pkg/serviceregistry/file"
	"github.com/meshd/meshd/pkg/serviceregistry/kube/cluster"
	"github.com/meshd/meshd/pkg/xds"
)

// Server is a running discovery server.
type Server struct {
	args *Args
	log  *slog.Logger
	XDS  *xds.DiscoveryServer

	grpcServer *grpc.Server
	httpServer *http.Server
	monServer  *http.Server

	// Bound addresses (useful with ":0" in tests).
	GRPCListener net.Addr
	HTTPListener net.Addr
	MonListener  net.Addr

	sourceName string
	elector    *leaderelection.Elector
	secure     *secureServer
	// SecureGRPCListener is the bound mTLS port, when served.
	SecureGRPCListener net.Addr
	wg                 sync.WaitGroup
}

// resourceCacheSize bounds the shared cache of marshalled resources (clusters, routes, endpoints, listeners).
const resourceCacheSize = 100_000

// NewServer builds and starts everything and returns once every port is listening. In file mode the first push
// context is built before it returns; in Kubernetes mode once the informers have synced (Ready tells).
// Cancel ctx to stop; Wait returns when everything has stopped.
func NewServer(ctx context.Context, args *Args, log *slog.Logger) (*Server, error) {
	mesh, err := model.LoadMeshConfig(args.MeshConfigFile, true)
	if err != nil {
		return nil, err
	}
	s := &Server{args: args, log: log}
	env := &model.Environment{Mesh: mesh, DomainSuffix: args.Domain, ClusterID: args.ClusterID}

	cache := util.NewCache(resourceCacheSize)
	// The HTTP debug handlers also answer debug requests over ADS (the agent's port 15004).
	mux := http.NewServeMux()
	s.XDS = xds.New(env, xds.Options{
		Debug:           mux,
		SystemNamespace: podNamespace(),
		Debounce:        args.Debounce,
		PushConcurrency: args.PushThrottle,
		Logger:          log,
		Generators: map[string]model.Generator{
			model.ClusterType:   clusters.NewCDS(cache),
			model.EndpointType:  clusters.NewEDS(cache),
			model.ListenerType:  listeners.NewLDS(cache),
			model.RouteType:     routes.NewRDS(cache),
			model.NameTableType: nds.NewNDS(),
			xds.GeneratorKey(model.GeneratorGRPC, model.ClusterType):  clusters.NewGRPCCDS(cache),
			xds.GeneratorKey(model.GeneratorGRPC, model.EndpointType): clusters.NewGRPCEDS(cache),
			xds.GeneratorKey(model.GeneratorGRPC, model.ListenerType): listeners.NewGRPCLDS(cache),
			xds.GeneratorKey(model.GeneratorGRPC, model.RouteType):    routes.NewGRPCRDS(cache),
		},
	})

	src, clients, err := s.newSource(args, mesh)
	if err != nil {
		return nil, err
	}
	env.ServiceDiscovery, env.ConfigStore = src, src

	// --grpcAddr "" turns the plaintext port off (the secure port then is the only way in).
	var grpcLis net.Listener
	if args.GRPCAddr != "" {
		if grpcLis, err = net.Listen("tcp", args.GRPCAddr); err != nil {
			return nil, fmt.Errorf("--grpcAddr: %w", err)
		}
		s.GRPCListener = grpcLis.Addr()
	}
	closeAll := func(ls ...net.Listener) {
		for _, l := range ls {
			if l != nil {
				l.Close()
			}
		}
	}
	httpLis, err := net.Listen("tcp", args.HTTPAddr)
	if err != nil {
		closeAll(grpcLis)
		return nil, fmt.Errorf("--httpAddr: %w", err)
	}
	monLis, err := net.Listen("tcp", args.MonitoringAddr)
	if err != nil {
		closeAll(grpcLis, httpLis)
		return nil, fmt.Errorf("--monitoringAddr: %w", err)
	}
	s.HTTPListener, s.MonListener = httpLis.Addr(), monLis.Addr()

	if err := src.Start(ctx); err != nil {
		closeAll(grpcLis, httpLis, monLis)
		return nil, err
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		<-src.Done()
	}()
	if s.elector != nil {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.elector.Run(ctx); err != nil && ctx.Err() == nil {
				log.Error("leader election stopped", "error", err)
			}
		}()
	}

	if args.GRPCAddr != "" {
		s.grpcServer = grpc.NewServer(s.grpcOptions(args)...)
		s.XDS.Register(s.grpcServer)
	}

	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) {
		if !s.XDS.Ready() {
			http.Error(w, "not ready: no push context yet", http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	debug.Register(mux, s.XDS)
	s.httpServer = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}

	monMux := http.NewServeMux()
	monMux.Handle("GET /metrics", promhttp.Handler())
	s.monServer = &http.Server{Handler: monMux, ReadHeaderTimeout: 10 * time.Second}

	if args.SecureGRPCAddr != "" {
		if err := s.startSecure(ctx, args, mesh, src, clients); err != nil {
			closeAll(grpcLis, httpLis, monLis)
			return nil, err
		}
	}
	// Ports are served before the sources have synced: /ready answers 503 and ADS streams get Unavailable
	// until the first push context exists, so probes and proxies wait instead of seeing an empty mesh.
	if s.grpcServer != nil {
		s.serve("grpc", func() error { return s.grpcServer.Serve(grpcLis) })
	}
	s.serve("http", func() error { return s.httpServer.Serve(httpLis) })
	s.serve("monitoring", func() error { return s.monServer.Serve(monLis) })
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		<-ctx.Done()
		s.shutdown()
	}()
	if args.HTTPSAddr != "" {
		log.Info("the webhook port is not served by this build yet", "httpsAddr", args.HTTPSAddr)
	}
	if src.HasSynced() {
		s.start(ctx)
		return s, nil
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if s.waitForSync(ctx, src) {
			s.start(ctx)
		}
	}()
	return s, nil
}

// source is where services and config come from: a directory (file mode) or a cluster.
type source interface {
	model.ServiceDiscovery
	model.ConfigStore
	Start(context.Context) error
	Done() <-chan struct{}
	HasSynced() bool
}

func (s *Server) newSource(args *Args, mesh *meshconfig.MeshConfig) (source, *kubeClients, error) {
	if args.ConfigDir != "" {
		src, err := file.New(args.ConfigDir, args.Domain, s.XDS.ConfigUpdate)
		if err != nil {
			return nil, nil, fmt.Errorf("--configDir %s: %w", args.ConfigDir, err)
		}
		s.sourceName = "configDir " + args.ConfigDir
		return src, nil, nil
	}
	clients, err := newKubeClients(args.Kubeconfig)
	if err != nil {
		return nil, nil, fmt.Errorf("%w (or pass --configDir to serve a directory of YAML)", err)
	}
	src, err := cluster.New(clients.kube, clients.istio, cluster.Options{
		DomainSuffix:       args.Domain,
		ClusterID:          args.ClusterID,
		DiscoverySelectors: mesh.GetDiscoverySelectors(),
		OnChange:           s.XDS.ConfigUpdate,
		Store:              crd.Options{CRDs: clients.metadata, Logger: s.log},
		Logger:             s.log,
	})
	if err != nil {
		return nil, nil, err
	}
	elector, err := leaderelection.New(clients.kube, leaderelection.Options{Logger: s.log})
	if err != nil {
		return nil, nil, err
	}
	s.sourceName = "kubernetes (" + clients.source + ")"
	s.elector = elector
	return src, clients, nil
}

// waitForSync blocks until every informer has synced, logging while it waits; false if ctx ended first.
func (s *Server) waitForSync(ctx context.Context, src source) bool {
	start := time.Now()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	next := 10 * time.Second
	for !src.HasSynced() {
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
		if waited := time.Since(start); waited > next {
			s.log.Info("waiting for the Kubernetes caches to sync before serving config", "waited", waited.Round(time.Second))
			next += 10 * time.Second
		}
	}
	s.log.Info("Kubernetes caches synced", "took", time.Since(start).Round(time.Millisecond))
	return true
}

// start builds the first push context and begins pushing; the server is ready from then on.
func (s *Server) start(ctx context.Context) {
	s.XDS.Start(ctx)
	grpcAddr := "off"
	if s.GRPCListener != nil {
		grpcAddr = s.GRPCListener.String()
	}
	s.log.Info("meshd discovery ready", "grpc", grpcAddr, "http", s.HTTPListener.String(),
		"monitoring", s.MonListener.String(), "source", s.sourceName, "services", len(s.XDS.PushContext().AllServices()))
}

func (s *Server) serve(name string, run func() error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := run(); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, grpc.ErrServerStopped) {
			s.log.Error("server stopped", "server", name, "error", err)
		}
	}()
}

func (s *Server) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), s.args.ShutdownDuration)
	defer cancel()
	for _, g := range []*grpc.Server{s.grpcServer, s.secureGRPC()} {
		if g == nil {
			continue
		}
		stopped := make(chan struct{})
		go func() {
			g.GracefulStop()
			close(stopped)
		}()
		select {
		case <-stopped:
		case <-ctx.Done():
			g.Stop()
		}
	}
	_ = s.httpServer.Shutdown(ctx)
	_ = s.monServer.Shutdown(ctx)
}

// Wait blocks until every server goroutine has returned.
func (s *Server) Wait() { s.wg.Wait() }

// Ready reports whether the server has built its first push context.
func (s *Server) Ready() bool { return s.XDS.Ready() }

// IsLeader reports whether this replica holds the leader lease (always false in file mode, which has no
// cluster-wide writes).
func (s *Server) IsLeader() bool { return s.elector != nil && s.elector.IsLeader() }

func (s *Server) grpcOptions(args *Args) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxConcurrentStreams(args.MaxConcurrentStreams),
		grpc.MaxRecvMsgSize(args.MaxRecvMsgSize),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:                  args.KeepaliveInterval,
			Timeout:               args.KeepaliveTimeout,
			MaxConnectionAge:      args.KeepaliveMaxServerConnectionAge,
			MaxConnectionAgeGrace: args.ShutdownDuration,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 15 * time.Second, PermitWithoutStream: true}),
	}
}

// startSecure serves 15012 (ADS and the CA over TLS) and distributes the root certificate.
func (s *Server) startSecure(ctx context.Context, args *Args, mesh *meshconfig.MeshConfig, src source, clients *kubeClients) error {
	lis, err := net.Listen("tcp", args.SecureGRPCAddr)
	if err != nil {
		return fmt.Errorf("--secureGRPCAddr: %w", err)
	}
	var (
		kc     kubernetes.Interface
		filter rootcert.NamespaceFilter
	)
	if clients != nil {
		kc = clients.kube
		if cs, ok := src.(*cluster.Sources); ok {
			filter = cs.Filter()
		}
	}
	ss, err := s.newSecureServer(ctx, args, mesh.GetTrustDomain(), kc)
	if err != nil {
		lis.Close()
		return err
	}
	if err := s.distributeRoot(ss, kc, filter, args); err != nil {
		lis.Close()
		return err
	}
	s.secure, s.SecureGRPCListener = ss, lis.Addr()
	ss.serve(s, ctx, lis)
	s.log.Info("secure xDS and CA serving", "secureGRPC", lis.Addr().String(), "root", ss.ca.Source())
	return nil
}

func (s *Server) secureGRPC() *grpc.Server {
	if s.secure == nil {
		return nil
	}
	return s.secure.grpc
}

// CA returns the built-in CA, nil when the secure port is not served.
func (s *Server) CA() *ca.CA {
	if s.secure == nil {
		return nil
	}
	return s.secure.ca
}
