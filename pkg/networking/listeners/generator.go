package listeners

import (
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/util"
)

// Generator is the LDS generator (model.Generator) for Envoy sidecars and proxyless gRPC clients.
type Generator struct {
	cache *util.Cache
	// grpcOnly serves every proxy as a proxyless gRPC client.
	grpcOnly bool
}

var _ model.Generator = (*Generator)(nil)

// NewGenerator returns an LDS generator that shares marshalled listeners between proxies through cache (nil:
// build every time).
func NewGenerator(cache *util.Cache) *Generator { return &Generator{cache: cache} }

// NewLDS is the LDS generator registered for Envoy proxies; it still serves gRPC clients (by their
// GENERATOR metadata) when no gRPC generator is registered.
func NewLDS(cache *util.Cache) *Generator { return NewGenerator(cache) }

// NewGRPCLDS is the LDS generator registered for proxyless gRPC clients (GENERATOR=grpc).
func NewGRPCLDS(cache *util.Cache) *Generator { return &Generator{cache: cache, grpcOnly: true} }

// Generate builds the proxy's listeners. Sidecars subscribe with a wildcard and get all of theirs (or, asking
// by name, those of the names that exist); gRPC clients name each listener, unknown names are omitted.
//
// Caching: a listener's cache key is a complete encoding of what its builder reads (kind, name, address, port,
// destination clusters and weights, outbound policy, interception mode, inbound ports, protocols and mTLS modes,
// the content keys of the AuthorizationPolicies that apply), computed fresh from the push for every proxy. Equal
// keys therefore mean byte-identical listeners, across proxies and across pushes, and no entry can be stale.
func (g *Generator) Generate(proxy *model.Proxy, push *model.PushContext, w *model.WatchedResource, _ *model.PushRequest) ([]*discovery.Resource, error) {
	if w == nil {
		return nil, nil
	}
	if g.grpcOnly || proxy.IsGRPC() {
		out := make([]*discovery.Resource, 0, len(w.Names))
		for _, name := range w.Names {
			s, ok := grpcListenerSpec(proxy, push, name)
			if !ok {
				continue
			}
			build := func() *discovery.Resource { return util.Resource(name, s.build()) }
			if g.cache == nil {
				out = append(out, build())
				continue
			}
			out = append(out, g.cache.Get(s.key, build))
		}
		return out, nil
	}
	var want map[string]bool
	if !w.Wildcard && len(w.Names) > 0 {
		want = make(map[string]bool, len(w.Names))
		for _, n := range w.Names {
			want[n] = true
		}
	}
	specs := sidecarSpecs(proxy, push)
	out := make([]*discovery.Resource, 0, len(specs))
	for _, s := range specs {
		if want != nil && !want[s.name] {
			continue
		}
		build := func() *discovery.Resource { return util.Resource(s.name, s.build()) }
		if g.cache == nil {
			out = append(out, build())
			continue
		}
		out = append(out, g.cache.Get(s.key, build))
	}
	return out, nil
}
