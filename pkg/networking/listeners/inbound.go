package listeners

import (
	"cmp"
	"slices"
	"strconv"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	xdstype "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/routes"
	"github.com/meshd/meshd/pkg/networking/security"
)

// inboundPort is one port the workload serves, how its traffic is handled, and its PeerAuthentication mode.
type inboundPort struct {
	port int
	http bool
	mode model.MutualTLSMode
}

// inboundPorts lists the distinct target ports of the proxy's service targets. A port is HTTP only when every
// service targeting it says so: HTTP handling of TCP traffic would break it, the reverse only loses L7 features.
func inboundPorts(proxy *model.Proxy) []inboundPort {
	var out []inboundPort
	for _, st := range proxy.ServiceTargets {
		if st.TargetPort <= 0 || st.TargetPort == VirtualInboundPort || st.TargetPort == VirtualOutboundPort {
			continue
		}
		http := st.Port.Protocol.IsHTTP()
		if n := len(out); n > 0 && out[n-1].port == st.TargetPort { // targets are sorted by target port
			out[n-1].http = out[n-1].http && http
			continue
		}
		if i := slices.IndexFunc(out, func(p inboundPort) bool { return p.port == st.TargetPort }); i >= 0 {
			out[i].http = out[i].http && http
			continue
		}
		out = append(out, inboundPort{port: st.TargetPort, http: http})
	}
	slices.SortFunc(out, func(a, b inboundPort) int { return cmp.Compare(a.port, b.port) })
	return out
}

// inboundPlan is everything virtualInbound is built from: the service ports with their mTLS modes, the
// passthrough chains (port 0: everything else; other ports: port-level PeerAuthentication on ports no service
// declares) and the AuthorizationPolicies of the workload.
type inboundPlan struct {
	ports       []inboundPort
	passthrough []inboundPort
	authz       model.AuthorizationPolicies
	transparent bool
}

func planInbound(proxy *model.Proxy, push *model.PushContext, transparent bool) inboundPlan {
	pa := push.PeerAuthentication(proxy.Namespace, proxy.Labels)
	plan := inboundPlan{
		ports:       inboundPorts(proxy),
		passthrough: []inboundPort{{port: 0, mode: pa.Mode}},
		authz:       push.AuthorizationPolicies(proxy.Namespace, proxy.Labels),
		transparent: transparent,
	}
	for i := range plan.ports {
		plan.ports[i].mode = pa.ForPort(plan.ports[i].port)
	}
	for port, mode := range pa.PerPort {
		p := int(port)
		if p <= 0 || p > 65535 || reservedPorts[p] || slices.ContainsFunc(plan.ports, func(ip inboundPort) bool { return ip.port == p }) {
			continue
		}
		plan.passthrough = append(plan.passthrough, inboundPort{port: p, mode: mode})
	}
	slices.SortFunc(plan.passthrough, func(a, b inboundPort) int { return cmp.Compare(a.port, b.port) })
	return plan
}

// key encodes the plan completely: equal keys build byte-identical listeners.
func (p inboundPlan) key() string {
	var b strings.Builder
	b.WriteString("lds|virtualInbound|" + strconv.FormatBool(p.transparent) + "|")
	for _, ip := range p.ports {
		b.WriteString(itoa(ip.port))
		if ip.http {
			b.WriteString("h")
		} else {
			b.WriteString("t")
		}
		b.WriteString(strconv.Itoa(int(ip.mode)) + ",")
	}
	b.WriteString("|pt:")
	for _, ip := range p.passthrough {
		b.WriteString(itoa(ip.port) + "=" + strconv.Itoa(int(ip.mode)) + ",")
	}
	b.WriteString("|authz:" + p.authz.Key())
	return b.String()
}

func virtualInboundSpec(proxy *model.Proxy, push *model.PushContext, transparent bool) spec {
	plan := planInbound(proxy, push, transparent)
	return spec{
		name:  model.VirtualInboundListener,
		key:   plan.key(),
		build: func() *listener.Listener { return buildVirtualInbound(plan) },
	}
}

// chainMatch is one filter chain of a port: what it matches beyond the port, and whether it terminates mesh mTLS.
type chainMatch struct {
	transportProtocol string
	alpn              []string
	mtls              bool
}

