package routes_test

import (
	"slices"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	corsfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	faultfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	envoytype "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/routes"
	"github.com/meshd/meshd/pkg/networking/routes/routestest"
	"github.com/meshd/meshd/pkg/networking/util"
)

// reviewsRoutes returns the routes of reviews' virtual host in route "9080" for the productpage sidecar, with
// the given reviews VirtualService rules (and extra configs).
func reviewsRoutes(t *testing.T, rules []*networking.HTTPRoute, extra ...*model.Config) []*route.Route {
	t.Helper()
	configs := append([]*model.Config{vsConfig("reviews", &networking.VirtualService{Hosts: []string{"reviews"}, Http: rules})}, extra...)
	push := bookinfoPush(configs...)
	proxy := routestest.Sidecar(t, push, "productpage-v1", "default", "10.1.0.1", nil)
	return vhost(t, routeConfig(t, proxy, push, "9080"), reviewsFQDN+":9080").GetRoutes()
}

// Bookinfo's "jason → v2, then 80/20 v1/v2": a header-matched single cluster, then exact weighted clusters.
func TestTranslateHeaderMatchThenWeights(t *testing.T) {
	rs := reviewsRoutes(t, []*networking.HTTPRoute{
		{
			Name:  "jason",
			Match: []*networking.HTTPMatchRequest{{Headers: map[string]*networking.StringMatch{"end-user": exact("jason")}}},
			Route: []*networking.HTTPRouteDestination{routeTo("reviews", "v2", 0)},
		},
		{
			Name:  "split",
			Route: []*networking.HTTPRouteDestination{routeTo("reviews", "v1", 80), routeTo("reviews", "v2", 20)},
		},
	})
	if len(rs) != 2 {
		t.Fatalf("routes = %d, want 2", len(rs))
	}
	assertProto(t, "jason match", rs[0].GetMatch(), &route.RouteMatch{
		PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"},
		Headers: []*route.HeaderMatcher{{
			Name:                 "end-user",
			HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: "jason"}}},
		}},
	})
	if rs[0].GetName() != "jason" || action(t, rs[0]).GetCluster() != "outbound|9080|v2|"+reviewsFQDN {
		t.Errorf("jason route = %s → %q", rs[0].GetName(), action(t, rs[0]).GetCluster())
	}
	assertProto(t, "80/20", action(t, rs[1]).GetWeightedClusters(), &route.WeightedCluster{Clusters: []*route.WeightedCluster_ClusterWeight{
		{Name: "outbound|9080|v1|" + reviewsFQDN, Weight: wrapperspb.UInt32(80)},
		{Name: "outbound|9080|v2|" + reviewsFQDN, Weight: wrapperspb.UInt32(20)},
	}})
	if rs[1].GetName() != "split" {
		t.Errorf("name = %q", rs[1].GetName())
	}
	if p := action(t, rs[1]).GetRetryPolicy(); p.GetNumRetries().GetValue() != 2 || p.GetRetryOn() != routes.DefaultRetryOn {
		t.Errorf("weighted route lacks the default retry policy: %v", p)
	}
	// The VirtualService is named in the route metadata, as Istio does.
	if got := rs[1].GetMetadata().GetFilterMetadata()["istio"].GetFields()["config"].GetStringValue(); got != "/apis/networking.istio.io/v1alpha3/namespaces/default/virtual-service/reviews" {
		t.Errorf("metadata config = %q", got)
	}
}

