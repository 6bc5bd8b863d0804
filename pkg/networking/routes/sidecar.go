package routes

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"

	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	meshconfig "istio.io/api/mesh/v1alpha1"

	"github.com/meshd/meshd/pkg/model"
)

// Names of the catch-all virtual hosts of sidecar route configurations.
const (
	AllowAnyVirtualHost = "allow_any"
	BlockAllVirtualHost = "block_all"
)

// RegistryOnly reports whether the mesh forbids traffic to destinations outside the registry.
func RegistryOnly(push *model.PushContext) bool {
	return push.Mesh.GetOutboundTrafficPolicy().GetMode() == meshconfig.MeshConfig_OutboundTrafficPolicy_REGISTRY_ONLY
}

// BuildSidecarRouteConfig builds the outbound route configuration an Envoy sidecar's HTTP listener on port
// requests (named by the port number, e.g. "9080"): one virtual host per HTTP service on that port visible to
// the proxy, one per VirtualService host that is not a service and routes on that port, and a catch-all that
// passes through (ALLOW_ANY) or rejects (REGISTRY_ONLY) everything else.
func BuildSidecarRouteConfig(proxy *model.Proxy, push *model.PushContext, port int) *route.RouteConfiguration {
	services := push.ServicesForProxy(proxy)
	b := &vhostBuilder{claimed: make(map[string]bool, 8*len(services))}
	vsIdx := newVSIndex(push.VirtualServicesForMesh(proxy.Namespace))

	for _, svc := range services {
		p := svc.PortByNumber(port)
		if p == nil || !p.Protocol.IsHTTP() {
			continue
		}
		var routes []*route.Route
		if vs := vsIdx.forHost(svc.Hostname); vs != nil {
			routes = TranslateHTTPRoutes(vs, push, proxy, port, Sidecar)
		}
		if len(routes) == 0 {
			// No VirtualService, or none of its rules applies to this proxy on this port.
			routes = []*route.Route{DefaultRoute(push, proxy, svc.Hostname, port, Sidecar)}
		}
		b.add(svc.Hostname+":"+strconv.Itoa(port), ServiceDomains(svc, port, proxy.Namespace, push.Domain), routes)
	}

	// VirtualService hosts that are not services the proxy can see (plain DNS names, wildcards covering none).
	visible := make(map[string]bool, len(services))
	for _, s := range services {
		visible[s.Hostname] = true
	}
	for _, vs := range vsIdx.all {
		for _, h := range vs.Hosts {
			if h == "" || coversService(h, visible, services) || !slices.Contains(virtualServicePorts(push, vs), port) {
				continue
			}
			routes := TranslateHTTPRoutes(vs, push, proxy, port, Sidecar)
			if len(routes) == 0 {
				continue
			}
			b.add(h+":"+strconv.Itoa(port), []string{h, h + ":" + strconv.Itoa(port)}, routes)
		}
	}

	if RegistryOnly(push) {
		b.add(BlockAllVirtualHost, []string{"*"}, []*route.Route{{
			Name:   BlockAllVirtualHost,
			Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
			Action: &route.Route_DirectResponse{DirectResponse: &route.DirectResponseAction{Status: 502}},
		}})
	} else {
		b.add(AllowAnyVirtualHost, []string{"*"}, []*route.Route{{
			Name:  AllowAnyVirtualHost,
			Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
			Action: &route.Route_Route{Route: &route.RouteAction{
				ClusterSpecifier: &route.RouteAction_Cluster{Cluster: model.PassthroughCluster},
				Timeout:          durationpb.New(0),
			}},
		}})
	}
	return &route.RouteConfiguration{
		Name:             strconv.Itoa(port),
		VirtualHosts:     b.vhosts,
		ValidateClusters: wrapperspb.Bool(false),
	}
}

// vhostBuilder collects virtual hosts, giving each domain to the first virtual host that claims it: Envoy
// rejects a route configuration in which a domain appears twice.
type vhostBuilder struct {
	claimed map[string]bool
	vhosts  []*route.VirtualHost
}

func (b *vhostBuilder) add(name string, domains []string, routes []*route.Route) {
	kept := make([]string, 0, len(domains))
	for _, d := range domains {
		if b.claimed[d] {
			continue
		}
		b.claimed[d] = true
		kept = append(kept, d)
	}
	if len(kept) == 0 {
		return
	}
	b.vhosts = append(b.vhosts, &route.VirtualHost{
		Name:                       name,
		Domains:                    kept,
		Routes:                     routes,
		IncludeRequestAttemptCount: true,
	})
}