// chainMatches are Istio's filter chains for a port in a PeerAuthentication mode:
//   - STRICT: one chain for TLS, terminating mTLS (any ALPN: proxyless gRPC clients send only h2);
//   - PERMISSIVE: mTLS for TLS with the mesh ALPNs, plaintext for raw_buffer, and on TCP ports the application's
//     own TLS (TLS without mesh ALPN) passed through untouched;
//   - DISABLE: plaintext (raw_buffer) only.
//
// One deviation from Istio: PERMISSIVE HTTP ports also accept ALPN "h2" on their mTLS chain, because grpc-go
// clients using mesh mTLS (auto-mTLS for proxyless gRPC) cannot send Istio's ALPNs; Istio leaves such connections
// without a chain (reset). TLS with h2 to an HTTP port is not the application's own TLS in any working setup.
func chainMatches(mode model.MutualTLSMode, http bool) []chainMatch {
	switch mode {
	case model.MTLSStrict:
		return []chainMatch{{transportProtocol: security.TransportProtocolTLS, mtls: true}}
	case model.MTLSPermissive:
		if http {
			return []chainMatch{
				{transportProtocol: security.TransportProtocolTLS, alpn: permissiveHTTPALPNs, mtls: true},
				{transportProtocol: security.TransportProtocolRawBuffer},
			}
		}
		return []chainMatch{
			{transportProtocol: security.TransportProtocolTLS, alpn: security.ALPNInboundMTLS, mtls: true},
			{transportProtocol: security.TransportProtocolRawBuffer},
			{transportProtocol: security.TransportProtocolTLS},
		}
	}
	return []chainMatch{{transportProtocol: security.TransportProtocolRawBuffer}}
}

var permissiveHTTPALPNs = append(slices.Clone(security.ALPNInboundMTLS), "h2")

// The server TLS contexts are the same for every chain: marshal them once.
var (
	downstreamHTTP = security.TransportSocket(security.IstioMutualDownstream(false))
	downstreamTCP  = security.TransportSocket(security.IstioMutualDownstream(true))
)

// buildVirtualInbound builds the listener iptables sends inbound connections to. The original_dst listener
// filter restores the destination for filter chain matching; use_original_dst is deliberately not set: hand-off
// would give inbound connections to the outbound listener on the same port (0.0.0.0_9080 for a service the
// workload both serves and calls) and loop them back out. The TLS inspector (on the ports whose chains match on
// TLS) tells mesh mTLS from plaintext; filter chains per port follow PeerAuthentication (chainMatches), and every
// chain but the loop blackhole carries the workload's RBAC filters.
func buildVirtualInbound(plan inboundPlan) *listener.Listener {
	rbacHTTP := security.BuildRBAC(plan.authz, false)
	rbacTCP := security.BuildRBAC(plan.authz, true)
	tcpRBAC := security.NetworkFilters(rbacTCP)

	chains := make([]*listener.FilterChain, 0, 2*len(plan.ports)+4)
	chains = append(chains, &listener.FilterChain{
		// Connections addressed to 15006 itself would loop.
		Name:             VirtualInboundBlackhole,
		FilterChainMatch: destinationPort(VirtualInboundPort),
		Filters:          []*listener.Filter{tcpProxyTo(model.BlackHoleCluster)},
	})
	for _, p := range plan.ports {
		cluster := model.BuildSubsetKey(model.Inbound, "", "", p.port)
		var filters []*listener.Filter
		if p.http {
			m := sidecarHCM("inbound_0.0.0.0_" + itoa(p.port))
			m.RouteSpecifier = inlineRoutes(inboundRouteConfig(p.port, cluster))
			m.HttpFilters = append(security.HTTPFilters(rbacHTTP), m.HttpFilters...)
			// Like Istio: the client certificate details replace whatever the client sent (SANITIZE_SET), so the
			// application can trust x-forwarded-client-cert; plaintext requests carry none.
			m.ForwardClientCertDetails = hcm.HttpConnectionManager_SANITIZE_SET
			m.SetCurrentClientCertDetails = &hcm.HttpConnectionManager_SetCurrentClientCertDetails{
				Subject: wrapperspb.Bool(true), Uri: true, Dns: true,
			}
			filters = []*listener.Filter{hcmFilter(m)}
		} else {
			filters = append(slices.Clone(tcpRBAC), tcpProxyTo(cluster))
		}
		for _, cm := range chainMatches(p.mode, p.http) {
			chains = append(chains, inboundChain("0.0.0.0_"+itoa(p.port), p.port, cm, p.http, filters))
		}
	}
	passthroughFilters := append(slices.Clone(tcpRBAC), tcpProxyTo(model.InboundPassthroughCluster))
	for _, p := range plan.passthrough {
		for _, cm := range chainMatches(p.mode, false) {
			chains = append(chains, inboundChain(InboundPassthroughFilterChain, p.port, cm, false, passthroughFilters))
		}
	}
	l := &listener.Listener{
		Name:                             model.VirtualInboundListener,
		Address:                          socketAddress("0.0.0.0", VirtualInboundPort),
		TrafficDirection:                 core.TrafficDirection_INBOUND,
		ListenerFilters:                  []*listener.ListenerFilter{originalDstFilter},
		ContinueOnListenerFiltersTimeout: true,
		FilterChains:                     chains,
	}
	if tls := tlsInspectorFor(chains); tls != nil {
		l.ListenerFilters = append(l.ListenerFilters, tls)
	}
	if plan.transparent {
		l.Transparent = wrapperspb.Bool(true)
	}
	return l
}

