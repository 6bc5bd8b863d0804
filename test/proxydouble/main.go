// Command proxydouble stands in for Envoy in the agent's tests, where Envoy cannot be installed. It takes Envoy's
// command line, reads the bootstrap the agent wrote, holds an ADS stream over the agent's XDS socket (CDS and LDS,
// ACKing everything), and serves the parts of the admin API and the static listeners the agent relies on.
//
// Test hooks: PROXYDOUBLE_EXIT_CODE=N exits with status N, after PROXYDOUBLE_EXIT_AFTER (a Go duration, default
// immediately); PROXYDOUBLE_IGNORE_SIGTERM=true ignores SIGTERM, to test that supervisors escalate to SIGKILL;
// PROXYDOUBLE_NO_STATIC_LISTENERS=true serves no static listeners (their ports, 15090 and 15021 in the agent's
// bootstrap, are fixed: two doubles at once would collide).
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"

	// The bootstrap's typed configs must resolve when it is parsed.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

const xdsCluster = "xds-grpc"

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "proxydouble")
	b, err := loadBootstrap(args)
	if err != nil {
		log.Error("bootstrap", "err", err)
		return 1
	}
	stopSignals := []os.Signal{syscall.SIGTERM, syscall.SIGINT}
	if os.Getenv("PROXYDOUBLE_IGNORE_SIGTERM") == "true" {
		signal.Ignore(syscall.SIGTERM)
		stopSignals = stopSignals[1:]
	}
	ctx, stop := signal.NotifyContext(context.Background(), stopSignals...)
	defer stop()
	ctx, quit := context.WithCancel(ctx)
	defer quit()

	exit := make(chan int, 1)
	if s := os.Getenv("PROXYDOUBLE_EXIT_CODE"); s != "" {
		code, err := strconv.Atoi(s)
		if err != nil {
			log.Error("PROXYDOUBLE_EXIT_CODE", "err", err)
			return 1
		}
		var after time.Duration
		if s := os.Getenv("PROXYDOUBLE_EXIT_AFTER"); s != "" {
			if after, err = time.ParseDuration(s); err != nil {
				log.Error("PROXYDOUBLE_EXIT_AFTER", "err", err)
				return 1
			}
		}
		time.AfterFunc(after, func() { exit <- code })
	}

	st := &state{}
	var servers []*http.Server
	admin, err := listen(b.GetAdmin().GetAddress())
	if err != nil {
		log.Error("admin", "err", err)
		return 1
	}
	servers = append(servers, &http.Server{Handler: st.adminMux(quit), ReadHeaderTimeout: 5 * time.Second})
	go servers[0].Serve(admin)
	log.Info("admin listening", "addr", admin.Addr().String())

	listeners := b.GetStaticResources().GetListeners()
	if os.Getenv("PROXYDOUBLE_NO_STATIC_LISTENERS") == "true" {
		listeners = nil
	}
	for _, l := range listeners {
		h, err := listenerHandler(l.GetFilterChains(), b)
		if err != nil {
			log.Error("listener", "name", l.GetName(), "err", err)
			return 1
		}
		ln, err := listen(l.GetAddress())
		if err != nil {
			log.Error("listener", "name", l.GetName(), "err", err)
			return 1
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
		servers = append(servers, srv)
		go srv.Serve(ln)
		log.Info("listener listening", "name", l.GetName(), "addr", ln.Addr().String())
	}

	go runADS(ctx, b, st, log)

	code := 0
	select {
	case <-ctx.Done():
	case code = <-exit:
	}
	for _, s := range servers {
		shutdown, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = s.Shutdown(shutdown) // lets /quitquitquit's response reach its caller
		cancel()
	}
	log.Info("exiting", "code", code)
	return code
}

// loadBootstrap reads -c (or --config-path); every other Envoy flag is accepted and ignored.
func loadBootstrap(args []string) (*bootstrapv3.Bootstrap, error) {
	path := ""
	for i := 0; i < len(args)-1; i++ {
		if args[i] == "-c" || args[i] == "--config-path" {
			path = args[i+1]
		}
	}
	if path == "" {
		return nil, errors.New("no -c bootstrap path")
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read bootstrap: %w", err)
	}
	b := &bootstrapv3.Bootstrap{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(raw, b); err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	return b, nil
}

func listen(a *corev3.Address) (net.Listener, error) {
	sa := a.GetSocketAddress()
	if sa == nil {
		return nil, fmt.Errorf("address %v is not a socket address", a)
	}
	return net.Listen("tcp", net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))))
}

// listenerHandler serves a static HTTP listener as Envoy would: each route prefix goes to its static cluster.
func listenerHandler(chains []*listenerv3.FilterChain, b *bootstrapv3.Bootstrap) (http.Handler, error) {
	mux := http.NewServeMux()
	for _, fc := range chains {
		for _, f := range fc.GetFilters() {
			hcm := &hcmv3.HttpConnectionManager{}
			if err := f.GetTypedConfig().UnmarshalTo(hcm); err != nil {
				return nil, fmt.Errorf("filter %s: %w", f.GetName(), err)
			}
			for _, vh := range hcm.GetRouteConfig().GetVirtualHosts() {
				for _, r := range vh.GetRoutes() {
					target, err := clusterURL(b, r.GetRoute().GetCluster())
					if err != nil {
						return nil, err
					}
					mux.Handle(routePrefix(r), httputil.NewSingleHostReverseProxy(target))
				}
			}
		}
	}
	return mux, nil
}

func routePrefix(r *routev3.Route) string {
	if p := r.GetMatch().GetPrefix(); p != "" {
		return p
	}
	return "/"
}

func clusterURL(b *bootstrapv3.Bootstrap, name string) (*url.URL, error) {
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() != name {
			continue
		}
		for _, le := range c.GetLoadAssignment().GetEndpoints() {
			for _, lb := range le.GetLbEndpoints() {
				if sa := lb.GetEndpoint().GetAddress().GetSocketAddress(); sa != nil {
					host := net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
					return &url.URL{Scheme: "http", Host: host}, nil
				}
			}
		}
	}
	return nil, fmt.Errorf("no static cluster %q with a socket address", name)
}
