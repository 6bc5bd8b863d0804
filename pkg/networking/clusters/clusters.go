// Package clusters generates CDS and EDS resources: for Envoy sidecars (wildcard CDS with Istio's cluster names and
// shapes, EDS per watched cluster) and for proxyless gRPC clients (only the names they ask for, shaped for grpc-go).
//
// Generators are pure functions of (proxy, push, watched names). Everything that does not depend on the proxy (the
// outbound clusters, the load assignments, the well-known clusters) is marshalled once per push and shared through
// a util.Cache, keyed by exactly what the resource depends on.
package clusters

import (
	"cmp"
	"slices"
	"strconv"
	"strings"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/util"
)

// NewCDS returns the CDS generator for Envoy sidecars and gateways: every cluster the proxy may use, ignoring
// the watched names (CDS is a wildcard subscription for Envoy). A nil cache disables sharing.
func NewCDS(cache *util.Cache) model.Generator { return &cdsGenerator{cache: cache} }

// NewEDS returns the EDS generator for Envoy: one ClusterLoadAssignment per watched outbound cluster name.
func NewEDS(cache *util.Cache) model.Generator { return &edsGenerator{cache: cache} }

// NewGRPCCDS returns the CDS generator for proxyless gRPC clients: only the requested outbound clusters, with
// only the fields grpc-go understands.
func NewGRPCCDS(cache *util.Cache) model.Generator { return &cdsGenerator{cache: cache, grpc: true} }

// NewGRPCEDS returns the EDS generator for proxyless gRPC clients: healthy endpoints only, every locality with a
// positive weight.
func NewGRPCEDS(cache *util.Cache) model.Generator { return &edsGenerator{cache: cache, grpc: true} }

type cdsGenerator struct {
	cache *util.Cache
	grpc  bool
}

type edsGenerator struct {
	cache *util.Cache
	grpc  bool
}

// Cache key prefixes: the cache may be shared with other generators, and the same cluster name has different
// contents for sidecars and gRPC clients.
const (
	keyCDS     = "cds|"
	keyGRPCCDS = "grpc-cds|"
	keyEDS     = "eds|"
	keyGRPCEDS = "grpc-eds|"
)

func (g *cdsGenerator) Generate(proxy *model.Proxy, push *model.PushContext, w *model.WatchedResource,
	_ *model.PushRequest,
) ([]*discovery.Resource, error) {
	if g.grpc {
		return g.generateGRPC(proxy, push, w), nil
	}
	services := push.ServicesForProxy(proxy)
	out := make([]*discovery.Resource, 0, 2*len(services)+len(proxy.ServiceTargets)+3)
	key := make([]byte, 0, 128)
	for _, svc := range services {
		dr := push.DestinationRule(proxy.Namespace, svc.Hostname)
		subsets := subsetNames(dr)
		for _, port := range svc.Ports {
			if port.Protocol == model.ProtocolUDP {
				continue // Envoy clusters here are TCP; Istio skips UDP ports too
			}
			for _, subset := range subsets {
				key = outboundKey(key[:0], keyCDS, svc.Hostname, port.Port, subset, dr, push)
				if svc.Resolution == model.DNSLB || (!svc.MeshExternal && originalDst(svc, dr, subset, port.Port)) {
					// The endpoints are inlined in DNS clusters, and the mesh mTLS of ORIGINAL_DST clusters depends
					// on the endpoints' TLS modes, so they are part of what the cluster depends on.
					key = strconv.AppendUint(append(key, '|'), push.EndpointSeq(svc.Hostname), 10)
				}
				key = appendMeshTLSKey(key, push, svc, dr)
				out = append(out, cached(g.cache, key, func() *discovery.Resource {
					c := buildOutboundCluster(push, svc, port, subset, dr)
					return util.Resource(c.Name, c)
				}))
			}
		}
	}
	if proxy.Type == model.SidecarProxy {
		out = append(out, inboundClusters(proxy, push)...)
	}
	out = append(out, wellKnownClusters(g.cache, proxy, push)...)
	sortByName(out)
	return out, nil
}