// DefaultRoute is the route of a service without VirtualService: everything to its outbound cluster, no
// timeout, Istio's default retries, and the DestinationRule's hash policy.
func DefaultRoute(push *model.PushContext, proxy *model.Proxy, host string, port int, flavor Flavor) *route.Route {
	action := &route.RouteAction{
		ClusterSpecifier: &route.RouteAction_Cluster{Cluster: model.BuildSubsetKey(model.Outbound, "", host, port)},
		Timeout:          durationpb.New(0),
	}
	if hp := hashPolicyFor(push, proxy.Namespace, host, "", port, flavor); hp != nil {
		action.HashPolicy = []*route.RouteAction_HashPolicy{hp}
	}
	if flavor == GRPC {
		action.MaxStreamDuration = &route.RouteAction_MaxStreamDuration{MaxStreamDuration: durationpb.New(0)}
	} else {
		action.RetryPolicy = DefaultRetryPolicy(len(action.HashPolicy) > 0)
	}
	return &route.Route{
		Name:   DefaultRouteName,
		Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
		Action: &route.Route_Route{Route: action},
	}
}

// ServiceDomains lists the Host header values that reach a service port, as Istio does: the FQDN, and for
// cluster-local services the name qualified by namespace ("reviews.default", "reviews.default.svc") and, for
// proxies in the service's namespace, the short name; then each VIP. Each comes bare and with ":port".
func ServiceDomains(svc *model.Service, port int, proxyNS, domainSuffix string) []string {
	ps := ":" + strconv.Itoa(port)
	h := svc.Hostname
	out := make([]string, 0, 10+2*len(svc.Addresses))
	out = append(out, h, h+ps)
	if base, ok := strings.CutSuffix(h, ".svc."+domainSuffix); ok {
		if i := strings.LastIndex(base, "."); i > 0 {
			name, ns := base[:i], base[i+1:]
			if ns == proxyNS {
				out = append(out, name, name+ps)
			}
			out = append(out, base+".svc", base+".svc"+ps, base, base+ps)
		}
	}
	for _, a := range svc.Addresses {
		ip, err := netip.ParseAddr(a)
		if err != nil || ip.IsUnspecified() {
			continue // CIDR ranges and placeholders are not Host headers
		}
		if ip.Is6() && !ip.Is4In6() {
			out = append(out, "["+a+"]", "["+a+"]"+ps)
		} else {
			out = append(out, a, a+ps)
		}
	}
	return dedupe(out)
}

// dedupe removes repeated strings in place, keeping the first; the lists are short, so a scan beats a map.
func dedupe(in []string) []string {
	out := in[:0]
	for _, s := range in {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// coversService reports whether a VirtualService host names (or, as a wildcard, covers) a visible service.
func coversService(h string, visible map[string]bool, services []*model.Service) bool {
	if visible[h] {
		return true
	}
	if !strings.HasPrefix(h, "*") {
		return false
	}
	for _, s := range services {
		if model.HostMatches(h, s.Hostname) {
			return true
		}
	}
	return false
}

// virtualServicePorts lists the ports a VirtualService routes HTTP on when its hosts are not services: the
// ports its match blocks name and the ports of its destinations (explicit, or every HTTP port of the
// destination service). Without any, port 80, as Istio does.
func virtualServicePorts(push *model.PushContext, vs *model.VirtualServiceEntry) []int {
	var ports []int
	addPort := func(p int) {
		if p > 0 && !slices.Contains(ports, p) {
			ports = append(ports, p)
		}
	}
	for _, rule := range vs.Spec.GetHttp() {
		for _, m := range rule.GetMatch() {
			addPort(int(m.GetPort()))
		}
		for _, d := range rule.GetRoute() {
			if n := d.GetDestination().GetPort().GetNumber(); n != 0 {
				addPort(int(n))
				continue
			}
			host := model.ResolveHostname(d.GetDestination().GetHost(), vs.Config.Namespace, push.Domain)
			if svc := push.ServiceByHostname(host); svc != nil {
				for _, p := range svc.Ports {
					if p.Protocol.IsHTTP() {
						addPort(p.Port)
					}
				}
			}
		}
	}
	if len(ports) == 0 {
		ports = []int{80}
	}
	return ports
}

// vsIndex finds the VirtualService for a host with the precedence of PushContext.VirtualServiceForHost (the
// first exact host, else the first wildcard covering it) without scanning every VirtualService per host.
type vsIndex struct {
	all       []*model.VirtualServiceEntry
	exact     map[string]*model.VirtualServiceEntry
	wildcards []wildcardVS
}

type wildcardVS struct {
	pattern string
	vs      *model.VirtualServiceEntry
}

func newVSIndex(list []*model.VirtualServiceEntry) *vsIndex {
	idx := &vsIndex{all: list, exact: map[string]*model.VirtualServiceEntry{}}
	for _, e := range list {
		for _, h := range e.Hosts {
			if strings.HasPrefix(h, "*") {
				idx.wildcards = append(idx.wildcards, wildcardVS{pattern: h, vs: e})
				continue
			}
			if _, ok := idx.exact[h]; !ok {
				idx.exact[h] = e
			}
		}
	}
	return idx
}

func (idx *vsIndex) forHost(h string) *model.VirtualServiceEntry {
	if e := idx.exact[h]; e != nil {
		return e
	}
	for _, w := range idx.wildcards {
		if model.HostMatches(w.pattern, h) {
			return w.vs
		}
	}
	return nil
}