// Each match block becomes a route with the same action; rules after a catch-all are unreachable and dropped.
func TestTranslateMatchBlocksAndCatchAll(t *testing.T) {
	rs := reviewsRoutes(t, []*networking.HTTPRoute{
		{
			Name: "r",
			Match: []*networking.HTTPMatchRequest{
				{Name: "exact", Uri: exact("/login")},
				{Uri: regex("/api/v[0-9]+/.*"), IgnoreUriCase: true},
				{
					Uri:            prefix("/static"),
					IgnoreUriCase:  true,
					Method:         exact("GET"),
					Authority:      prefix("reviews"),
					Scheme:         exact("http"),
					Headers:        map[string]*networking.StringMatch{"x-b": regex("a+"), "x-a": {}, "x-c": prefix("")},
					WithoutHeaders: map[string]*networking.StringMatch{"x-debug": {}, "x-env": exact("prod")},
					QueryParams:    map[string]*networking.StringMatch{"q": exact("1"), "p": {}, "r": regex("[a-z]+")},
				},
			},
			Route: []*networking.HTTPRouteDestination{routeTo("reviews", "v1", 0)},
		},
		{Name: "all", Route: []*networking.HTTPRouteDestination{routeTo("reviews", "v2", 0)}},
		{Name: "unreachable", Route: []*networking.HTTPRouteDestination{routeTo("reviews", "v3", 0)}},
	})
	var names []string
	for _, r := range rs {
		names = append(names, r.GetName())
	}
	if want := []string{"r.exact", "r", "r", "all"}; !slices.Equal(names, want) {
		t.Fatalf("route names = %v, want %v", names, want)
	}
	for _, r := range rs[:3] {
		if c := action(t, r).GetCluster(); c != "outbound|9080|v1|"+reviewsFQDN {
			t.Errorf("route %s cluster = %q", r.GetName(), c)
		}
	}
	assertProto(t, "exact uri", rs[0].GetMatch(), &route.RouteMatch{PathSpecifier: &route.RouteMatch_Path{Path: "/login"}})
	assertProto(t, "regex uri", rs[1].GetMatch(), &route.RouteMatch{
		PathSpecifier: &route.RouteMatch_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: "(?i)/api/v[0-9]+/.*"}},
		CaseSensitive: wrapperspb.Bool(false),
	})
	sm := func(m *matcher.StringMatcher) *route.HeaderMatcher_StringMatch {
		return &route.HeaderMatcher_StringMatch{StringMatch: m}
	}
	present := &route.HeaderMatcher_PresentMatch{PresentMatch: true}
	assertProto(t, "full match", rs[2].GetMatch(), &route.RouteMatch{
		PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/static"},
		CaseSensitive: wrapperspb.Bool(false),
		Headers: []*route.HeaderMatcher{
			{Name: "x-a", HeaderMatchSpecifier: present},
			{Name: "x-b", HeaderMatchSpecifier: sm(&matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: "a+"}}})},
			{Name: "x-c", HeaderMatchSpecifier: present},
			{Name: "x-debug", HeaderMatchSpecifier: present, InvertMatch: true},
			{Name: "x-env", HeaderMatchSpecifier: sm(&matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: "prod"}}), InvertMatch: true},
			{Name: ":method", HeaderMatchSpecifier: sm(&matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: "GET"}})},
			{Name: ":authority", HeaderMatchSpecifier: sm(&matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: "reviews"}})},
			{Name: ":scheme", HeaderMatchSpecifier: sm(&matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: "http"}})},
		},
		QueryParameters: []*route.QueryParameterMatcher{
			{Name: "p", QueryParameterMatchSpecifier: &route.QueryParameterMatcher_PresentMatch{PresentMatch: true}},
			{Name: "q", QueryParameterMatchSpecifier: &route.QueryParameterMatcher_StringMatch{StringMatch: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: "1"}}}},
			{Name: "r", QueryParameterMatchSpecifier: &route.QueryParameterMatcher_StringMatch{StringMatch: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: "[a-z]+"}}}}},
		},
	})
}

// Port matches select rules per route configuration; a match block for another port does not turn its rule
// into a catch-all.
func TestTranslatePortMatch(t *testing.T) {
	rs := reviewsRoutes(t, []*networking.HTTPRoute{
		{Name: "other-port", Match: []*networking.HTTPMatchRequest{{Port: 8080}}, Route: []*networking.HTTPRouteDestination{routeTo("reviews", "v3", 0)}},
		{Name: "this-port", Match: []*networking.HTTPMatchRequest{{Port: 9080, Uri: prefix("/x")}}, Route: []*networking.HTTPRouteDestination{routeTo("reviews", "v2", 0)}},
		{Name: "rest", Route: []*networking.HTTPRouteDestination{routeTo("reviews", "v1", 0)}},
	})
	var names []string
	for _, r := range rs {
		names = append(names, r.GetName())
	}
	if !slices.Equal(names, []string{"this-port", "rest"}) {
		t.Errorf("routes = %v, want [this-port rest]", names)
	}
}

