// Package perf holds benchmarks of whole-proxy config generation on synthetic meshes.
//
//	go test ./test/perf -run '^$' -bench . -benchmem
package perf

import (
	"fmt"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/types/known/structpb"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/clusters"
	"github.com/meshd/meshd/pkg/networking/listeners"
	"github.com/meshd/meshd/pkg/networking/routes"
	"github.com/meshd/meshd/pkg/networking/util"
)

// mesh builds n HTTP services on port 9080 spread over 10 namespaces, 3 endpoints each (versions v1..v3), a
// DestinationRule with three subsets per service and an 80/20 VirtualService on every tenth service.
func mesh(n int) *model.Environment {
	var (
		services  []*model.Service
		endpoints []*model.Endpoint
		workloads []*model.Workload
		configs   []*model.Config
	)
	created := time.Unix(1_700_000_000, 0)
	for i := range n {
		ns := fmt.Sprintf("ns%d", i%10)
		name := fmt.Sprintf("svc%d", i)
		host := name + "." + ns + ".svc.cluster.local"
		services = append(services, &model.Service{
			Hostname: host, Name: name, Namespace: ns, Addresses: []string{fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)},
			Ports:    []*model.Port{{Name: "http", Port: 9080, Protocol: model.ProtocolHTTP}},
			Selector: map[string]string{"app": name}, CreationTime: created,
		})
		for v := 1; v <= 3; v++ {
			ip := fmt.Sprintf("10.%d.%d.%d", 100+v, i/250, i%250+1)
			labels := map[string]string{"app": name, "version": fmt.Sprintf("v%d", v)}
			w := &model.Workload{Name: fmt.Sprintf("%s-v%d", name, v), Namespace: ns, IP: ip, Labels: labels,
				ServiceAccount: name, Ready: true, TLSMode: model.TLSModeIstio, Kind: "Pod"}
			workloads = append(workloads, w)
			endpoints = append(endpoints, &model.Endpoint{Hostname: host, ServicePort: 9080, Address: ip, Port: 9080,
				Labels: labels, ServiceAccount: name, Namespace: ns, WorkloadName: w.Name, Health: model.Healthy, TLSMode: model.TLSModeIstio})
		}
		configs = append(configs, &model.Config{Kind: model.KindDestinationRule, Name: name, Namespace: ns, CreationTimestamp: created,
			Spec: &networking.DestinationRule{Host: name, Subsets: []*networking.Subset{
				{Name: "v1", Labels: map[string]string{"version": "v1"}},
				{Name: "v2", Labels: map[string]string{"version": "v2"}},
				{Name: "v3", Labels: map[string]string{"version": "v3"}},
			}}})
		if i%10 == 0 {
			configs = append(configs, &model.Config{Kind: model.KindVirtualService, Name: name, Namespace: ns, CreationTimestamp: created,
				Spec: &networking.VirtualService{Hosts: []string{name}, Http: []*networking.HTTPRoute{{Route: []*networking.HTTPRouteDestination{
					{Destination: &networking.Destination{Host: name, Subset: "v1"}, Weight: 80},
					{Destination: &networking.Destination{Host: name, Subset: "v2"}, Weight: 20},
				}}}}})
		}
	}
	return &model.Environment{
		ServiceDiscovery: model.NewStaticDiscovery(services, endpoints, workloads),
		ConfigStore:      model.NewStaticConfigStore(configs),
		Mesh:             model.DefaultMeshConfig(),
		DomainSuffix:     "cluster.local",
	}
}

type sidecarGenerators struct{ cds, eds, lds, rds model.Generator }

func newGenerators(c *util.Cache) sidecarGenerators {
	return sidecarGenerators{clusters.NewCDS(c), clusters.NewEDS(c), listeners.NewLDS(c), routes.NewRDS(c)}
}

