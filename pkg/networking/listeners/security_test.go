package listeners_test

import (
	"slices"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacpb "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbachttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnet "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	xdstype "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
	sec "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/listeners"
	"github.com/meshd/meshd/pkg/networking/routes/routestest"
	"github.com/meshd/meshd/pkg/networking/util"
)

func sdsSecret(name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: &core.ConfigSource{
		ConfigSourceSpecifier: &core.ConfigSource_ApiConfigSource{ApiConfigSource: &core.ApiConfigSource{
			ApiType: core.ApiConfigSource_GRPC, SetNodeOnFirstMessageOnly: true, TransportApiVersion: core.ApiVersion_V3,
			GrpcServices: []*core.GrpcService{{TargetSpecifier: &core.GrpcService_EnvoyGrpc_{EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: "sds-grpc"}}}},
		}},
		ResourceApiVersion: core.ApiVersion_V3,
	}}
}

// wantDownstream is the sidecar's server side of mesh mTLS, spelled out.
func wantDownstream(alpn ...string) *tlsv3.DownstreamTlsContext {
	return &tlsv3.DownstreamTlsContext{
		RequireClientCertificate: wrapperspb.Bool(true),
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsParams: &tlsv3.TlsParameters{
				TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_2,
				TlsMaximumProtocolVersion: tlsv3.TlsParameters_TLSv1_3,
				CipherSuites: []string{"ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES128-GCM-SHA256",
					"ECDHE-RSA-AES128-GCM-SHA256", "AES256-GCM-SHA384", "AES128-GCM-SHA256"},
			},
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sdsSecret("default")},
			ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{
				CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
					DefaultValidationContext:         &tlsv3.CertificateValidationContext{},
					ValidationContextSdsSecretConfig: sdsSecret("ROOTCA"),
				},
			},
			AlpnProtocols: alpn,
		},
	}
}

func downstreamOf(t *testing.T, fc *listener.FilterChain) *tlsv3.DownstreamTlsContext {
	t.Helper()
	ts := fc.GetTransportSocket()
	if ts == nil {
		return nil
	}
	if ts.GetName() != "envoy.transport_sockets.tls" {
		t.Errorf("chain %s: transport socket %q", fc.GetName(), ts.GetName())
	}
	ctx := &tlsv3.DownstreamTlsContext{}
	if err := ts.GetTypedConfig().UnmarshalTo(ctx); err != nil {
		t.Fatal(err)
	}
	return ctx
}

// chainsFor returns the chains of virtualInbound matching a destination port (0: the port-less passthrough chains).
func chainsFor(vi *listener.Listener, port uint32) []*listener.FilterChain {
	var out []*listener.FilterChain
	for _, fc := range vi.GetFilterChains() {
		if fc.GetFilterChainMatch().GetDestinationPort().GetValue() == port && fc.GetName() != listeners.VirtualInboundBlackhole {
			out = append(out, fc)
		}
	}
	return out
}

// match is a chain's (transport protocol, ALPNs, terminates mTLS) triple, for compact comparison.
type match struct {
	tp   string
	alpn []string
	mtls bool
}

func matchesOf(t *testing.T, fcs []*listener.FilterChain) []match {
	t.Helper()
	var out []match
	for _, fc := range fcs {
		out = append(out, match{fc.GetFilterChainMatch().GetTransportProtocol(), fc.GetFilterChainMatch().GetApplicationProtocols(), fc.GetTransportSocket() != nil})
	}
	return out
}

func equalMatches(a, b []match) bool {
	return slices.EqualFunc(a, b, func(x, y match) bool { return x.tp == y.tp && x.mtls == y.mtls && slices.Equal(x.alpn, y.alpn) })
}

var (
	mtlsALPNs     = []string{"istio", "istio-peer-exchange", "istio-http/1.0", "istio-http/1.1", "istio-h2"}
	mtlsHTTPALPNs = append(slices.Clone(mtlsALPNs), "h2")
	strictChain   = []match{{"tls", nil, true}}
	disableChain  = []match{{"raw_buffer", nil, false}}
	permHTTP      = []match{{"tls", mtlsHTTPALPNs, true}, {"raw_buffer", nil, false}}
	permTCP       = []match{{"tls", mtlsALPNs, true}, {"raw_buffer", nil, false}, {"tls", nil, false}}
)