func TestTranslateRewrite(t *testing.T) {
	rs := reviewsRoutes(t, []*networking.HTTPRoute{
		{
			Match:   []*networking.HTTPMatchRequest{{Uri: prefix("/v1/api")}},
			Rewrite: &networking.HTTPRewrite{Uri: "/api", Authority: "reviews.internal"},
			Route:   []*networking.HTTPRouteDestination{routeTo("reviews", "v1", 0)},
		},
		{
			Match:   []*networking.HTTPMatchRequest{{Uri: regex("^/old/(.*)$")}},
			Rewrite: &networking.HTTPRewrite{UriRegexRewrite: &networking.RegexRewrite{Match: "^/old/(.*)$", Rewrite: "/new/\\1"}},
			Route:   []*networking.HTTPRouteDestination{routeTo("reviews", "v1", 0)},
		},
	})
	a := action(t, rs[0])
	if a.GetPrefixRewrite() != "/api" || a.GetHostRewriteLiteral() != "reviews.internal" {
		t.Errorf("rewrite = %q host %q", a.GetPrefixRewrite(), a.GetHostRewriteLiteral())
	}
	if _, ok := rs[0].GetMatch().GetPathSpecifier().(*route.RouteMatch_Prefix); !ok || rs[0].GetMatch().GetPrefix() != "/v1/api" {
		t.Errorf("match = %v", rs[0].GetMatch())
	}
	assertProto(t, "regex rewrite", action(t, rs[1]).GetRegexRewrite(), &matcher.RegexMatchAndSubstitute{
		Pattern: &matcher.RegexMatcher{Regex: "^/old/(.*)$"}, Substitution: "/new/\\1",
	})
}

func TestTranslateRedirectAndDirectResponse(t *testing.T) {
	rs := reviewsRoutes(t, []*networking.HTTPRoute{
		{
			Match: []*networking.HTTPMatchRequest{{Uri: exact("/old")}},
			Redirect: &networking.HTTPRedirect{Uri: "/new", Authority: "example.com", Scheme: "https", RedirectCode: 302,
				RedirectPort: &networking.HTTPRedirect_Port{Port: 8443}},
		},
		{
			Match:    []*networking.HTTPMatchRequest{{Uri: exact("/here")}},
			Redirect: &networking.HTTPRedirect{Authority: "example.com", RedirectPort: &networking.HTTPRedirect_DerivePort{DerivePort: networking.HTTPRedirect_FROM_REQUEST_PORT}},
		},
		{
			Match:          []*networking.HTTPMatchRequest{{Uri: exact("/teapot")}},
			DirectResponse: &networking.HTTPDirectResponse{Status: 418, Body: &networking.HTTPBody{Specifier: &networking.HTTPBody_String_{String_: "short and stout"}}},
		},
	})
	assertProto(t, "redirect", rs[0].GetRedirect(), &route.RedirectAction{
		HostRedirect:           "example.com",
		PortRedirect:           8443,
		PathRewriteSpecifier:   &route.RedirectAction_PathRedirect{PathRedirect: "/new"},
		SchemeRewriteSpecifier: &route.RedirectAction_SchemeRedirect{SchemeRedirect: "https"},
		ResponseCode:           route.RedirectAction_FOUND,
	})
	if got := rs[1].GetRedirect(); got.GetPortRedirect() != 9080 || got.GetResponseCode() != route.RedirectAction_MOVED_PERMANENTLY {
		t.Errorf("derived-port redirect = %v, want port 9080 and 301", got)
	}
	assertProto(t, "direct response", rs[2].GetDirectResponse(), &route.DirectResponseAction{
		Status: 418, Body: &core.DataSource{Specifier: &core.DataSource_InlineString{InlineString: "short and stout"}},
	})
}