// fullConfig generates what one sidecar receives on connect: all clusters, the endpoints of every EDS cluster,
// all listeners and route 9080. It returns the number of resources and their marshalled size.
func fullConfig(b testing.TB, g sidecarGenerators, p *model.Proxy, push *model.PushContext) (n, size int) {
	req := &model.PushRequest{Full: true, Push: push}
	gen := func(gen model.Generator, w *model.WatchedResource) []*discovery.Resource {
		res, err := gen.Generate(p, push, w, req)
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range res {
			size += len(r.Resource.Value)
		}
		n += len(res)
		return res
	}
	cds := gen(g.cds, &model.WatchedResource{TypeURL: model.ClusterType, Wildcard: true})
	names := make([]string, 0, len(cds))
	for _, r := range cds {
		if _, _, _, _, err := model.ParseSubsetKey(r.Name); err == nil && r.Name[0] == 'o' {
			names = append(names, r.Name)
		}
	}
	gen(g.eds, &model.WatchedResource{TypeURL: model.EndpointType, Names: names})
	gen(g.lds, &model.WatchedResource{TypeURL: model.ListenerType, Wildcard: true})
	gen(g.rds, &model.WatchedResource{TypeURL: model.RouteType, Names: []string{"9080"}})
	return n, size
}

func sidecar(b testing.TB, push *model.PushContext) *model.Proxy {
	md, _ := structpb.NewStruct(map[string]any{"NAMESPACE": "ns0"})
	p, err := model.ParseProxy("sidecar~10.101.0.1~svc0-v1.ns0~ns0.svc.cluster.local", md)
	if err != nil {
		b.Fatal(err)
	}
	p.SetWorkload(push)
	return p
}

// BenchmarkSidecarFullConfig: one sidecar's complete config in a mesh of 1000 HTTP services.
//   - cold: an empty cache, what the first proxy of a push pays (the baseline);
//   - warm: the cache filled by a previous proxy of the same push, what every other proxy pays.
func BenchmarkSidecarFullConfig(b *testing.B) {
	env := mesh(1000)
	push := model.NewPushContext(env, nil, nil)
	p := sidecar(b, push)
	b.Run("cold", func(b *testing.B) {
		b.ReportAllocs()
		var n, size int
		for b.Loop() {
			n, size = fullConfig(b, newGenerators(util.NewCache(100_000)), p, push)
		}
		b.ReportMetric(float64(n), "resources")
		b.ReportMetric(float64(size), "bytes")
	})
	b.Run("warm", func(b *testing.B) {
		b.ReportAllocs()
		g := newGenerators(util.NewCache(100_000))
		fullConfig(b, g, p, push)
		for b.Loop() {
			fullConfig(b, g, p, push)
		}
	})
}

// BenchmarkPushContext: building the snapshot for a full push of the same mesh, and for an endpoint-only push
// of one service.
func BenchmarkPushContext(b *testing.B) {
	env := mesh(1000)
	first := model.NewPushContext(env, nil, nil)
	b.Run("full", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			model.NewPushContext(env, first, model.NewPushRequest(true, model.ReasonConfigUpdate))
		}
	})
	b.Run("endpoints-one-service", func(b *testing.B) {
		b.ReportAllocs()
		req := model.NewPushRequest(false, model.ReasonEndpointUpdate,
			model.ConfigKey{Kind: model.KindEndpoints, Name: "svc1.ns1.svc.cluster.local", Namespace: "ns1"})
		for b.Loop() {
			model.NewPushContext(env, first, req)
		}
	})
}

// TestFullConfigIsComplete checks that the benchmarks measure a sidecar's whole config: per service a default
// and three subset clusters each with endpoints, the three well-known clusters and the inbound cluster of its
// own service, the three listeners, and route 9080.
func TestFullConfigIsComplete(t *testing.T) {
	const services = 100
	push := model.NewPushContext(mesh(services), nil, nil)
	p := sidecar(t, push)
	n, size := fullConfig(t, newGenerators(util.NewCache(1000)), p, push)
	clusters := services*4 + 3 + 1
	if want := clusters + services*4 + 3 + 1; n != want {
		t.Fatalf("generated %d resources, want %d", n, want)
	}
	if size == 0 {
		t.Fatal("nothing marshalled")
	}
}
