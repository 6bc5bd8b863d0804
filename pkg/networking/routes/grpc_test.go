package routes_test

import (
	"slices"
	"testing"

	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/routes"
	"github.com/meshd/meshd/pkg/networking/routes/routestest"
	"github.com/meshd/meshd/pkg/networking/util"
)

func grpcReviewsPush() *model.PushContext {
	return bookinfoPush(vsConfig("reviews", &networking.VirtualService{
		Hosts: []string{"reviews"},
		Http: []*networking.HTTPRoute{
			{Name: "redirect", Match: []*networking.HTTPMatchRequest{{Uri: prefix("/old.Service/")}}, Redirect: &networking.HTTPRedirect{Uri: "/new.Service/"}},
			{Name: "query", Match: []*networking.HTTPMatchRequest{{QueryParams: map[string]*networking.StringMatch{"a": exact("b")}}},
				Route: []*networking.HTTPRouteDestination{routeTo("reviews", "v3", 0)}},
			{
				Name:    "jason",
				Match:   []*networking.HTTPMatchRequest{{Headers: map[string]*networking.StringMatch{"end-user": exact("jason")}}},
				Rewrite: &networking.HTTPRewrite{Uri: "/x"},
				Timeout: seconds(3),
				Retries: &networking.HTTPRetry{Attempts: 2, RetryOn: "unavailable", PerTryTimeout: seconds(1)},
				Fault:   &networking.HTTPFaultInjection{Abort: &networking.HTTPFaultInjection_Abort{ErrorType: &networking.HTTPFaultInjection_Abort_HttpStatus{HttpStatus: 500}}},
				Route:   []*networking.HTTPRouteDestination{routeTo("reviews", "v2", 0)},
			},
			{Name: "split", Route: []*networking.HTTPRouteDestination{routeTo("reviews", "v1", 80), routeTo("reviews", "v2", 20)}},
		},
	}))
}

// A gRPC client gets route configurations named exactly as it asked, with that authority among the domains, and
// only route features grpc-go implements.
func TestGRPCRouteConfig(t *testing.T) {
	push := grpcReviewsPush()
	client := routestest.GRPCClient(t, push, "client", "default", "10.2.0.1", nil)
	const name = reviewsFQDN + ":9080"
	rcs := generate(t, routes.NewGenerator(nil), client, push,
		name, "reviews:9080", "reviews.default:9080", "httpbin.other:8000",
		"reviews", "nope:9080", reviewsFQDN+":1234", "9080", "httpbin:8000")
	var got []string
	for _, rc := range rcs {
		got = append(got, rc.GetName())
	}
	if want := []string{name, "reviews:9080", "reviews.default:9080", "httpbin.other:8000"}; !slices.Equal(got, want) {
		t.Fatalf("route configs = %v, want %v", got, want)
	}

	rc := rcs[0]
	if len(rc.GetVirtualHosts()) != 1 {
		t.Fatalf("virtual hosts = %v", vhostNames(rc))
	}
	vh := rc.GetVirtualHosts()[0]
	if !slices.Contains(vh.GetDomains(), name) || !slices.Contains(vh.GetDomains(), reviewsFQDN) {
		t.Errorf("domains = %v, want %q and %q", vh.GetDomains(), name, reviewsFQDN)
	}
	if d := rcs[1].GetVirtualHosts()[0].GetDomains(); !slices.Contains(d, "reviews:9080") {
		t.Errorf("short-name route config domains = %v", d)
	}

	rs := vh.GetRoutes()
	if len(rs) != 2 {
		t.Fatalf("routes = %v, want jason and split (redirect and query-param rules dropped)", rs)
	}
	for _, r := range rs {
		if r.GetRoute() == nil {
			t.Errorf("route %q has action %T; grpc-go only forwards", r.GetName(), r.GetAction())
		}
		if len(r.GetTypedPerFilterConfig()) != 0 || len(r.GetRequestHeadersToAdd()) != 0 {
			t.Errorf("route %q carries Envoy-only config", r.GetName())
		}
	}
	jason := action(t, rs[0])
	if jason.GetCluster() != "outbound|9080|v2|"+reviewsFQDN || jason.GetPrefixRewrite() != "" {
		t.Errorf("jason action = %v", jason)
	}
	if jason.GetMaxStreamDuration().GetMaxStreamDuration().AsDuration().Seconds() != 3 {
		t.Errorf("timeout not in max_stream_duration: %v", jason.GetMaxStreamDuration())
	}
	assertProto(t, "grpc retry policy", jason.GetRetryPolicy(), &route.RetryPolicy{RetryOn: "unavailable", NumRetries: wrapperspb.UInt32(2)})
	assertProto(t, "weights", action(t, rs[1]).GetWeightedClusters(), &route.WeightedCluster{Clusters: []*route.WeightedCluster_ClusterWeight{
		{Name: "outbound|9080|v1|" + reviewsFQDN, Weight: wrapperspb.UInt32(80)},
		{Name: "outbound|9080|v2|" + reviewsFQDN, Weight: wrapperspb.UInt32(20)},
	}})
	if action(t, rs[1]).GetRetryPolicy() != nil {
		t.Error("gRPC routes without retries must not get Envoy's default retry policy")
	}

	// Without VirtualService: everything to the service's cluster.
	def := rcs[3].GetVirtualHosts()[0].GetRoutes()
	if len(def) != 1 || action(t, def[0]).GetCluster() != "outbound|8000||httpbin.other.svc.cluster.local" || def[0].GetMatch().GetPrefix() != "/" {
		t.Errorf("default gRPC route = %v", def)
	}
}