// generateGRPC serves the requested outbound clusters that name a service port visible to the proxy (and a
// subset its DestinationRule defines); anything else is omitted, which grpc-go reads as "does not exist".
func (g *cdsGenerator) generateGRPC(proxy *model.Proxy, push *model.PushContext, w *model.WatchedResource) []*discovery.Resource {
	if w == nil || len(w.Names) == 0 {
		return nil
	}
	visible := push.ServicesForProxy(proxy)
	out := make([]*discovery.Resource, 0, len(w.Names))
	key := make([]byte, 0, 128)
	for _, name := range w.Names {
		n, ok := parseOutbound(name)
		if !ok {
			continue
		}
		t, ok := n.resolve(visible)
		if !ok || t.svc.Resolution == model.DNSLB {
			continue
		}
		dr := push.DestinationRule(proxy.Namespace, t.svc.Hostname)
		if t.subset != "" && findSubset(dr, t.subset) == nil {
			continue
		}
		// Mesh mTLS depends on the endpoints (their identities and TLS modes) and on whether the client declares a
		// mesh identity.
		meshClient := proxy.DeclaresMeshTLS()
		key = outboundKey(key[:0], keyGRPCCDS, t.svc.Hostname, t.port.Port, t.subset, dr, push)
		key = strconv.AppendUint(append(key, '|'), push.EndpointSeq(t.svc.Hostname), 10)
		key = strconv.AppendBool(append(key, '|'), meshClient)
		out = append(out, cached(g.cache, key, func() *discovery.Resource {
			c := buildGRPCCluster(push, t.svc, t.port, t.subset, dr, meshClient)
			return util.Resource(c.Name, c)
		}))
	}
	sortByName(out)
	return out
}

func (g *edsGenerator) Generate(proxy *model.Proxy, push *model.PushContext, w *model.WatchedResource,
	_ *model.PushRequest,
) ([]*discovery.Resource, error) {
	if w == nil || len(w.Names) == 0 {
		return nil, nil
	}
	prefix := keyEDS
	if g.grpc {
		prefix = keyGRPCEDS
	}
	visible := push.ServicesForProxy(proxy)
	out := make([]*discovery.Resource, 0, len(w.Names))
	key := make([]byte, 0, 128)
	for _, name := range w.Names {
		c, ok := parseOutbound(name)
		if !ok {
			continue // inbound, malformed and non-Istio names are never served by EDS
		}
		t, ok := c.resolve(visible)
		if !ok || t.svc.Resolution == model.DNSLB {
			// Unknown, invisible or not control-plane resolved: answer with an empty assignment so the proxy
			// does not wait for a resource that will never come.
			key = append(append(append(key[:0], prefix...), "empty|"...), name...)
			out = append(out, cached(g.cache, key, func() *discovery.Resource {
				return util.Resource(name, emptyAssignment(name))
			}))
			continue
		}
		// The DestinationRule matters only through the subset's labels (locality LB settings are not
		// implemented), so the default subset does not look it up and is shared across namespaces. When
		// locality settings land, the rule's identity must be part of every EDS key.
		var dr *model.DestinationRuleEntry
		if t.subset != "" {
			dr = push.DestinationRule(proxy.Namespace, t.svc.Hostname)
		}
		key = outboundKey(key[:0], prefix, t.svc.Hostname, t.port.Port, t.subset, dr, push)
		key = strconv.AppendUint(append(key, '|'), push.EndpointSeq(t.svc.Hostname), 10)
		out = append(out, cached(g.cache, key, func() *discovery.Resource {
			return util.Resource(name, buildAssignment(name, push, t.svc, t.port, t.subset, dr, g.grpc))
		}))
	}
	sortByName(out)
	return out, nil
}

// outboundName is a parsed "outbound|port|subset|host" cluster name.
type outboundName struct {
	host, subset string
	port         int
}

// outboundTarget is an outbound cluster name resolved against the proxy's visible services.
type outboundTarget struct {
	svc    *model.Service
	port   *model.Port
	subset string
}

