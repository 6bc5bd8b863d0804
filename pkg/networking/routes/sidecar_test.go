package routes_test

import (
	"slices"
	"testing"

	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	previoushosts "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/routes"
	"github.com/meshd/meshd/pkg/networking/routes/routestest"
)

// The productpage sidecar's route "9080" holds one virtual host per Bookinfo HTTP service on 9080, in hostname
// order, then allow_any; each service's domains are Istio's, short names included for a same-namespace proxy.
func TestSidecarRouteConfigBookinfo(t *testing.T) {
	push := bookinfoPush()
	proxy := routestest.Sidecar(t, push, "productpage-v1", "default", "10.1.0.1", nil)
	rc := routeConfig(t, proxy, push, "9080")

	if rc.GetName() != "9080" {
		t.Errorf("name = %q", rc.GetName())
	}
	if rc.GetValidateClusters() == nil || rc.GetValidateClusters().GetValue() {
		t.Errorf("validate_clusters = %v, want explicit false", rc.GetValidateClusters())
	}
	wantVhosts := []string{
		"details.default.svc.cluster.local:9080",
		"productpage.default.svc.cluster.local:9080",
		"ratings.default.svc.cluster.local:9080",
		"reviews.default.svc.cluster.local:9080",
		"allow_any",
	}
	if got := vhostNames(rc); !slices.Equal(got, wantVhosts) {
		t.Fatalf("virtual hosts = %v, want %v", got, wantVhosts)
	}
	wantDomains := []string{
		reviewsFQDN, reviewsFQDN + ":9080",
		"reviews", "reviews:9080",
		"reviews.default.svc", "reviews.default.svc:9080",
		"reviews.default", "reviews.default:9080",
		"10.0.0.2", "10.0.0.2:9080",
	}
	if got := vhost(t, rc, reviewsFQDN+":9080").GetDomains(); !slices.Equal(got, wantDomains) {
		t.Errorf("reviews domains = %v, want %v", got, wantDomains)
	}

	// Without VirtualService: the default route.
	rs := vhost(t, rc, reviewsFQDN+":9080").GetRoutes()
	if len(rs) != 1 {
		t.Fatalf("reviews routes = %d, want 1", len(rs))
	}
	want := &route.Route{
		Name:  "default",
		Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
		Action: &route.Route_Route{Route: &route.RouteAction{
			ClusterSpecifier: &route.RouteAction_Cluster{Cluster: "outbound|9080||" + reviewsFQDN},
			Timeout:          durationpb.New(0),
			RetryPolicy: &route.RetryPolicy{
				RetryOn:              "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
				NumRetries:           wrapperspb.UInt32(2),
				RetriableStatusCodes: []uint32{503},
				RetryHostPredicate: []*route.RetryPolicy_RetryHostPredicate{{
					Name:       "envoy.retry_host_predicates.previous_hosts",
					ConfigType: &route.RetryPolicy_RetryHostPredicate_TypedConfig{TypedConfig: anyOf(&previoushosts.PreviousHostsPredicate{})},
				}},
				HostSelectionRetryMaxAttempts: 5,
			},
		}},
	}
	assertProto(t, "default route", rs[0], want)

	allowAny := vhost(t, rc, "allow_any")
	if !slices.Equal(allowAny.GetDomains(), []string{"*"}) {
		t.Errorf("allow_any domains = %v", allowAny.GetDomains())
	}
	if c := action(t, allowAny.GetRoutes()[0]).GetCluster(); c != model.PassthroughCluster {
		t.Errorf("allow_any cluster = %q", c)
	}
}