// Cached gRPC route configurations are per requested name and namespace: the same short name means different
// services in different namespaces.
func TestGRPCRouteConfigCacheKeyedByNamespace(t *testing.T) {
	services, pods := routestest.Bookinfo()
	services = append(services, routestest.HTTPService("reviews", "other", "10.0.1.2", 9080))
	push := routestest.Push(services, pods, nil, nil)
	gen := routes.NewGenerator(util.NewCache(100))
	a := generate(t, gen, routestest.GRPCClient(t, push, "a", "default", "10.2.0.1", nil), push, "reviews:9080")
	b := generate(t, gen, routestest.GRPCClient(t, push, "b", "other", "10.2.0.2", nil), push, "reviews:9080")
	ca := action(t, a[0].GetVirtualHosts()[0].GetRoutes()[0]).GetCluster()
	cb := action(t, b[0].GetVirtualHosts()[0].GetRoutes()[0]).GetCluster()
	if ca != "outbound|9080||"+reviewsFQDN || cb != "outbound|9080||reviews.other.svc.cluster.local" {
		t.Errorf("clusters = %q, %q", ca, cb)
	}
}

// The route configuration cache shares one marshalled resource between proxies of the same scope and never
// hands a proxy another scope's resource.
func TestSidecarRouteConfigCacheSharing(t *testing.T) {
	push := bookinfoPush()
	cache := util.NewCache(100)
	gen := routes.NewGenerator(cache)
	w := &model.WatchedResource{TypeURL: model.RouteType, Names: []string{"9080"}}
	get := func(p *model.Proxy) string {
		res, err := gen.Generate(p, push, w, nil)
		if err != nil || len(res) != 1 {
			t.Fatalf("generate: %v %v", res, err)
		}
		return string(res[0].GetResource().GetValue())
	}
	pp := get(routestest.Sidecar(t, push, "productpage-v1", "default", "10.1.0.1", nil))
	ratings := get(routestest.Sidecar(t, push, "ratings-v1", "default", "10.1.0.5", nil))
	other := get(routestest.Sidecar(t, push, "httpbin-v1", "other", "10.1.1.1", nil))
	if pp != ratings {
		t.Error("proxies of one namespace got different route configurations")
	}
	if pp == other {
		t.Error("proxies of different namespaces share a route configuration (short names differ)")
	}
	if cache.Len() != 2 {
		t.Errorf("cache holds %d entries, want 2", cache.Len())
	}
	// A new push with new config must not reuse the old entries.
	push2 := bookinfoPush(vsConfig("reviews", &networking.VirtualService{Hosts: []string{"reviews"},
		Http: []*networking.HTTPRoute{{Route: []*networking.HTTPRouteDestination{routeTo("reviews", "v3", 0)}}}}))
	res, _ := gen.Generate(routestest.Sidecar(t, push2, "productpage-v1", "default", "10.1.0.1", nil), push2, w, nil)
	rc := &route.RouteConfiguration{}
	if err := res[0].GetResource().UnmarshalTo(rc); err != nil {
		t.Fatal(err)
	}
	if c := action(t, vhost(t, rc, reviewsFQDN+":9080").GetRoutes()[0]).GetCluster(); c != "outbound|9080|v3|"+reviewsFQDN {
		t.Errorf("after a config change the cached route config was served: cluster %q", c)
	}
}

