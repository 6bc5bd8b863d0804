package routes

import (
	"testing"

	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/routes/routestest"
)

// The sidecar builder's VirtualService index must pick the VirtualService PushContext.VirtualServiceForHost
// picks (exact host first, else the first covering wildcard, oldest first), for every host.
func TestVSIndexMatchesPushContext(t *testing.T) {
	vs := func(name string, hosts ...string) *model.Config {
		return routestest.Config(model.KindVirtualService, "default", name, &networking.VirtualService{Hosts: hosts})
	}
	services, pods := routestest.Bookinfo()
	push := routestest.Push(services, pods, []*model.Config{
		vs("wild-old", "*.default.svc.cluster.local"),
		vs("reviews", "reviews"),
		vs("reviews-dup", "reviews.default.svc.cluster.local", "ratings"),
		vs("wild-new", "*.svc.cluster.local", "*.example.com"),
		vs("ext", "api.example.com"),
	}, nil)
	idx := newVSIndex(push.VirtualServicesForMesh("default"))
	hosts := []string{"reviews.default.svc.cluster.local", "ratings.default.svc.cluster.local", "details.default.svc.cluster.local",
		"httpbin.other.svc.cluster.local", "api.example.com", "www.example.com", "example.org"}
	for _, h := range hosts {
		want := push.VirtualServiceForHost("default", h)
		if got := idx.forHost(h); got != want {
			t.Errorf("%s: index picked %v, push context %v", h, name(got), name(want))
		}
	}
}

func name(e *model.VirtualServiceEntry) string {
	if e == nil {
		return "<nil>"
	}
	return e.Config.Name
}