// Short names resolve only inside the service's namespace: a proxy elsewhere must not claim "reviews", and a
// Bookinfo proxy must not claim "httpbin".
func TestSidecarShortNamesOnlyInNamespace(t *testing.T) {
	push := bookinfoPush()
	other := routestest.Sidecar(t, push, "httpbin-v1", "other", "10.1.1.1", nil)
	rc := routeConfig(t, other, push, "9080")
	domains := vhost(t, rc, reviewsFQDN+":9080").GetDomains()
	for _, d := range []string{"reviews", "reviews:9080"} {
		if slices.Contains(domains, d) {
			t.Errorf("proxy in namespace other got domain %q", d)
		}
	}
	for _, d := range []string{"reviews.default", "reviews.default:9080", "reviews.default.svc:9080", reviewsFQDN} {
		if !slices.Contains(domains, d) {
			t.Errorf("proxy in namespace other lacks domain %q: %v", d, domains)
		}
	}

	pp := routestest.Sidecar(t, push, "productpage-v1", "default", "10.1.0.1", nil)
	rc = routeConfig(t, pp, push, "8000")
	want := []string{
		"httpbin.other.svc.cluster.local", "httpbin.other.svc.cluster.local:8000",
		"httpbin.other.svc", "httpbin.other.svc:8000", "httpbin.other", "httpbin.other:8000",
		"10.0.1.1", "10.0.1.1:8000",
	}
	if got := vhost(t, rc, "httpbin.other.svc.cluster.local:8000").GetDomains(); !slices.Equal(got, want) {
		t.Errorf("httpbin domains = %v, want %v", got, want)
	}
	if hasVhost(rc, reviewsFQDN+":9080") {
		t.Error("route 8000 holds a 9080 service")
	}
}

// Services that share a VIP (or any domain) must not repeat it: Envoy rejects the whole route configuration.
func TestSidecarDuplicateDomainsDropped(t *testing.T) {
	services, pods := routestest.Bookinfo()
	a := routestest.HTTPService("a", "default", "10.0.9.9", 9080)
	b := routestest.HTTPService("b", "default", "10.0.9.9", 9080)
	ext := &model.Service{Hostname: "a.default", Namespace: "default", Ports: a.Ports, Addresses: []string{"10.0.9.9"}}
	services = append(services, a, b, ext)
	push := routestest.Push(services, pods, nil, nil)
	proxy := routestest.Sidecar(t, push, "productpage-v1", "default", "10.1.0.1", nil)
	rc := routeConfig(t, proxy, push, "9080") // generate() fails the test on any duplicate domain

	// Hostname order: "a.default" sorts first and claims its names and the shared VIP.
	if got, want := vhost(t, rc, "a.default:9080").GetDomains(), []string{"a.default", "a.default:9080", "10.0.9.9", "10.0.9.9:9080"}; !slices.Equal(got, want) {
		t.Errorf("a.default domains = %v, want %v", got, want)
	}
	want := []string{"a.default.svc.cluster.local", "a.default.svc.cluster.local:9080", "a", "a:9080", "a.default.svc", "a.default.svc:9080"}
	if got := vhost(t, rc, "a.default.svc.cluster.local:9080").GetDomains(); !slices.Equal(got, want) {
		t.Errorf("a domains = %v, want %v", got, want)
	}
	second := vhost(t, rc, "b.default.svc.cluster.local:9080").GetDomains()
	if slices.Contains(second, "10.0.9.9") || slices.Contains(second, "10.0.9.9:9080") {
		t.Errorf("b repeats the shared VIP: %v", second)
	}
	if !slices.Contains(second, "b") || !slices.Contains(second, "b.default:9080") {
		t.Errorf("b lost its own domains: %v", second)
	}
}

// REGISTRY_ONLY replaces allow_any with block_all, which answers 502 itself.
func TestSidecarRegistryOnly(t *testing.T) {
	services, pods := routestest.Bookinfo()
	push := routestest.Push(services, pods, nil, routestest.RegistryOnlyMesh())
	proxy := routestest.Sidecar(t, push, "productpage-v1", "default", "10.1.0.1", nil)
	rc := routeConfig(t, proxy, push, "9080")
	if hasVhost(rc, "allow_any") {
		t.Error("allow_any present under REGISTRY_ONLY")
	}
	bh := vhost(t, rc, "block_all")
	if !slices.Equal(bh.GetDomains(), []string{"*"}) {
		t.Errorf("block_all domains = %v", bh.GetDomains())
	}
	if got := bh.GetRoutes()[0].GetDirectResponse().GetStatus(); got != 502 {
		t.Errorf("block_all status = %d, want 502", got)
	}
}