func parseOutbound(name string) (outboundName, bool) {
	if !strings.HasPrefix(name, model.Outbound+"|") {
		return outboundName{}, false
	}
	dir, subset, host, port, err := model.ParseSubsetKey(name)
	if err != nil || dir != model.Outbound || host == "" || port <= 0 || port > 65535 {
		return outboundName{}, false
	}
	// Only the canonical spelling: "09080" or "+9080" would share the cache entry of "9080" while asking for
	// a resource of a different name.
	if len(name) != len(model.Outbound)+digits(port)+len(subset)+len(host)+3 {
		return outboundName{}, false
	}
	return outboundName{host: host, subset: subset, port: port}, true
}

func digits(n int) int {
	d := 1
	for ; n >= 10; n /= 10 {
		d++
	}
	return d
}

// resolve finds the named service port among the visible services.
func (n outboundName) resolve(visible []*model.Service) (outboundTarget, bool) {
	svc := findService(visible, n.host)
	if svc == nil {
		return outboundTarget{}, false
	}
	p := svc.PortByNumber(n.port)
	if p == nil {
		return outboundTarget{}, false
	}
	return outboundTarget{svc: svc, port: p, subset: n.subset}, true
}

// findService looks a hostname up in a list sorted by hostname (what the push context returns), falling back to
// a scan should the order ever not hold.
func findService(services []*model.Service, host string) *model.Service {
	if i, ok := slices.BinarySearchFunc(services, host, func(s *model.Service, h string) int {
		return cmp.Compare(s.Hostname, h)
	}); ok {
		return services[i]
	}
	if slices.IsSortedFunc(services, func(a, b *model.Service) int { return cmp.Compare(a.Hostname, b.Hostname) }) {
		return nil
	}
	for _, s := range services {
		if s.Hostname == host {
			return s
		}
	}
	return nil
}

// subsetNames returns "" (the default cluster) followed by the distinct named subsets of the rule.
func subsetNames(dr *model.DestinationRuleEntry) []string {
	if dr == nil || len(dr.Spec.GetSubsets()) == 0 {
		return defaultSubsetOnly
	}
	out := make([]string, 1, 1+len(dr.Spec.Subsets))
	for _, s := range dr.Spec.Subsets {
		if s.GetName() == "" || slices.Contains(out, s.Name) {
			continue
		}
		out = append(out, s.Name)
	}
	return out
}

var defaultSubsetOnly = []string{""}

// findSubset returns the first subset of the rule with this name; nil for "" or when there is none.
func findSubset(dr *model.DestinationRuleEntry, name string) *networking.Subset {
	if dr == nil || name == "" {
		return nil
	}
	for _, s := range dr.Spec.GetSubsets() {
		if s.GetName() == name {
			return s
		}
	}
	return nil
}

// outboundKey appends the cache key of an outbound resource: kind, hostname, port, subset, the identity of the
// DestinationRule in force (or "-") and the push's config sequence.
func outboundKey(b []byte, kind, host string, port int, subset string, dr *model.DestinationRuleEntry,
	push *model.PushContext,
) []byte {
	b = append(b, kind...)
	b = append(b, host...)
	b = append(b, '|')
	b = strconv.AppendInt(b, int64(port), 10)
	b = append(b, '|')
	b = append(b, subset...)
	b = append(b, '|')
	if dr == nil {
		b = append(b, '-')
	} else {
		b = append(b, dr.Config.Namespace...)
		b = append(b, '/')
		b = append(b, dr.Config.Name...)
	}
	b = append(b, '|')
	return strconv.AppendUint(b, push.ConfigSeq(), 10)
}

func cached(c *util.Cache, key []byte, build func() *discovery.Resource) *discovery.Resource {
	if c == nil {
		return build()
	}
	return c.Get(string(key), build)
}

func sortByName(rs []*discovery.Resource) {
	slices.SortFunc(rs, func(a, b *discovery.Resource) int { return cmp.Compare(a.Name, b.Name) })
}
