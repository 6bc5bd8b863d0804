package routes

import (
	"strconv"
	"strings"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/util"
)

// Generator is the RDS generator (model.Generator) for Envoy sidecars and proxyless gRPC clients.
type Generator struct {
	cache *util.Cache
	// grpcOnly serves every proxy as a proxyless gRPC client.
	grpcOnly bool
}

var _ model.Generator = (*Generator)(nil)

// NewGenerator returns an RDS generator that shares route configurations between proxies through cache
// (nil: build every time).
func NewGenerator(cache *util.Cache) *Generator { return &Generator{cache: cache} }

// NewRDS is the RDS generator registered for Envoy proxies; it still serves gRPC clients (by their
// GENERATOR metadata) when no gRPC generator is registered.
func NewRDS(cache *util.Cache) *Generator { return NewGenerator(cache) }

// NewGRPCRDS is the RDS generator registered for proxyless gRPC clients (GENERATOR=grpc).
func NewGRPCRDS(cache *util.Cache) *Generator { return &Generator{cache: cache, grpcOnly: true} }

// Generate builds the requested route configurations. Sidecars ask for port names ("9080"), gRPC clients for
// their dial targets ("reviews.default.svc.cluster.local:9080"); names that do not resolve are omitted.
func (g *Generator) Generate(proxy *model.Proxy, push *model.PushContext, w *model.WatchedResource, _ *model.PushRequest) ([]*discovery.Resource, error) {
	if w == nil || len(w.Names) == 0 {
		return nil, nil // route configurations are only ever requested by name
	}
	scope := ""
	if g.cache != nil {
		scope = ScopeKey(proxy, push)
	}
	out := make([]*discovery.Resource, 0, len(w.Names))
	for _, name := range w.Names {
		if g.grpcOnly || proxy.IsGRPC() {
			t, ok := ResolveGRPCTarget(proxy, push, name)
			if !ok {
				continue
			}
			out = append(out, g.get("grpc-rds|"+scope+"|"+name, func() *discovery.Resource {
				return util.Resource(name, BuildGRPCRouteConfig(proxy, push, t))
			}))
			continue
		}
		port, err := strconv.Atoi(name)
		if err != nil || port <= 0 || port > 65535 || strconv.Itoa(port) != name {
			continue
		}
		out = append(out, g.get("rds|"+scope+"|"+name, func() *discovery.Resource {
			return util.Resource(name, BuildSidecarRouteConfig(proxy, push, port))
		}))
	}
	return out, nil
}

func (g *Generator) get(key string, build func() *discovery.Resource) *discovery.Resource {
	if g.cache == nil {
		return build()
	}
	return g.cache.Get(key, build)
}

// ScopeKey identifies everything outbound route configurations depend on besides the requested name, so
// proxies with equal keys get identical route configurations:
//   - push.ConfigSeq(): services, VirtualServices, DestinationRules and Sidecars are unchanged;
//   - the mesh domain and outbound traffic policy (allow_any/block_all);
//   - the proxy's namespace: service and VirtualService visibility, DestinationRule lookup, short-name domains,
//     sourceNamespace matches;
//   - the Sidecar resource scoping the proxy (its services), by identity: its content is covered by ConfigSeq;
//   - the proxy's labels, only when a VirtualService visible to the namespace has sourceLabels matches.
//
// Router (gateway) proxies are not served by these generators.
func ScopeKey(proxy *model.Proxy, push *model.PushContext) string {
	var b strings.Builder
	b.WriteString(strconv.FormatUint(push.ConfigSeq(), 10))
	b.WriteByte('|')
	b.WriteString(push.Domain)
	b.WriteByte('|')
	b.WriteString(push.Mesh.GetOutboundTrafficPolicy().GetMode().String())
	b.WriteByte('|')
	b.WriteString(proxy.Namespace)
	b.WriteByte('|')
	if sc := push.SidecarForProxy(proxy); sc != nil {
		b.WriteString(sc.Namespace + "/" + sc.Name)
	}
	if usesSourceLabels(push.VirtualServicesForMesh(proxy.Namespace)) {
		b.WriteString("|labels:")
		b.WriteString(labelsKey(proxy.Labels))
	}
	return b.String()
}

// usesSourceLabels reports whether any HTTP, TLS or TCP match block of the VirtualServices selects by the
// client's labels, which makes their translation proxy-specific.
func usesSourceLabels(list []*model.VirtualServiceEntry) bool {
	for _, vs := range list {
		for _, r := range vs.Spec.GetHttp() {
			for _, m := range r.GetMatch() {
				if len(m.GetSourceLabels()) > 0 {
					return true
				}
			}
		}
		for _, r := range vs.Spec.GetTcp() {
			for _, m := range r.GetMatch() {
				if len(m.GetSourceLabels()) > 0 {
					return true
				}
			}
		}
		for _, r := range vs.Spec.GetTls() {
			for _, m := range r.GetMatch() {
				if len(m.GetSourceLabels()) > 0 {
					return true
				}
			}
		}
	}
	return false
}

// labelsKey encodes labels unambiguously and in order.
func labelsKey(labels map[string]string) string {
	var b strings.Builder
	for _, k := range model.SortedKeys(labels) {
		b.WriteString(strconv.Quote(k))
		b.WriteByte('=')
		b.WriteString(strconv.Quote(labels[k]))
		b.WriteByte(',')
	}
	return b.String()
}