func TestTranslateTimeoutAndRetries(t *testing.T) {
	rs := reviewsRoutes(t, []*networking.HTTPRoute{
		{
			Match:   []*networking.HTTPMatchRequest{{Uri: prefix("/a")}},
			Timeout: seconds(5),
			Retries: &networking.HTTPRetry{Attempts: 3, PerTryTimeout: seconds(2), RetryOn: "5xx, 503,gateway-error"},
			Route:   []*networking.HTTPRouteDestination{routeTo("reviews", "v1", 0)},
		},
		{
			Match:   []*networking.HTTPMatchRequest{{Uri: prefix("/b")}},
			Retries: &networking.HTTPRetry{Attempts: 0},
			Route:   []*networking.HTTPRouteDestination{routeTo("reviews", "v1", 0)},
		},
		{
			Match:   []*networking.HTTPMatchRequest{{Uri: prefix("/c")}},
			Retries: &networking.HTTPRetry{Attempts: 4, RetryIgnorePreviousHosts: wrapperspb.Bool(false), Backoff: seconds(1)},
			Route:   []*networking.HTTPRouteDestination{routeTo("reviews", "v1", 0)},
		},
	})
	a := action(t, rs[0])
	if a.GetTimeout().AsDuration().Seconds() != 5 {
		t.Errorf("timeout = %v", a.GetTimeout())
	}
	p := a.GetRetryPolicy()
	if p.GetNumRetries().GetValue() != 3 || p.GetPerTryTimeout().AsDuration().Seconds() != 2 ||
		p.GetRetryOn() != "5xx,gateway-error,retriable-status-codes" || !slices.Equal(p.GetRetriableStatusCodes(), []uint32{503}) {
		t.Errorf("retry policy = %v", p)
	}
	if len(p.GetRetryHostPredicate()) != 1 || p.GetHostSelectionRetryMaxAttempts() != 5 {
		t.Errorf("retry policy lost the previous-hosts predicate: %v", p)
	}
	b := action(t, rs[1])
	if b.GetRetryPolicy() != nil {
		t.Errorf("attempts 0 should disable retries, got %v", b.GetRetryPolicy())
	}
	if b.GetTimeout() == nil || b.GetTimeout().AsDuration() != 0 {
		t.Errorf("default timeout = %v, want explicit 0s", b.GetTimeout())
	}
	c := action(t, rs[2]).GetRetryPolicy()
	if c.GetNumRetries().GetValue() != 4 || c.GetRetryOn() != routes.DefaultRetryOn || len(c.GetRetryHostPredicate()) != 0 ||
		c.GetRetryBackOff().GetBaseInterval().AsDuration().Seconds() != 1 {
		t.Errorf("retry policy = %v", c)
	}
}

func TestTranslateFault(t *testing.T) {
	rs := reviewsRoutes(t, []*networking.HTTPRoute{{
		Fault: &networking.HTTPFaultInjection{
			Delay: &networking.HTTPFaultInjection_Delay{
				HttpDelayType: &networking.HTTPFaultInjection_Delay_FixedDelay{FixedDelay: seconds(7)},
				Percentage:    &networking.Percent{Value: 12.5},
			},
			Abort: &networking.HTTPFaultInjection_Abort{
				ErrorType: &networking.HTTPFaultInjection_Abort_HttpStatus{HttpStatus: 500},
			},
		},
		Route: []*networking.HTTPRouteDestination{routeTo("reviews", "v1", 0)},
	}, {
		Match: []*networking.HTTPMatchRequest{{Uri: prefix("/grpc")}},
		Fault: &networking.HTTPFaultInjection{Abort: &networking.HTTPFaultInjection_Abort{
			ErrorType:  &networking.HTTPFaultInjection_Abort_GrpcStatus{GrpcStatus: "UNAVAILABLE"},
			Percentage: &networking.Percent{Value: 50},
		}},
		Route: []*networking.HTTPRouteDestination{routeTo("reviews", "v1", 0)},
	}})
	cfg := rs[0].GetTypedPerFilterConfig()[routes.FaultFilterName]
	if cfg == nil {
		t.Fatalf("no %s per-filter config: %v", routes.FaultFilterName, rs[0].GetTypedPerFilterConfig())
	}
	got := &faultfilter.HTTPFault{}
	if err := cfg.UnmarshalTo(got); err != nil {
		t.Fatal(err)
	}
	assertProto(t, "fault", got, &faultfilter.HTTPFault{
		Delay: &faultcommon.FaultDelay{
			FaultDelaySecifier: &faultcommon.FaultDelay_FixedDelay{FixedDelay: seconds(7)},
			Percentage:         &envoytype.FractionalPercent{Numerator: 125000, Denominator: envoytype.FractionalPercent_MILLION},
		},
		Abort: &faultfilter.FaultAbort{
			ErrorType:  &faultfilter.FaultAbort_HttpStatus{HttpStatus: 500},
			Percentage: &envoytype.FractionalPercent{Numerator: 100, Denominator: envoytype.FractionalPercent_HUNDRED},
		},
	})
	// The second rule has a match, so the first (catch-all) rule ends translation: only one route.
	if len(rs) != 1 {
		t.Errorf("routes after a catch-all rule were kept: %d", len(rs))
	}

	grpcOnly := reviewsRoutes(t, []*networking.HTTPRoute{{
		Fault: &networking.HTTPFaultInjection{Abort: &networking.HTTPFaultInjection_Abort{
			ErrorType: &networking.HTTPFaultInjection_Abort_GrpcStatus{GrpcStatus: "UNAVAILABLE"},
		}},
		Route: []*networking.HTTPRouteDestination{routeTo("reviews", "v1", 0)},
	}})
	got = &faultfilter.HTTPFault{}
	if err := grpcOnly[0].GetTypedPerFilterConfig()[routes.FaultFilterName].UnmarshalTo(got); err != nil {
		t.Fatal(err)
	}
	if got.GetAbort().GetGrpcStatus() != 14 {
		t.Errorf("grpc abort = %v, want status 14", got.GetAbort())
	}
}

