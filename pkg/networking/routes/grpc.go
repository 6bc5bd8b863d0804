package routes

import (
	"net"
	"strconv"
	"strings"

	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/pkg/model"
)

// GRPCTarget is a "host:port" name a proxyless gRPC client asks for (its dial target), resolved to a service
// port the client can see.
type GRPCTarget struct {
	// Name is the name as requested, e.g. "reviews:9080" or "reviews.default.svc.cluster.local:9080".
	Name    string
	Service *model.Service
	Port    *model.Port
}

// ResolveGRPCTarget resolves a "host:port" LDS/RDS name of a gRPC client: the host may be the FQDN or any short
// form a client in the proxy's namespace would dial ("reviews", "reviews.default", "reviews.default.svc"). It
// returns false when the name has no port or is not a port of a service visible to the proxy.
func ResolveGRPCTarget(proxy *model.Proxy, push *model.PushContext, name string) (GRPCTarget, bool) {
	host, portStr, err := net.SplitHostPort(name)
	if err != nil || host == "" {
		return GRPCTarget{}, false
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port <= 0 || port > 65535 {
		return GRPCTarget{}, false
	}
	fqdn := qualify(host, proxy.Namespace, push.Domain)
	svc := push.ServiceByHostname(fqdn)
	if svc == nil || !visibleTo(push, proxy, svc) {
		return GRPCTarget{}, false
	}
	p := svc.PortByNumber(port)
	if p == nil {
		return GRPCTarget{}, false
	}
	return GRPCTarget{Name: name, Service: svc, Port: p}, true
}

// qualify turns a dialed host into a service hostname the way cluster DNS search paths would.
func qualify(host, ns, domain string) string {
	switch {
	case strings.HasSuffix(host, ".svc"):
		return host + "." + domain
	case !strings.Contains(host, "."):
		return host + "." + ns + ".svc." + domain
	case strings.Count(host, ".") == 1:
		return host + ".svc." + domain
	}
	return host
}

func visibleTo(push *model.PushContext, proxy *model.Proxy, svc *model.Service) bool {
	for _, s := range push.ServicesForProxy(proxy) {
		if s == svc {
			return true
		}
	}
	return false
}

// BuildGRPCRouteConfig builds the route configuration for a gRPC client's dial target: named as requested,
// with one virtual host whose domains hold the requested authority exactly (grpc-go matches the full
// authority, port included) and the FQDN with and without port. Routes come from the VirtualService for the
// host, translated for grpc-go, or send everything to the service's outbound cluster.
func BuildGRPCRouteConfig(proxy *model.Proxy, push *model.PushContext, t GRPCTarget) *route.RouteConfiguration {
	host, port := t.Service.Hostname, t.Port.Port
	var routes []*route.Route
	if vs := push.VirtualServiceForHost(proxy.Namespace, host); vs != nil {
		routes = TranslateHTTPRoutes(vs, push, proxy, port, GRPC)
	}
	if len(routes) == 0 {
		routes = []*route.Route{DefaultRoute(push, proxy, host, port, GRPC)}
	}
	hp := host + ":" + strconv.Itoa(port)
	return &route.RouteConfiguration{
		Name: t.Name,
		VirtualHosts: []*route.VirtualHost{{
			Name:    hp,
			Domains: dedupe([]string{t.Name, hp, host}),
			Routes:  routes,
		}},
		ValidateClusters: wrapperspb.Bool(false),
	}
}