func peerAuthn(ns, name string, selector map[string]string, mode sec.PeerAuthentication_MutualTLS_Mode,
	ports map[uint32]sec.PeerAuthentication_MutualTLS_Mode,
) *model.Config {
	spec := &sec.PeerAuthentication{Mtls: &sec.PeerAuthentication_MutualTLS{Mode: mode}}
	if selector != nil {
		spec.Selector = &typev1beta1.WorkloadSelector{MatchLabels: selector}
	}
	for p, m := range ports {
		if spec.PortLevelMtls == nil {
			spec.PortLevelMtls = map[uint32]*sec.PeerAuthentication_MutualTLS{}
		}
		spec.PortLevelMtls[p] = &sec.PeerAuthentication_MutualTLS{Mode: m}
	}
	return routestest.Config(model.KindPeerAuthentication, ns, name, spec)
}

// reviewsMesh is Bookinfo where reviews also serves TCP on 7000.
func reviewsMesh(configs ...*model.Config) (*model.PushContext, []*model.Service, []*model.Workload) {
	services, pods := routestest.Bookinfo()
	services[1] = routestest.Service("reviews", "default", "10.0.0.2",
		&model.Port{Name: "http", Port: 9080, Protocol: model.ProtocolHTTP},
		&model.Port{Name: "tcp-admin", Port: 7000, Protocol: model.ProtocolTCP})
	return routestest.Push(services, pods, configs, nil), services, pods
}

func virtualInbound(t *testing.T, push *model.PushContext, pod, ip string) *listener.Listener {
	t.Helper()
	vi := lds(t, listeners.NewGenerator(nil), routestest.Sidecar(t, push, pod, "default", ip, nil), push, nil)["virtualInbound"]
	if vi == nil {
		t.Fatal("no virtualInbound")
	}
	return vi
}

// Default PERMISSIVE: per port an mTLS chain (mesh ALPNs) and a plaintext chain, TCP ports also the application's
// own TLS; the passthrough likewise; the TLS inspector everywhere. The server contexts are Istio's.
func TestInboundPermissiveByDefault(t *testing.T) {
	push, _, _ := reviewsMesh()
	vi := virtualInbound(t, push, "reviews-v1", "10.1.0.2")
	if got := matchesOf(t, chainsFor(vi, 9080)); !equalMatches(got, permHTTP) {
		t.Errorf("9080 chains = %+v, want %+v", got, permHTTP)
	}
	if got := matchesOf(t, chainsFor(vi, 7000)); !equalMatches(got, permTCP) {
		t.Errorf("7000 chains = %+v, want %+v", got, permTCP)
	}
	if got := matchesOf(t, chainsFor(vi, 0)); !equalMatches(got, permTCP) {
		t.Errorf("passthrough chains = %+v, want %+v", got, permTCP)
	}
	assertProto(t, "HTTP mTLS context", downstreamOf(t, chainsFor(vi, 9080)[0]), wantDownstream("h2", "http/1.1"))
	assertProto(t, "TCP mTLS context", downstreamOf(t, chainsFor(vi, 7000)[0]), wantDownstream("istio-peer-exchange", "h2", "http/1.1"))
	for _, fc := range chainsFor(vi, 9080) {
		if fc.GetName() != "0.0.0.0_9080" {
			t.Errorf("chain name %q", fc.GetName())
		}
		m := httpConnectionManager(t, fc)
		if m.GetForwardClientCertDetails() != hcm.HttpConnectionManager_SANITIZE_SET ||
			!m.GetSetCurrentClientCertDetails().GetUri() || !m.GetSetCurrentClientCertDetails().GetSubject().GetValue() ||
			!m.GetSetCurrentClientCertDetails().GetDns() {
			t.Errorf("client cert details: %v %v", m.GetForwardClientCertDetails(), m.GetSetCurrentClientCertDetails())
		}
	}
	lf := vi.GetListenerFilters()
	if len(lf) != 2 || lf[1].GetName() != listeners.TLSInspectorName || lf[1].GetFilterDisabled() != nil {
		t.Errorf("listener filters = %v, want original_dst and the TLS inspector on every port", lf)
	}
	if !vi.GetContinueOnListenerFiltersTimeout() {
		t.Error("continue_on_listener_filters_timeout unset: a silent client would hang")
	}
}