func TestTranslateHeadersMirrorCORS(t *testing.T) {
	rs := reviewsRoutes(t, []*networking.HTTPRoute{{
		Headers: &networking.Headers{
			Request:  &networking.Headers_HeaderOperations{Set: map[string]string{"x-set": "1", ":path": "/no"}, Add: map[string]string{"x-add": "2"}, Remove: []string{"x-rm", "host"}},
			Response: &networking.Headers_HeaderOperations{Set: map[string]string{"x-resp": "3"}, Remove: []string{"server"}},
		},
		Route: []*networking.HTTPRouteDestination{
			{Destination: dest("reviews", "v1"), Weight: 60, Headers: &networking.Headers{
				Request: &networking.Headers_HeaderOperations{Set: map[string]string{"x-dest": "v1", ":authority": "v1.reviews"}},
			}},
			{Destination: dest("reviews", "v2"), Weight: 40},
		},
		Mirror:           dest("ratings", ""),
		MirrorPercentage: &networking.Percent{Value: 25},
		Mirrors:          []*networking.HTTPMirrorPolicy{{Destination: &networking.Destination{Host: "details", Port: &networking.PortSelector{Number: 9080}}}},
		CorsPolicy: &networking.CorsPolicy{
			AllowOrigins:     []*networking.StringMatch{exact("https://a.example"), regex(".*\\.b\\.example")},
			AllowMethods:     []string{"GET", "POST"},
			AllowHeaders:     []string{"x-a"},
			ExposeHeaders:    []string{"x-b", "x-c"},
			MaxAge:           seconds(86400),
			AllowCredentials: wrapperspb.Bool(true),
		},
	}})
	r := rs[0]
	hv := func(k, v string, a core.HeaderValueOption_HeaderAppendAction) *core.HeaderValueOption {
		return &core.HeaderValueOption{Header: &core.HeaderValue{Key: k, Value: v}, AppendAction: a}
	}
	assertProto(t, "request headers", &route.Route{RequestHeadersToAdd: r.GetRequestHeadersToAdd(), RequestHeadersToRemove: r.GetRequestHeadersToRemove()},
		&route.Route{
			RequestHeadersToAdd: []*core.HeaderValueOption{
				hv("x-set", "1", core.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD),
				hv("x-add", "2", core.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD),
			},
			RequestHeadersToRemove: []string{"x-rm"},
		})
	if len(r.GetResponseHeadersToAdd()) != 1 || !slices.Equal(r.GetResponseHeadersToRemove(), []string{"server"}) {
		t.Errorf("response headers = %v / %v", r.GetResponseHeadersToAdd(), r.GetResponseHeadersToRemove())
	}
	wc := action(t, r).GetWeightedClusters().GetClusters()
	if len(wc) != 2 || wc[0].GetHostRewriteLiteral() != "v1.reviews" || len(wc[0].GetRequestHeadersToAdd()) != 1 ||
		wc[0].GetRequestHeadersToAdd()[0].GetHeader().GetKey() != "x-dest" || len(wc[1].GetRequestHeadersToAdd()) != 0 {
		t.Errorf("destination headers = %v", wc)
	}
	mirrors := action(t, r).GetRequestMirrorPolicies()
	assertProto(t, "mirror", &route.RouteAction{RequestMirrorPolicies: mirrors}, &route.RouteAction{RequestMirrorPolicies: []*route.RouteAction_RequestMirrorPolicy{
		{Cluster: "outbound|9080||" + ratingsFQDN, RuntimeFraction: &core.RuntimeFractionalPercent{DefaultValue: &envoytype.FractionalPercent{Numerator: 250000, Denominator: envoytype.FractionalPercent_MILLION}}},
		{Cluster: "outbound|9080||details.default.svc.cluster.local", RuntimeFraction: &core.RuntimeFractionalPercent{DefaultValue: &envoytype.FractionalPercent{Numerator: 100, Denominator: envoytype.FractionalPercent_HUNDRED}}},
	}})
	cors := &corsfilter.CorsPolicy{}
	if err := r.GetTypedPerFilterConfig()[routes.CORSFilterName].UnmarshalTo(cors); err != nil {
		t.Fatalf("cors per-filter config: %v", err)
	}
	assertProto(t, "cors", cors, &corsfilter.CorsPolicy{
		AllowOriginStringMatch: []*matcher.StringMatcher{
			{MatchPattern: &matcher.StringMatcher_Exact{Exact: "https://a.example"}},
			{MatchPattern: &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: ".*\\.b\\.example"}}},
		},
		AllowMethods:     "GET,POST",
		AllowHeaders:     "x-a",
		ExposeHeaders:    "x-b,x-c",
		MaxAge:           "86400",
		AllowCredentials: wrapperspb.Bool(true),
		FilterEnabled:    &core.RuntimeFractionalPercent{DefaultValue: &envoytype.FractionalPercent{Numerator: 100, Denominator: envoytype.FractionalPercent_HUNDRED}},
	})
}

