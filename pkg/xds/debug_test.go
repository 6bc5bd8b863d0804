package xds

import (
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/meshd/meshd/pkg/model"
)

// debugServer serves ADS with a debug handler that echoes the request it was given. Streams whose metadata
// carries "caller-ns" are treated as authenticated callers of that namespace, as the secure port's
// interceptor would mark them.
func debugServer(t *testing.T) discoverygrpc.AggregatedDiscoveryServiceClient {
	t.Helper()
	env := &model.Environment{ServiceDiscovery: model.NewStaticDiscovery(nil, nil, nil), ConfigStore: model.NewStaticConfigStore(nil),
		Mesh: model.DefaultMeshConfig(), DomainSuffix: "cluster.local"}
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte(r.URL.String())) })
	s := New(env, Options{Debug: echo, SystemNamespace: "istio-system", Generators: map[string]model.Generator{}})
	ctx, cancel := context.WithCancel(context.Background())
	s.Start(ctx)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.StreamInterceptor(func(srv any, st grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		md, _ := metadata.FromIncomingContext(st.Context())
		if ns := md.Get("caller-ns"); len(ns) == 1 {
			ctx := WithCaller(st.Context(), Caller{Namespace: ns[0], ServiceAccount: "default", Identity: "spiffe://cluster.local/ns/" + ns[0] + "/sa/default"})
			return h(srv, &callerStream{ServerStream: st, ctx: ctx})
		}
		return h(srv, st)
	}))
	s.Register(g)
	go func() { _ = g.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(); g.Stop(); cancel() })
	return discoverygrpc.NewAggregatedDiscoveryServiceClient(conn)
}

type callerStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (c *callerStream) Context() context.Context { return c.ctx }

// askDebug sends one debug request on a fresh stream, as the agent's port 15004 does, and returns the HTTP
// status (the response version) and body.
func askDebug(t *testing.T, ads discoverygrpc.AggregatedDiscoveryServiceClient, delta bool, callerNS, endpoint, query string) (string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if callerNS != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "caller-ns", callerNS)
	}
	node := testNode("productpage-v1")
	if callerNS == "istio-system" {
		node = &core.Node{Id: "sidecar~10.1.0.9~istioctl.istio-system~istio-system.svc.cluster.local"}
	}
	var names []string
	if query != "" {
		names = []string{query}
	}
	if delta {
		st, err := ads.DeltaAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: model.DebugTypePrefix + endpoint, ResourceNamesSubscribe: names}); err != nil {
			t.Fatal(err)
		}
		r, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Resources) != 1 {
			t.Fatalf("debug answer has %d resources, want 1", len(r.Resources))
		}
		return r.Resources[0].Version, string(r.Resources[0].Resource.GetValue())
	}
	st, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: model.DebugTypePrefix + endpoint, ResourceNames: names}); err != nil {
		t.Fatal(err)
	}
	r, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Resources) != 1 {
		t.Fatalf("debug answer has %d resources, want 1", len(r.Resources))
	}
	return r.VersionInfo, string(r.Resources[0].GetValue())
}

// TestDebugOverADS: debug endpoints answer over both ADS protocols; on the plaintext port (no caller) as on
// port 8080; an authenticated caller from the control plane's namespace reads anything; any other caller only
// syncz, config_dump and adsz, always about its own proxy and without triggering pushes; pprof is refused.
func TestDebugOverADS(t *testing.T) {
	ads := debugServer(t)
	for _, c := range []struct {
		name               string
		delta              bool
		caller, endpoint   string
		query              string
		wantCode, wantBody string
	}{
		{"plaintext, sotw", false, "", "syncz", "", "200", "/debug/syncz?"},
		{"plaintext, delta, with a query", true, "", "config_dump", "proxyID=reviews-v1.default", "200", "/debug/config_dump?proxyID=reviews-v1.default"},
		{"system namespace reads anything", false, "istio-system", "registryz", "", "200", "/debug/registryz?"},
		{"another namespace: own proxy only", true, "default", "config_dump", "proxyID=reviews-v1.prod", "200", "/debug/config_dump?proxyID=productpage-v1.default"},
		{"another namespace: no push", false, "default", "adsz", "push=true", "200", "/debug/adsz?proxyID=productpage-v1.default"},
		{"another namespace: not registryz", false, "default", "registryz", "", "403", "may read only"},
		{"pprof is HTTP only", false, "", "pprof/profile", "", "404", "HTTP debug port only"},
		{"bad query", true, "", "syncz", "%zz", "400", "bad query"},
	} {
		code, body := askDebug(t, ads, c.delta, c.caller, c.endpoint, c.query)
		if code != c.wantCode || !strings.Contains(body, c.wantBody) {
			t.Errorf("%s: got %s %q, want %s containing %q", c.name, code, body, c.wantCode, c.wantBody)
		}
	}
}