// Istio's precedence, end to end: mesh STRICT, namespace PERMISSIVE, workload DISABLE, port 9080 STRICT. The
// reviews pod gets STRICT on 9080, DISABLE on 7000 and the passthrough, a STRICT passthrough chain for the
// port-level port no service declares (8888), and the TLS inspector only where TLS is matched.
func TestInboundPeerAuthenticationPrecedence(t *testing.T) {
	push, _, _ := reviewsMesh(
		peerAuthn("istio-system", "mesh", nil, sec.PeerAuthentication_MutualTLS_STRICT, nil),
		peerAuthn("default", "ns", nil, sec.PeerAuthentication_MutualTLS_PERMISSIVE, nil),
		peerAuthn("default", "reviews", map[string]string{"app": "reviews"}, sec.PeerAuthentication_MutualTLS_DISABLE,
			map[uint32]sec.PeerAuthentication_MutualTLS_Mode{9080: sec.PeerAuthentication_MutualTLS_STRICT, 8888: sec.PeerAuthentication_MutualTLS_STRICT}),
	)
	vi := virtualInbound(t, push, "reviews-v1", "10.1.0.2")
	if got := matchesOf(t, chainsFor(vi, 9080)); !equalMatches(got, strictChain) {
		t.Errorf("9080 (port STRICT) = %+v", got)
	}
	assertProto(t, "STRICT HTTP context", downstreamOf(t, chainsFor(vi, 9080)[0]), wantDownstream("h2", "http/1.1"))
	if got := matchesOf(t, chainsFor(vi, 7000)); !equalMatches(got, disableChain) {
		t.Errorf("7000 (workload DISABLE) = %+v", got)
	}
	if got := matchesOf(t, chainsFor(vi, 0)); !equalMatches(got, disableChain) {
		t.Errorf("passthrough (workload DISABLE) = %+v", got)
	}
	pt := chainsFor(vi, 8888)
	if got := matchesOf(t, pt); !equalMatches(got, strictChain) || pt[0].GetName() != listeners.InboundPassthroughFilterChain ||
		tcpProxy(t, pt[0]).GetCluster() != model.InboundPassthroughCluster {
		t.Errorf("8888 passthrough = %+v %v", got, pt)
	}
	assertProto(t, "passthrough STRICT context", downstreamOf(t, pt[0]), wantDownstream("istio-peer-exchange", "h2", "http/1.1"))
	lf := vi.GetListenerFilters()
	if len(lf) != 2 || lf[1].GetName() != listeners.TLSInspectorName {
		t.Fatalf("listener filters = %v", lf)
	}
	// Enabled only on 8888 and 9080: disabled when the port is NOT one of them.
	assertProto(t, "inspector predicate", lf[1].GetFilterDisabled(), &listener.ListenerFilterChainMatchPredicate{
		Rule: &listener.ListenerFilterChainMatchPredicate_NotMatch{NotMatch: &listener.ListenerFilterChainMatchPredicate{
			Rule: &listener.ListenerFilterChainMatchPredicate_OrMatch{OrMatch: &listener.ListenerFilterChainMatchPredicate_MatchSet{
				Rules: []*listener.ListenerFilterChainMatchPredicate{
					{Rule: &listener.ListenerFilterChainMatchPredicate_DestinationPortRange{DestinationPortRange: &xdstype.Int32Range{Start: 8888, End: 8889}}},
					{Rule: &listener.ListenerFilterChainMatchPredicate_DestinationPortRange{DestinationPortRange: &xdstype.Int32Range{Start: 9080, End: 9081}}},
				},
			}},
		}},
	})

	// Other workloads of the namespace: PERMISSIVE (namespace); of another namespace: STRICT (mesh), with the
	// inspector on everywhere.
	if got := matchesOf(t, chainsFor(virtualInbound(t, push, "ratings-v1", "10.1.0.5"), 9080)); !equalMatches(got, permHTTP) {
		t.Errorf("ratings (namespace PERMISSIVE) = %+v", got)
	}
	other := lds(t, listeners.NewGenerator(nil), routestest.Sidecar(t, push, "httpbin-v1", "other", "10.1.1.1", nil), push, nil)["virtualInbound"]
	if got := matchesOf(t, chainsFor(other, 8000)); !equalMatches(got, strictChain) {
		t.Errorf("httpbin (mesh STRICT) = %+v", got)
	}
	if got := matchesOf(t, chainsFor(other, 0)); !equalMatches(got, strictChain) {
		t.Errorf("httpbin passthrough = %+v", got)
	}

	// A workload DISABLE everywhere: no inspector at all.
	push, _, _ = reviewsMesh(peerAuthn("default", "ns", nil, sec.PeerAuthentication_MutualTLS_DISABLE, nil))
	vi = virtualInbound(t, push, "reviews-v1", "10.1.0.2")
	if lf := vi.GetListenerFilters(); len(lf) != 1 {
		t.Errorf("DISABLE: listener filters %v, want original_dst only", lf)
	}
	for _, fc := range vi.GetFilterChains() {
		if fc.GetTransportSocket() != nil {
			t.Errorf("DISABLE: chain %s terminates TLS", fc.GetName())
		}
	}
}

