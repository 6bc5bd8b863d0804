package listeners

import (
	"cmp"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/routes"
)

// Ports of the sidecar's own listeners, where iptables redirects outbound and inbound traffic.
const (
	VirtualOutboundPort = 15001
	VirtualInboundPort  = 15006
)

// Filter chain names of the virtual listeners, as Istio's.
const (
	PassthroughFilterChain        = "PassthroughFilterChain"
	InboundPassthroughFilterChain = "InboundPassthroughFilterChain"
	VirtualOutboundBlackhole      = "virtualOutbound-blackhole"
	VirtualInboundBlackhole       = "virtualInbound-blackhole"
)

// reservedPorts are bound by Envoy or the agent on 0.0.0.0 in every sidecar (admin, the virtual listeners,
// agent status, health and Prometheus): a wildcard outbound listener there would duplicate their address, and
// Envoy rejects the whole LDS update for that.
var reservedPorts = map[int]bool{15000: true, 15001: true, 15006: true, 15020: true, 15021: true, 15090: true}

// spec is one listener to send: a content key (listeners with equal keys are identical, so the marshalled
// form can be shared) and how to build it.
type spec struct {
	name  string
	key   string
	build func() *listener.Listener
}

// BuildSidecarListeners builds every listener of an Envoy sidecar: virtualOutbound, virtualInbound, then the
// outbound listeners of the services it can reach, sorted by name.
func BuildSidecarListeners(proxy *model.Proxy, push *model.PushContext) []*listener.Listener {
	specs := sidecarSpecs(proxy, push)
	out := make([]*listener.Listener, 0, len(specs))
	for _, s := range specs {
		out = append(out, s.build())
	}
	return out
}

func sidecarSpecs(proxy *model.Proxy, push *model.PushContext) []spec {
	transparent := proxy.Metadata.InterceptionMode == "TPROXY"
	registryOnly := routes.RegistryOnly(push)
	specs := []spec{virtualOutboundSpec(registryOnly, transparent), virtualInboundSpec(proxy, push, transparent)}
	return append(specs, outboundSpecs(proxy, push, registryOnly)...)
}

// catchAllCluster is where outbound traffic to unknown destinations goes.
func catchAllCluster(registryOnly bool) string {
	if registryOnly {
		return model.BlackHoleCluster
	}
	return model.PassthroughCluster
}

func virtualOutboundSpec(registryOnly, transparent bool) spec {
	return spec{
		name: model.VirtualOutboundListener,
		key:  "lds|virtualOutbound|" + strconv.FormatBool(registryOnly) + "|" + strconv.FormatBool(transparent),
		build: func() *listener.Listener {
			l := &listener.Listener{
				Name:             model.VirtualOutboundListener,
				Address:          socketAddress("0.0.0.0", VirtualOutboundPort),
				UseOriginalDst:   wrapperspb.Bool(true),
				TrafficDirection: core.TrafficDirection_OUTBOUND,
				FilterChains: []*listener.FilterChain{
					{
						// Connections addressed to 15001 itself would loop.
						Name:             VirtualOutboundBlackhole,
						FilterChainMatch: destinationPort(VirtualOutboundPort),
						Filters:          []*listener.Filter{tcpProxyTo(model.BlackHoleCluster)},
					},
					{
						Name:    PassthroughFilterChain,
						Filters: []*listener.Filter{tcpProxyTo(catchAllCluster(registryOnly))},
					},
				},
			}
			if transparent {
				l.Transparent = wrapperspb.Bool(true)
			}
			return l
		},
	}
}

