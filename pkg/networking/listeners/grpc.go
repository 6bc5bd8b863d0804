package listeners

import (
	"net"
	"net/netip"
	"strconv"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/routes"
	"github.com/meshd/meshd/pkg/networking/security"
	"github.com/meshd/meshd/pkg/networking/util"
)

// GRPCInboundListenerPrefix starts the names grpc-go xDS servers ask for (Istio's bootstrap sets
// server_listener_resource_name_template to it followed by "%s", the listening "ip:port").
const GRPCInboundListenerPrefix = "xds.istio.io/grpc/lds/inbound/"

// BuildGRPCListener builds the listener a proxyless gRPC client or server asks for, or nil when the name is
// unknown: "host:port" of a visible service port gives a client API listener, the inbound prefix followed by
// "ip:port" a server listener.
func BuildGRPCListener(proxy *model.Proxy, push *model.PushContext, name string) *listener.Listener {
	s, ok := grpcListenerSpec(proxy, push, name)
	if !ok {
		return nil
	}
	return s.build()
}

// grpcListenerSpec plans the listener a gRPC client or server asks for; false when the name is unknown. A client
// listener is a function of its name; a server listener also of its mTLS mode and AuthorizationPolicies.
func grpcListenerSpec(proxy *model.Proxy, push *model.PushContext, name string) (spec, bool) {
	if addr, ok := strings.CutPrefix(name, GRPCInboundListenerPrefix); ok {
		ip, port, ok := parseIPPort(addr)
		if !ok {
			return spec{}, false
		}
		mtls := grpcServerMTLS(proxy, push, port)
		authz := push.AuthorizationPolicies(proxy.Namespace, proxy.Labels)
		return spec{
			name:  name,
			key:   "lds|grpc|" + name + "|" + strconv.FormatBool(mtls) + "|" + authz.Key(),
			build: func() *listener.Listener { return grpcServerListener(name, ip, port, mtls, authz) },
		}, true
	}
	if _, ok := routes.ResolveGRPCTarget(proxy, push, name); !ok {
		return spec{}, false
	}
	return spec{name: name, key: "lds|grpc|" + name, build: func() *listener.Listener { return grpcClientListener(name) }}, true
}

// grpcServerMTLS decides whether a grpc-go xDS server requires mesh mTLS on a port. grpc-go's filter chain matching
// cannot tell TLS from plaintext (it drops chains matching transport_protocol "tls" and application_protocols), so
// a port serves one or the other, as in Istio: STRICT is mTLS; PERMISSIVE is mTLS when the server declares a mesh
// identity (tlsMode istio in its node metadata labels: its clients use auto-mTLS, and its bootstrap has the
// certificate provider), else plaintext; DISABLE is plaintext.
func grpcServerMTLS(proxy *model.Proxy, push *model.PushContext, port int) bool {
	switch push.PeerAuthentication(proxy.Namespace, proxy.Labels).ForPort(port) {
	case model.MTLSStrict:
		return true
	case model.MTLSPermissive:
		return proxy.DeclaresMeshTLS()
	}
	return false
}

func parseIPPort(s string) (string, int, bool) {
	host, portStr, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, false
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return "", 0, false
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port <= 0 || port > 65535 {
		return "", 0, false
	}
	return ip.String(), port, true
}

// grpcClientListener is an API listener whose connection manager takes its routes from RDS under the same
// name: grpc-go asks for the route configuration named there.
func grpcClientListener(name string) *listener.Listener {
	m := &hcm.HttpConnectionManager{
		StatPrefix:     name,
		RouteSpecifier: adsRDS(name),
		HttpFilters:    []*hcm.HttpFilter{routerFilter},
	}
	return &listener.Listener{
		Name:        name,
		ApiListener: &listener.ApiListener{ApiListener: util.MessageToAny(m)},
	}
}

// grpcServerListener is the listener of a grpc-go xDS server: its address, and one filter chain (mTLS with the
// certificate provider instances, or plaintext; see grpcServerMTLS) whose inline routes accept every RPC with
// non_forwarding_action (servers reject any other action), behind the workload's RBAC filters (DENY first).
func grpcServerListener(name, ip string, port int, mtls bool, authz model.AuthorizationPolicies) *listener.Listener {
	m := &hcm.HttpConnectionManager{
		CodecType:  hcm.HttpConnectionManager_AUTO,
		StatPrefix: "inbound_" + ip + "_" + itoa(port),
		RouteSpecifier: inlineRoutes(&route.RouteConfiguration{
			Name: "inbound|" + itoa(port) + "||",
			VirtualHosts: []*route.VirtualHost{{
				Name:    "inbound|http|" + itoa(port),
				Domains: []string{"*"},
				Routes: []*route.Route{{
					Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: ""}},
					Action: &route.Route_NonForwardingAction{NonForwardingAction: &route.NonForwardingAction{}},
				}},
			}},
			ValidateClusters: wrapperspb.Bool(false),
		}),
		HttpFilters: append(security.GRPCHTTPFilters(security.BuildRBAC(authz, false)), routerFilter),
	}
	fc := &listener.FilterChain{
		Name:    "inbound|" + itoa(port) + "||",
		Filters: []*listener.Filter{hcmFilter(m)},
	}
	if mtls {
		fc.TransportSocket = security.TransportSocket(security.GRPCDownstream())
	}
	return &listener.Listener{
		Name:             name,
		Address:          socketAddress(ip, port),
		TrafficDirection: core.TrafficDirection_INBOUND,
		FilterChains:     []*listener.FilterChain{fc},
	}
}