func authzConfig(ns, name string, selector map[string]string, action sec.AuthorizationPolicy_Action, rules ...*sec.Rule) *model.Config {
	spec := &sec.AuthorizationPolicy{Action: action, Rules: rules}
	if selector != nil {
		spec.Selector = &typev1beta1.WorkloadSelector{MatchLabels: selector}
	}
	return routestest.Config(model.KindAuthorizationPolicy, ns, name, spec)
}

func rbacOfHTTP(t *testing.T, f *hcm.HttpFilter) *rbacpb.RBAC {
	t.Helper()
	r := &rbachttp.RBAC{}
	if err := f.GetTypedConfig().UnmarshalTo(r); err != nil {
		t.Fatal(err)
	}
	return r.GetRules()
}

func rbacOfNetwork(t *testing.T, f *listener.Filter) *rbacpb.RBAC {
	t.Helper()
	r := &rbacnet.RBAC{}
	if err := f.GetTypedConfig().UnmarshalTo(r); err != nil {
		t.Fatal(err)
	}
	return r.GetRules()
}

// AuthorizationPolicies land on every inbound chain of the selected workload: HTTP chains get the HTTP RBAC
// filters (DENY then ALLOW) first in the connection manager, TCP and passthrough chains the network RBAC filters
// before tcp_proxy; the TCP ALLOW filter leaves out the HTTP-only rule.
func TestInboundRBACFilters(t *testing.T) {
	getOnly := &sec.Rule{To: []*sec.Rule_To{{Operation: &sec.Operation{Methods: []string{"GET"}}}}}
	fromDefault := &sec.Rule{From: []*sec.Rule_From{{Source: &sec.Source{Namespaces: []string{"default"}}}}}
	push, _, _ := reviewsMesh(
		authzConfig("default", "reviews-allow", map[string]string{"app": "reviews"}, sec.AuthorizationPolicy_ALLOW, getOnly, fromDefault),
		authzConfig("istio-system", "deny-evil", nil, sec.AuthorizationPolicy_DENY,
			&sec.Rule{From: []*sec.Rule_From{{Source: &sec.Source{Namespaces: []string{"evil"}}}}}),
	)
	vi := virtualInbound(t, push, "reviews-v1", "10.1.0.2")
	for _, fc := range chainsFor(vi, 9080) {
		m := httpConnectionManager(t, fc)
		names := httpFilterNames(m)
		if !slices.Equal(names, []string{"envoy.filters.http.rbac", "envoy.filters.http.rbac", "envoy.filters.http.fault",
			"envoy.filters.http.cors", "envoy.filters.http.router"}) {
			t.Fatalf("HTTP filters = %v", names)
		}
		deny, allow := rbacOfHTTP(t, m.GetHttpFilters()[0]), rbacOfHTTP(t, m.GetHttpFilters()[1])
		if deny.GetAction() != rbacpb.RBAC_DENY || len(deny.GetPolicies()) != 1 || deny.GetPolicies()["ns[istio-system]-policy[deny-evil]-rule[0]"] == nil {
			t.Errorf("DENY rules = %v", deny)
		}
		if allow.GetAction() != rbacpb.RBAC_ALLOW || len(allow.GetPolicies()) != 2 {
			t.Errorf("ALLOW rules = %v", allow)
		}
	}
	for _, port := range []uint32{7000, 0} {
		for _, fc := range chainsFor(vi, port) {
			fs := fc.GetFilters()
			if len(fs) != 3 || fs[0].GetName() != "envoy.filters.network.rbac" || fs[1].GetName() != "envoy.filters.network.rbac" ||
				fs[2].GetName() != listeners.TCPProxyName {
				t.Fatalf("port %d chain filters = %v", port, fs)
			}
			if rbacOfNetwork(t, fs[0]).GetAction() != rbacpb.RBAC_DENY {
				t.Error("network DENY is not first")
			}
			allow := rbacOfNetwork(t, fs[1])
			if _, ok := allow.GetPolicies()["ns[default]-policy[reviews-allow]-rule[1]"]; !ok || len(allow.GetPolicies()) != 1 {
				t.Errorf("port %d: TCP ALLOW policies = %v, want only the namespace rule", port, allow.GetPolicies())
			}
		}
	}
	// The blackhole chain is left alone; ratings (not selected) only gets the mesh-wide DENY.
	for _, fc := range vi.GetFilterChains() {
		if fc.GetName() == listeners.VirtualInboundBlackhole && len(fc.GetFilters()) != 1 {
			t.Errorf("blackhole filters = %v", fc.GetFilters())
		}
	}
	ratings := virtualInbound(t, push, "ratings-v1", "10.1.0.5")
	if got := httpFilterNames(httpConnectionManager(t, chainsFor(ratings, 9080)[0])); !slices.Equal(got,
		[]string{"envoy.filters.http.rbac", "envoy.filters.http.fault", "envoy.filters.http.cors", "envoy.filters.http.router"}) {
		t.Errorf("ratings filters = %v", got)
	}
}