// A destination without port goes to the only port of its service, else to the routed port; an explicit
// port wins. Hosts resolve against the VirtualService's namespace.
func TestTranslateDestinationPort(t *testing.T) {
	services, pods := routestest.Bookinfo()
	multi := routestest.Service("multi", "default", "10.0.0.20",
		&model.Port{Name: "http", Port: 9080, Protocol: model.ProtocolHTTP},
		&model.Port{Name: "http-admin", Port: 9090, Protocol: model.ProtocolHTTP})
	services = append(services, multi)
	push := routestest.Push(services, pods, []*model.Config{vsConfig("multi", &networking.VirtualService{
		Hosts: []string{"multi"},
		Http: []*networking.HTTPRoute{
			{Match: []*networking.HTTPMatchRequest{{Uri: prefix("/httpbin")}}, Route: []*networking.HTTPRouteDestination{routeTo("httpbin.other", "", 0)}},
			{Match: []*networking.HTTPMatchRequest{{Uri: prefix("/admin")}}, Route: []*networking.HTTPRouteDestination{{Destination: &networking.Destination{Host: "multi", Port: &networking.PortSelector{Number: 9090}}}}},
			{Route: []*networking.HTTPRouteDestination{routeTo("multi", "", 0)}},
		},
	})}, nil)
	proxy := routestest.Sidecar(t, push, "productpage-v1", "default", "10.1.0.1", nil)
	rs := vhost(t, routeConfig(t, proxy, push, "9090"), "multi.default.svc.cluster.local:9090").GetRoutes()
	want := []string{"outbound|8000||httpbin.other.svc.cluster.local", "outbound|9090||multi.default.svc.cluster.local", "outbound|9090||multi.default.svc.cluster.local"}
	for i, r := range rs {
		if c := action(t, r).GetCluster(); c != want[i] {
			t.Errorf("route %d cluster = %q, want %q", i, c, want[i])
		}
	}
	rs = vhost(t, routeConfig(t, proxy, push, "9080"), "multi.default.svc.cluster.local:9080").GetRoutes()
	if c := action(t, rs[2]).GetCluster(); c != "outbound|9080||multi.default.svc.cluster.local" {
		t.Errorf("route on 9080 cluster = %q", c)
	}
}

