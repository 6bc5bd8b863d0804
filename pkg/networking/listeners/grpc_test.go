package listeners_test

import (
	"slices"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/listeners"
	"github.com/meshd/meshd/pkg/networking/routes/routestest"
	"github.com/meshd/meshd/pkg/networking/util"
)

// A gRPC client's dial target becomes an API listener whose connection manager asks RDS for the same name;
// names that are no visible service port are omitted.
func TestGRPCClientListener(t *testing.T) {
	services, pods := routestest.Bookinfo()
	push := routestest.Push(services, pods, nil, nil)
	client := routestest.GRPCClient(t, push, "client", "default", "10.2.0.1", nil)
	const target = "reviews.default.svc.cluster.local:9080"
	for _, g := range []*listeners.Generator{listeners.NewGenerator(nil), listeners.NewGenerator(util.NewCache(10))} {
		ls := lds(t, g, client, push, &model.WatchedResource{TypeURL: model.ListenerType, Names: []string{
			target, "reviews:9080", "httpbin.other:8000", "reviews", "reviews:1", "nope.default.svc.cluster.local:9080", "httpbin:8000",
		}})
		if got := names(ls); !slices.Equal(got, []string{"httpbin.other:8000", target, "reviews:9080"}) {
			t.Fatalf("listeners = %v", got)
		}
		l := ls[target]
		if l.GetApiListener() == nil || len(l.GetFilterChains()) != 0 {
			t.Fatalf("not an API listener: %v", l)
		}
		m := &hcm.HttpConnectionManager{}
		if err := l.GetApiListener().GetApiListener().UnmarshalTo(m); err != nil {
			t.Fatal(err)
		}
		if m.GetRds().GetRouteConfigName() != target || m.GetRds().GetConfigSource().GetAds() == nil {
			t.Errorf("rds = %v", m.GetRds())
		}
		if got := httpFilterNames(m); !slices.Equal(got, []string{"envoy.filters.http.router"}) {
			t.Errorf("http filters = %v", got)
		}
		if n := mustHCM(t, ls["reviews:9080"]).GetRds().GetRouteConfigName(); n != "reviews:9080" {
			t.Errorf("short-name listener asks for route %q", n)
		}
	}
}

func mustHCM(t *testing.T, l *listener.Listener) *hcm.HttpConnectionManager {
	t.Helper()
	m := &hcm.HttpConnectionManager{}
	if err := l.GetApiListener().GetApiListener().UnmarshalTo(m); err != nil {
		t.Fatal(err)
	}
	return m
}

// A grpc-go xDS server's listener: its address, and routes that accept every RPC with non_forwarding_action.
func TestGRPCServerListener(t *testing.T) {
	services, pods := routestest.Bookinfo()
	push := routestest.Push(services, pods, nil, nil)
	server := routestest.GRPCClient(t, push, "reviews-v1", "default", "10.1.0.2", nil)
	names4 := listeners.GRPCInboundListenerPrefix + "0.0.0.0:8080"
	names6 := listeners.GRPCInboundListenerPrefix + "[::]:9090"
	ls := lds(t, listeners.NewGenerator(nil), server, push, &model.WatchedResource{TypeURL: model.ListenerType, Names: []string{
		names4, names6, listeners.GRPCInboundListenerPrefix + "nope", listeners.GRPCInboundListenerPrefix + "1.2.3.4:0",
	}})
	if got := names(ls); !slices.Equal(got, []string{names4, names6}) {
		t.Fatalf("listeners = %v", got)
	}
	l := ls[names4]
	assertProto(t, "address", l.GetAddress(), socket("0.0.0.0", 8080))
	assertProto(t, "v6 address", ls[names6].GetAddress(), socket("::", 9090))
	if len(l.GetFilterChains()) != 1 {
		t.Fatalf("filter chains = %v", l.GetFilterChains())
	}
	m := httpConnectionManager(t, l.GetFilterChains()[0])
	if got := httpFilterNames(m); !slices.Equal(got, []string{"envoy.filters.http.router"}) {
		t.Errorf("http filters = %v", got)
	}
	vhs := m.GetRouteConfig().GetVirtualHosts()
	if len(vhs) != 1 || !slices.Equal(vhs[0].GetDomains(), []string{"*"}) {
		t.Fatalf("virtual hosts = %v", vhs)
	}
	assertProto(t, "server route", vhs[0].GetRoutes()[0], &route.Route{
		Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: ""}},
		Action: &route.Route_NonForwardingAction{NonForwardingAction: &route.NonForwardingAction{}},
	})
	if l.GetTrafficDirection() != core.TrafficDirection_INBOUND {
		t.Errorf("direction = %v", l.GetTrafficDirection())
	}
}

// The generator registered for GENERATOR=grpc serves every proxy as a gRPC client; the Envoy one dispatches on
// the metadata.
func TestGRPCRegisteredGenerators(t *testing.T) {
	services, pods := routestest.Bookinfo()
	push := routestest.Push(services, pods, nil, nil)
	w := &model.WatchedResource{TypeURL: model.ListenerType, Names: []string{"reviews:9080"}}
	plain := routestest.Sidecar(t, push, "productpage-v1", "default", "10.1.0.1", nil)
	if got := names(lds(t, listeners.NewGRPCLDS(nil), plain, push, w)); !slices.Equal(got, []string{"reviews:9080"}) {
		t.Errorf("NewGRPCLDS served %v", got)
	}
	client := routestest.GRPCClient(t, push, "client", "default", "10.2.0.1", nil)
	if got := names(lds(t, listeners.NewLDS(nil), client, push, w)); !slices.Equal(got, []string{"reviews:9080"}) {
		t.Errorf("NewLDS for a gRPC client served %v", got)
	}
}