// virtualInbound is shared through the cache exactly when the same policies apply: proxies selected by different
// AuthorizationPolicies or PeerAuthentications never share it, proxies with the same ones do, and a changed
// policy is never served from the cache.
func TestInboundCacheKeysFollowPolicies(t *testing.T) {
	services, pods := routestest.Bookinfo()
	extra := routestest.Pod("ratings-v2", "default", "10.1.0.9", "ratings", "v2")
	pods = append(pods, extra)
	rule := &sec.Rule{From: []*sec.Rule_From{{Source: &sec.Source{Namespaces: []string{"default"}}}}}
	configs := func(ns string) []*model.Config {
		return []*model.Config{
			authzConfig("default", "v1-only", map[string]string{"app": "ratings", "version": "v1"}, sec.AuthorizationPolicy_ALLOW, rule),
			// Only the port's mode differs from reviews (workload UNSET: PERMISSIVE passthrough, like reviews).
			peerAuthn("default", "details", map[string]string{"app": "details"}, sec.PeerAuthentication_MutualTLS_UNSET,
				map[uint32]sec.PeerAuthentication_MutualTLS_Mode{9080: sec.PeerAuthentication_MutualTLS_STRICT}),
			authzConfig("default", "ns", nil, sec.AuthorizationPolicy_ALLOW, &sec.Rule{From: []*sec.Rule_From{{Source: &sec.Source{Namespaces: []string{ns}}}}}),
		}
	}
	cache := util.NewCache(1000)
	g := listeners.NewGenerator(cache)
	raw := func(push *model.PushContext, pod, ip string) string {
		res, err := g.Generate(routestest.Sidecar(t, push, pod, "default", ip, nil), push, &model.WatchedResource{Wildcard: true}, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range res {
			if r.GetName() == "virtualInbound" {
				return string(r.GetResource().GetValue())
			}
		}
		t.Fatal("no virtualInbound")
		return ""
	}
	push := routestest.Push(services, pods, configs("default"), nil)
	v1, v2 := raw(push, "ratings-v1", "10.1.0.5"), raw(push, "ratings-v2", "10.1.0.9")
	reviews, details := raw(push, "reviews-v1", "10.1.0.2"), raw(push, "details-v1", "10.1.0.6")
	if v1 == v2 {
		t.Error("ratings-v1 (selected by v1-only) shares virtualInbound with ratings-v2 (not selected)")
	}
	if reviews != v2 {
		t.Error("reviews and ratings-v2 (same port, same policies) do not share virtualInbound")
	}
	if details == reviews {
		t.Error("details (9080 STRICT) shares virtualInbound with reviews (PERMISSIVE)")
	}
	n := cache.Len()
	if raw(push, "reviews-v2", "10.1.0.3"); cache.Len() != n {
		t.Error("a proxy with the same policies built a new virtualInbound")
	}
	// The namespace-wide policy changes content but not name: a fresh push must not serve the old listener.
	push2 := routestest.Push(services, pods, configs("prod"), nil)
	if raw(push2, "reviews-v1", "10.1.0.2") == reviews {
		t.Error("a changed AuthorizationPolicy was served from the cache")
	}
	fresh := lds(t, listeners.NewGenerator(nil), routestest.Sidecar(t, push2, "reviews-v1", "default", "10.1.0.2", nil), push2, nil)["virtualInbound"]
	allow := rbacOfNetwork(t, chainsFor(fresh, 0)[0].GetFilters()[0])
	if len(allow.GetPolicies()) != 1 {
		t.Errorf("fresh listener policies = %v", allow.GetPolicies())
	}
}

// grpc-go servers: one filter chain without match (grpc-go drops chains matching on TLS), mTLS with the certificate
// provider instances when STRICT or when PERMISSIVE on a mesh workload, RBAC filters with distinct names before
// the router; the cache tells the variants apart.
func TestGRPCServerListenerSecurity(t *testing.T) {
	name := listeners.GRPCInboundListenerPrefix + "0.0.0.0:9080"
	meshLabels := map[string]any{"app": "reviews", "security.istio.io/tlsMode": "istio"}
	bareLabels := map[string]any{"app": "reviews"}
	wantTLS := &tlsv3.DownstreamTlsContext{
		RequireClientCertificate: wrapperspb.Bool(true),
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{InstanceName: "default", CertificateName: "default"},
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				CaCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{InstanceName: "default", CertificateName: "ROOTCA"},
			}},
		},
	}
	cache := util.NewCache(100)
	server := func(push *model.PushContext, labels map[string]any) *listener.Listener {
		p := routestest.GRPCClient(t, push, "server", "default", "10.50.0.1", labels)
		l := lds(t, listeners.NewGenerator(cache), p, push, &model.WatchedResource{Names: []string{name}})[name]
		fresh := lds(t, listeners.NewGenerator(nil), p, push, &model.WatchedResource{Names: []string{name}})[name]
		assertProto(t, "cached vs fresh", l, fresh)
		if len(l.GetFilterChains()) != 1 || l.GetFilterChains()[0].GetFilterChainMatch() != nil {
			t.Fatalf("filter chains = %v", l.GetFilterChains())
		}
		return l
	}
	tlsOf := func(l *listener.Listener) *tlsv3.DownstreamTlsContext { return downstreamOf(t, l.GetFilterChains()[0]) }

	push, _, _ := reviewsMesh()
	assertProto(t, "PERMISSIVE mesh workload", tlsOf(server(push, meshLabels)), wantTLS)
	if ctx := tlsOf(server(push, bareLabels)); ctx != nil {
		t.Errorf("PERMISSIVE without mesh identity: %v, want plaintext", ctx)
	}
	push, _, _ = reviewsMesh(peerAuthn("default", "ns", nil, sec.PeerAuthentication_MutualTLS_STRICT, nil))
	assertProto(t, "STRICT", tlsOf(server(push, bareLabels)), wantTLS)
	push, _, _ = reviewsMesh(peerAuthn("default", "ns", nil, sec.PeerAuthentication_MutualTLS_STRICT, nil),
		peerAuthn("default", "reviews", map[string]string{"app": "reviews"}, sec.PeerAuthentication_MutualTLS_STRICT,
			map[uint32]sec.PeerAuthentication_MutualTLS_Mode{9080: sec.PeerAuthentication_MutualTLS_DISABLE}))
	if ctx := tlsOf(server(push, meshLabels)); ctx != nil {
		t.Errorf("port DISABLE: %v", ctx)
	}

	push, _, _ = reviewsMesh(
		authzConfig("default", "allow", map[string]string{"app": "reviews"}, sec.AuthorizationPolicy_ALLOW,
			&sec.Rule{From: []*sec.Rule_From{{Source: &sec.Source{Principals: []string{"cluster.local/ns/default/sa/productpage"}}}}}),
		authzConfig("default", "deny", nil, sec.AuthorizationPolicy_DENY,
			&sec.Rule{To: []*sec.Rule_To{{Operation: &sec.Operation{Paths: []string{"/grpc.health.v1.Health/*"}}}}}),
	)
	m := httpConnectionManager(t, server(push, meshLabels).GetFilterChains()[0])
	if got := httpFilterNames(m); !slices.Equal(got, []string{"envoy.filters.http.rbac.DENY", "envoy.filters.http.rbac", "envoy.filters.http.router"}) {
		t.Errorf("gRPC server filters = %v", got)
	}
	if r := rbacOfHTTP(t, m.GetHttpFilters()[0]); r.GetAction() != rbacpb.RBAC_DENY {
		t.Errorf("first gRPC RBAC = %v", r)
	}
}