// outboundSpecs plans the per-port outbound listeners. HTTP ports share one wildcard listener per port whose
// routes (RDS, named by the port) pick the service by Host. Other TCP ports get a listener on the service VIP,
// or, without VIP, the wildcard address when nothing else holds it. No two listeners share a name or address.
func outboundSpecs(proxy *model.Proxy, push *model.PushContext, registryOnly bool) []spec {
	services := push.ServicesForProxy(proxy)
	taken := map[string]bool{} // listener names, which are "<address>_<port>": one per address
	var out []spec

	var httpPorts []int
	for _, svc := range services {
		for _, p := range svc.Ports {
			if p.Protocol.IsHTTP() && !slices.Contains(httpPorts, p.Port) {
				httpPorts = append(httpPorts, p.Port)
			}
		}
	}
	slices.Sort(httpPorts)
	for _, port := range httpPorts {
		if reservedPorts[port] {
			slog.Debug("outbound HTTP listener skipped: port reserved by the sidecar", "proxy", proxy.ID, "port", port)
			continue
		}
		name := "0.0.0.0_" + itoa(port)
		taken[name] = true
		out = append(out, httpListenerSpec(name, port))
	}

	type wildcardPort struct {
		plain *tcpTarget
		sni   []tcpTarget
	}
	wildcard := map[int]*wildcardPort{}
	for _, svc := range services {
		vip := listenerVIP(svc)
		for _, p := range svc.Ports {
			if !p.Protocol.IsTCP() {
				continue
			}
			target := tcpDestinations(push, proxy, svc, p.Port)
			if vip != "" {
				name := vip + "_" + itoa(p.Port)
				if taken[name] {
					slog.Debug("outbound TCP listener conflict: address already taken", "proxy", proxy.ID,
						"listener", name, "service", svc.Hostname)
					continue
				}
				taken[name] = true
				out = append(out, tcpListenerSpec(name, vip, p.Port, target))
				continue
			}
			w := wildcard[p.Port]
			if w == nil {
				w = &wildcardPort{}
				wildcard[p.Port] = w
			}
			switch {
			case p.Protocol == model.ProtocolHTTPS || p.Protocol == model.ProtocolTLS:
				w.sni = append(w.sni, target)
			case w.plain == nil:
				w.plain = &target
			default:
				slog.Debug("outbound TCP listener conflict: another service without VIP holds the port", "proxy", proxy.ID,
					"port", p.Port, "service", svc.Hostname, "holder", w.plain.host)
			}
		}
	}
	wildcardPorts := make([]int, 0, len(wildcard))
	for port := range wildcard {
		wildcardPorts = append(wildcardPorts, port)
	}
	slices.Sort(wildcardPorts)
	for _, port := range wildcardPorts {
		name := "0.0.0.0_" + itoa(port)
		if taken[name] || reservedPorts[port] {
			slog.Debug("outbound TCP listener for services without VIP skipped: port held by an HTTP listener or the sidecar",
				"proxy", proxy.ID, "port", port)
			continue
		}
		taken[name] = true
		w := wildcard[port]
		if w.plain != nil {
			if len(w.sni) > 0 {
				slog.Debug("TLS services without VIP skipped: a TCP service without VIP holds the port", "proxy", proxy.ID, "port", port)
			}
			out = append(out, tcpListenerSpec(name, "0.0.0.0", port, *w.plain))
			continue
		}
		out = append(out, sniListenerSpec(name, port, w.sni, registryOnly))
	}
	slices.SortFunc(out, func(a, b spec) int { return cmp.Compare(a.name, b.name) })
	return out
}

// listenerVIP is the address to bind a service's TCP listeners to, or "" (headless services, CIDR ranges).
func listenerVIP(svc *model.Service) string {
	for _, a := range svc.Addresses {
		if ip, err := netip.ParseAddr(a); err == nil && !ip.IsUnspecified() {
			return a
		}
	}
	return ""
}

func httpListenerSpec(name string, port int) spec {
	return spec{
		name: name,
		key:  "lds|http|" + name,
		build: func() *listener.Listener {
			m := sidecarHCM("outbound_0.0.0.0_" + itoa(port))
			m.RouteSpecifier = adsRDS(itoa(port))
			return &listener.Listener{
				Name:             name,
				Address:          socketAddress("0.0.0.0", port),
				BindToPort:       wrapperspb.Bool(false),
				TrafficDirection: core.TrafficDirection_OUTBOUND,
				FilterChains:     []*listener.FilterChain{{Filters: []*listener.Filter{hcmFilter(m)}}},
			}
		},
	}
}

// tcpTarget is where a TCP service port's connections go.
type tcpTarget struct {
	host       string
	statPrefix string
	clusters   []weightedCluster
}

func (t tcpTarget) key() string {
	var b strings.Builder
	b.WriteString(t.host + "|" + t.statPrefix + "|")
	for _, c := range t.clusters {
		b.WriteString(c.name + "=" + strconv.FormatUint(uint64(c.weight), 10) + ";")
	}
	return b.String()
}