// A VirtualService host that is no service gets a virtual host on the ports its destinations use.
func TestSidecarNonServiceVirtualServiceHost(t *testing.T) {
	push := bookinfoPush(vsConfig("api", &networking.VirtualService{
		Hosts: []string{"api.example.com"},
		Http:  []*networking.HTTPRoute{{Route: []*networking.HTTPRouteDestination{routeTo("reviews", "v1", 0)}}},
	}))
	proxy := routestest.Sidecar(t, push, "productpage-v1", "default", "10.1.0.1", nil)
	rc := routeConfig(t, proxy, push, "9080")
	vh := vhost(t, rc, "api.example.com:9080")
	if !slices.Equal(vh.GetDomains(), []string{"api.example.com", "api.example.com:9080"}) {
		t.Errorf("domains = %v", vh.GetDomains())
	}
	if c := action(t, vh.GetRoutes()[0]).GetCluster(); c != "outbound|9080|v1|"+reviewsFQDN {
		t.Errorf("cluster = %q", c)
	}
	if rc8000 := routeConfig(t, proxy, push, "8000"); hasVhost(rc8000, "api.example.com:8000") {
		t.Error("non-service host routed on a port it does not use")
	}
}

// A VirtualService whose rules all apply to another port leaves the service on the default route.
func TestSidecarVirtualServiceForOtherPortFallsBackToDefault(t *testing.T) {
	push := bookinfoPush(vsConfig("reviews", &networking.VirtualService{
		Hosts: []string{"reviews"},
		Http: []*networking.HTTPRoute{{
			Match: []*networking.HTTPMatchRequest{{Port: 8080}},
			Route: []*networking.HTTPRouteDestination{routeTo("reviews", "v2", 0)},
		}},
	}))
	proxy := routestest.Sidecar(t, push, "productpage-v1", "default", "10.1.0.1", nil)
	rs := vhost(t, routeConfig(t, proxy, push, "9080"), reviewsFQDN+":9080").GetRoutes()
	if len(rs) != 1 || rs[0].GetName() != "default" || action(t, rs[0]).GetCluster() != "outbound|9080||"+reviewsFQDN {
		t.Errorf("routes = %v, want the default route", rs)
	}
}

// Names that are not ports are unknown to sidecars and omitted; a port nobody serves still gets a route
// configuration (Envoy asked for it) with just the catch-all.
func TestSidecarUnknownNames(t *testing.T) {
	push := bookinfoPush()
	proxy := routestest.Sidecar(t, push, "productpage-v1", "default", "10.1.0.1", nil)
	rcs := generate(t, routes.NewGenerator(nil), proxy, push, "reviews:9080", "09080", "abc", "7777")
	if len(rcs) != 1 || rcs[0].GetName() != "7777" {
		t.Fatalf("got %v, want only 7777", rcs)
	}
	if got := vhostNames(rcs[0]); !slices.Equal(got, []string{"allow_any"}) {
		t.Errorf("vhosts = %v", got)
	}
}

// A Sidecar egress scope narrows the virtual hosts to the services it allows.
func TestSidecarScope(t *testing.T) {
	push := bookinfoPush(routestest.Config(model.KindSidecar, "default", "default", &networking.Sidecar{
		Egress: []*networking.IstioEgressListener{{Hosts: []string{"./reviews.default.svc.cluster.local"}}},
	}))
	proxy := routestest.Sidecar(t, push, "productpage-v1", "default", "10.1.0.1", nil)
	rc := routeConfig(t, proxy, push, "9080")
	if got := vhostNames(rc); !slices.Equal(got, []string{reviewsFQDN + ":9080", "allow_any"}) {
		t.Errorf("vhosts = %v", got)
	}
}