// sourceLabels and sourceNamespace make a rule proxy-specific: it is dropped for proxies it does not select,
// also when route configurations are cached and shared.
func TestTranslateSourceLabelsAndNamespace(t *testing.T) {
	push := bookinfoPush(vsConfig("reviews", &networking.VirtualService{
		Hosts: []string{"reviews"},
		Http: []*networking.HTTPRoute{
			{Name: "from-productpage", Match: []*networking.HTTPMatchRequest{{Uri: prefix("/p"), SourceLabels: map[string]string{"app": "productpage"}}},
				Route: []*networking.HTTPRouteDestination{routeTo("reviews", "v2", 0)}},
			{Name: "from-other-ns", Match: []*networking.HTTPMatchRequest{{Uri: prefix("/o"), SourceNamespace: "other"}},
				Route: []*networking.HTTPRouteDestination{routeTo("reviews", "v3", 0)}},
			{Name: "gateway-only", Match: []*networking.HTTPMatchRequest{{Gateways: []string{"istio-system/ingress"}}},
				Route: []*networking.HTTPRouteDestination{routeTo("reviews", "v3", 0)}},
			{Name: "rest", Route: []*networking.HTTPRouteDestination{routeTo("reviews", "v1", 0)}},
		},
	}))
	names := func(rc []*route.RouteConfiguration) []string {
		var out []string
		for _, r := range vhost(t, rc[0], reviewsFQDN+":9080").GetRoutes() {
			out = append(out, r.GetName())
		}
		return out
	}
	gen := routes.NewGenerator(util.NewCache(100))
	pp := routestest.Sidecar(t, push, "productpage-v1", "default", "10.1.0.1", nil)
	ratings := routestest.Sidecar(t, push, "ratings-v1", "default", "10.1.0.5", nil)
	httpbin := routestest.Sidecar(t, push, "httpbin-v1", "other", "10.1.1.1", nil)
	if got := names(generate(t, gen, pp, push, "9080")); !slices.Equal(got, []string{"from-productpage", "rest"}) {
		t.Errorf("productpage routes = %v", got)
	}
	if got := names(generate(t, gen, ratings, push, "9080")); !slices.Equal(got, []string{"rest"}) {
		t.Errorf("ratings routes = %v (source-label rule must be dropped, also with a shared cache)", got)
	}
	if got := names(generate(t, gen, httpbin, push, "9080")); !slices.Equal(got, []string{"from-other-ns", "rest"}) {
		t.Errorf("httpbin routes = %v", got)
	}
}

// The DestinationRule's consistent hash becomes the route's hash policy, and retries may then land on the same
// host (no previous-hosts predicate). Port-level and subset settings override the top level.
func TestTranslateHashPolicy(t *testing.T) {
	ch := func(k *networking.LoadBalancerSettings_ConsistentHashLB) *networking.LoadBalancerSettings {
		return &networking.LoadBalancerSettings{LbPolicy: &networking.LoadBalancerSettings_ConsistentHash{ConsistentHash: k}}
	}
	dr := routestest.Config(model.KindDestinationRule, "default", "reviews", &networking.DestinationRule{
		Host: "reviews",
		TrafficPolicy: &networking.TrafficPolicy{
			LoadBalancer: ch(&networking.LoadBalancerSettings_ConsistentHashLB{HashKey: &networking.LoadBalancerSettings_ConsistentHashLB_HttpHeaderName{HttpHeaderName: "x-user"}}),
		},
		Subsets: []*networking.Subset{
			{Name: "v1"},
			{Name: "v2", TrafficPolicy: &networking.TrafficPolicy{LoadBalancer: ch(&networking.LoadBalancerSettings_ConsistentHashLB{
				HashKey: &networking.LoadBalancerSettings_ConsistentHashLB_HttpCookie{HttpCookie: &networking.LoadBalancerSettings_ConsistentHashLB_HTTPCookie{Name: "session", Path: "/", Ttl: seconds(60)}}})}},
			{Name: "v3", TrafficPolicy: &networking.TrafficPolicy{LoadBalancer: ch(&networking.LoadBalancerSettings_ConsistentHashLB{
				HashKey: &networking.LoadBalancerSettings_ConsistentHashLB_UseSourceIp{UseSourceIp: true}})}},
		},
	})
	rs := reviewsRoutes(t, []*networking.HTTPRoute{
		{Match: []*networking.HTTPMatchRequest{{Uri: prefix("/v1")}}, Route: []*networking.HTTPRouteDestination{routeTo("reviews", "v1", 0)}},
		{Match: []*networking.HTTPMatchRequest{{Uri: prefix("/v2")}}, Route: []*networking.HTTPRouteDestination{routeTo("reviews", "v2", 0)}},
		{Match: []*networking.HTTPMatchRequest{{Uri: prefix("/v3")}}, Route: []*networking.HTTPRouteDestination{routeTo("reviews", "v3", 0)}},
		{Match: []*networking.HTTPMatchRequest{{Uri: prefix("/mixed")}}, Route: []*networking.HTTPRouteDestination{routeTo("reviews", "v1", 50), routeTo("reviews", "v2", 50)}},
	}, dr)
	header := &route.RouteAction_HashPolicy{PolicySpecifier: &route.RouteAction_HashPolicy_Header_{Header: &route.RouteAction_HashPolicy_Header{HeaderName: "x-user"}}}
	cookie := &route.RouteAction_HashPolicy{PolicySpecifier: &route.RouteAction_HashPolicy_Cookie_{Cookie: &route.RouteAction_HashPolicy_Cookie{Name: "session", Path: "/", Ttl: seconds(60)}}}
	srcIP := &route.RouteAction_HashPolicy{PolicySpecifier: &route.RouteAction_HashPolicy_ConnectionProperties_{ConnectionProperties: &route.RouteAction_HashPolicy_ConnectionProperties{SourceIp: true}}}
	for i, want := range []*route.RouteAction_HashPolicy{header, cookie, srcIP} {
		a := action(t, rs[i])
		if len(a.GetHashPolicy()) != 1 {
			t.Errorf("route %d hash policy = %v", i, a.GetHashPolicy())
			continue
		}
		assertProto(t, "hash policy", a.GetHashPolicy()[0], want)
		if len(a.GetRetryPolicy().GetRetryHostPredicate()) != 0 {
			t.Errorf("route %d: previous-hosts predicate with consistent hash", i)
		}
	}
	if hp := action(t, rs[3]).GetHashPolicy(); len(hp) != 0 {
		t.Errorf("destinations with different hash policies got %v", hp)
	}

	// Without VirtualService, the default route carries it too.
	push := bookinfoPush(dr)
	proxy := routestest.Sidecar(t, push, "productpage-v1", "default", "10.1.0.1", nil)
	def := action(t, vhost(t, routeConfig(t, proxy, push, "9080"), reviewsFQDN+":9080").GetRoutes()[0])
	if len(def.GetHashPolicy()) != 1 || len(def.GetRetryPolicy().GetRetryHostPredicate()) != 0 || def.GetRetryPolicy().GetNumRetries().GetValue() != 2 {
		t.Errorf("default route = %v", def)
	}
}