// tcpDestinations applies the first TCP rule of the host's VirtualService that matches the port and the
// proxy, or sends everything to the service's outbound cluster.
//
// TODO(tcp-match): destinationSubnets and sourceSubnet of L4 matches are not evaluated (the rule applies as if
// they matched); TLS routes (sniHosts) are not translated.
func tcpDestinations(push *model.PushContext, proxy *model.Proxy, svc *model.Service, port int) tcpTarget {
	def := model.BuildSubsetKey(model.Outbound, "", svc.Hostname, port)
	out := tcpTarget{host: svc.Hostname, statPrefix: def, clusters: []weightedCluster{{name: def}}}
	vs := push.VirtualServiceForHost(proxy.Namespace, svc.Hostname)
	if vs == nil {
		return out
	}
	for _, rule := range vs.Spec.GetTcp() {
		if len(rule.GetMatch()) > 0 && !slices.ContainsFunc(rule.GetMatch(), func(m *networking.L4MatchAttributes) bool {
			return routes.MatchAppliesTo(m.GetPort(), m.GetSourceLabels(), m.GetSourceNamespace(), m.GetGateways(), proxy, port)
		}) {
			continue
		}
		var clusters []weightedCluster
		for _, d := range rule.GetRoute() {
			if d.GetDestination().GetHost() == "" || (len(rule.GetRoute()) > 1 && d.GetWeight() <= 0) {
				continue
			}
			name, _, _ := routes.DestinationCluster(push, vs.Config.Namespace, d.GetDestination(), port)
			clusters = append(clusters, weightedCluster{name: name, weight: uint32(max(d.GetWeight(), 0))})
		}
		if len(clusters) == 0 {
			continue
		}
		if len(clusters) == 1 {
			clusters[0].weight = 0
			out.statPrefix = clusters[0].name
		}
		out.clusters = clusters
		return out
	}
	return out
}

func tcpListenerSpec(name, ip string, port int, t tcpTarget) spec {
	return spec{
		name: name,
		key:  "lds|tcp|" + name + "|" + t.key(),
		build: func() *listener.Listener {
			return &listener.Listener{
				Name:             name,
				Address:          socketAddress(ip, port),
				BindToPort:       wrapperspb.Bool(false),
				TrafficDirection: core.TrafficDirection_OUTBOUND,
				FilterChains:     []*listener.FilterChain{{Filters: []*listener.Filter{tcpProxyFilter(t.statPrefix, t.clusters)}}},
			}
		},
	}
}

// sniListenerSpec serves TLS services without VIP on a shared port: the TLS inspector reads the SNI, a chain per
// service matches its hostname, anything else is passed through (or blocked under REGISTRY_ONLY), so one
// ServiceEntry does not capture every connection to, say, port 443.
func sniListenerSpec(name string, port int, targets []tcpTarget, registryOnly bool) spec {
	var key strings.Builder
	key.WriteString("lds|sni|" + name + "|" + strconv.FormatBool(registryOnly) + "|")
	for _, t := range targets {
		key.WriteString(t.key() + "/")
	}
	return spec{
		name: name,
		key:  key.String(),
		build: func() *listener.Listener {
			chains := make([]*listener.FilterChain, 0, len(targets)+1)
			for _, t := range targets {
				chains = append(chains, &listener.FilterChain{
					FilterChainMatch: &listener.FilterChainMatch{ServerNames: []string{t.host}},
					Filters:          []*listener.Filter{tcpProxyFilter(t.statPrefix, t.clusters)},
				})
			}
			chains = append(chains, &listener.FilterChain{
				Name:    PassthroughFilterChain,
				Filters: []*listener.Filter{tcpProxyTo(catchAllCluster(registryOnly))},
			})
			return &listener.Listener{
				Name:                             name,
				Address:                          socketAddress("0.0.0.0", port),
				BindToPort:                       wrapperspb.Bool(false),
				TrafficDirection:                 core.TrafficDirection_OUTBOUND,
				ListenerFilters:                  []*listener.ListenerFilter{tlsInspectorFilter},
				ContinueOnListenerFiltersTimeout: true,
				FilterChains:                     chains,
			}
		},
	}
}