// inboundChain is one filter chain of a port (0: any port), with the mTLS transport socket when it terminates
// mesh mTLS. Envoy picks the chain by destination port first, then by transport protocol and ALPN.
func inboundChain(name string, port int, cm chainMatch, http bool, filters []*listener.Filter) *listener.FilterChain {
	fcm := &listener.FilterChainMatch{TransportProtocol: cm.transportProtocol, ApplicationProtocols: cm.alpn}
	if port > 0 {
		fcm.DestinationPort = wrapperspb.UInt32(uint32(port))
	}
	fc := &listener.FilterChain{Name: name, FilterChainMatch: fcm, Filters: filters}
	if cm.mtls {
		fc.TransportSocket = downstreamTCP
		if http {
			fc.TransportSocket = downstreamHTTP
		}
	}
	return fc
}

// tlsInspectorFor returns the TLS inspector, enabled only where a chain matches on TLS (as Istio): everywhere but
// the ports that do not need it when the catch-all passthrough needs it, else only on the ports that do. Nil when
// no chain looks at TLS. Inspecting a port that does not need it would only delay server-first protocols.
func tlsInspectorFor(chains []*listener.FilterChain) *listener.ListenerFilter {
	need := map[int]bool{}
	for _, fc := range chains {
		m := fc.GetFilterChainMatch()
		if m.GetDestinationPort().GetValue() == VirtualInboundPort {
			continue // the loop blackhole
		}
		p := int(m.GetDestinationPort().GetValue())
		need[p] = need[p] || m.GetTransportProtocol() == security.TransportProtocolTLS
	}
	defaultOn := need[0]
	var ports []int // the exceptions to the default
	anyOn := defaultOn
	for p, n := range need {
		anyOn = anyOn || n
		if p != 0 && n != defaultOn {
			ports = append(ports, p)
		}
	}
	if !anyOn {
		return nil
	}
	if len(ports) == 0 {
		return tlsInspectorFilter
	}
	slices.Sort(ports)
	f := &listener.ListenerFilter{Name: TLSInspectorName, ConfigType: tlsInspectorFilter.ConfigType}
	if defaultOn {
		f.FilterDisabled = portsPredicate(ports)
	} else {
		f.FilterDisabled = &listener.ListenerFilterChainMatchPredicate{Rule: &listener.ListenerFilterChainMatchPredicate_NotMatch{
			NotMatch: portsPredicate(ports),
		}}
	}
	return f
}

// portsPredicate matches connections to any of the ports.
func portsPredicate(ports []int) *listener.ListenerFilterChainMatchPredicate {
	rules := make([]*listener.ListenerFilterChainMatchPredicate, 0, len(ports))
	for _, p := range ports {
		rules = append(rules, &listener.ListenerFilterChainMatchPredicate{Rule: &listener.ListenerFilterChainMatchPredicate_DestinationPortRange{
			DestinationPortRange: &xdstype.Int32Range{Start: int32(p), End: int32(p + 1)},
		}})
	}
	if len(rules) == 1 {
		return rules[0]
	}
	return &listener.ListenerFilterChainMatchPredicate{Rule: &listener.ListenerFilterChainMatchPredicate_OrMatch{
		OrMatch: &listener.ListenerFilterChainMatchPredicate_MatchSet{Rules: rules},
	}}
}

// inboundRouteConfig sends every request on an inbound HTTP port to the local workload.
func inboundRouteConfig(port int, cluster string) *route.RouteConfiguration {
	return &route.RouteConfiguration{
		Name: cluster,
		VirtualHosts: []*route.VirtualHost{{
			Name:    "inbound|http|" + itoa(port),
			Domains: []string{"*"},
			Routes: []*route.Route{{
				Name:  routes.DefaultRouteName,
				Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
				Action: &route.Route_Route{Route: &route.RouteAction{
					ClusterSpecifier: &route.RouteAction_Cluster{Cluster: cluster},
					Timeout:          durationpb.New(0),
				}},
			}},
		}},
		ValidateClusters: wrapperspb.Bool(false),
	}
}