// Rules that cannot become valid Envoy config are dropped instead of breaking the route configuration.
func TestTranslateDropsInvalidRules(t *testing.T) {
	rs := reviewsRoutes(t, []*networking.HTTPRoute{
		{Name: "zero-weights", Match: []*networking.HTTPMatchRequest{{Uri: prefix("/z")}}, Route: []*networking.HTTPRouteDestination{routeTo("reviews", "v1", 0), routeTo("reviews", "v2", 0)}},
		{Name: "bad-status", Match: []*networking.HTTPMatchRequest{{Uri: prefix("/s")}}, DirectResponse: &networking.HTTPDirectResponse{Status: 99}},
		{Name: "nothing", Match: []*networking.HTTPMatchRequest{{Uri: prefix("/n")}}},
		{Name: "delegate", Delegate: &networking.Delegate{Name: "x"}},
		{Name: "bad-regex", Match: []*networking.HTTPMatchRequest{
			{Uri: regex("(")},
			{Headers: map[string]*networking.StringMatch{"x-a": regex("[z-a]")}},
			{Uri: prefix("/ok"), Headers: map[string]*networking.StringMatch{"X-User": exact("u")}},
		}, Route: []*networking.HTTPRouteDestination{routeTo("reviews", "v3", 0)}},
		{Name: "zero-dropped", Route: []*networking.HTTPRouteDestination{routeTo("reviews", "v1", 100), routeTo("reviews", "v2", 0)}},
	})
	if len(rs) != 2 || rs[0].GetName() != "bad-regex" || rs[1].GetName() != "zero-dropped" {
		t.Fatalf("routes = %v", rs)
	}
	// Only the valid match block is left, with its header name lower-cased (grpc-go never matches capitals).
	if rs[0].GetMatch().GetPrefix() != "/ok" || rs[0].GetMatch().GetHeaders()[0].GetName() != "x-user" {
		t.Errorf("bad-regex route match = %v", rs[0].GetMatch())
	}
	if c := action(t, rs[1]).GetCluster(); c != "outbound|9080|v1|"+reviewsFQDN {
		t.Errorf("a zero-weight destination among two should leave a single cluster, got %v", action(t, rs[1]))
	}
}