// Generators run concurrently for different proxies over one push context and one cache; the output must
// not depend on interleaving (run with -race to check for data races).
func TestGenerateConcurrent(t *testing.T) {
	push := grpcReviewsPush()
	gen := routes.NewGenerator(util.NewCache(100))
	sidecar := routestest.Sidecar(t, push, "productpage-v1", "default", "10.1.0.1", nil)
	client := routestest.GRPCClient(t, push, "client", "default", "10.2.0.1", nil)
	ws := &model.WatchedResource{TypeURL: model.RouteType, Names: []string{"9080", "8000"}}
	wg := &model.WatchedResource{TypeURL: model.RouteType, Names: []string{reviewsFQDN + ":9080"}}
	serial := func(p *model.Proxy, w *model.WatchedResource) string {
		res, err := routes.NewGenerator(nil).Generate(p, push, w, nil)
		if err != nil {
			t.Error(err)
		}
		var s string
		for _, r := range res {
			s += r.GetName() + string(r.GetResource().GetValue())
		}
		return s
	}
	wantS, wantG := serial(sidecar, ws), serial(client, wg)
	errs := make(chan string, 16)
	done := make(chan struct{})
	for i := range 8 {
		go func() {
			defer func() { done <- struct{}{} }()
			p, w, want := sidecar, ws, wantS
			if i%2 == 1 {
				p, w, want = client, wg, wantG
			}
			res, err := gen.Generate(p, push, w, nil)
			var s string
			for _, r := range res {
				s += r.GetName() + string(r.GetResource().GetValue())
			}
			if err != nil || s != want {
				errs <- p.ID
			}
		}()
	}
	for range 8 {
		<-done
	}
	close(errs)
	for id := range errs {
		t.Errorf("concurrent generation for %s differs from serial", id)
	}
}

// The generator registered for GENERATOR=grpc serves every proxy as a gRPC client; the Envoy one dispatches on
// the metadata.
func TestGRPCRegisteredGenerators(t *testing.T) {
	push := grpcReviewsPush()
	plain := routestest.Sidecar(t, push, "productpage-v1", "default", "10.1.0.1", nil)
	if rcs := generate(t, routes.NewGRPCRDS(nil), plain, push, "reviews:9080", "9080"); len(rcs) != 1 || rcs[0].GetName() != "reviews:9080" {
		t.Errorf("NewGRPCRDS served %v", rcs)
	}
	client := routestest.GRPCClient(t, push, "client", "default", "10.2.0.1", nil)
	if rcs := generate(t, routes.NewRDS(nil), client, push, "reviews:9080", "9080"); len(rcs) != 1 || rcs[0].GetName() != "reviews:9080" {
		t.Errorf("NewRDS for a gRPC client served %v", rcs)
	}
}
