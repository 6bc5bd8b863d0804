package routes_test

import (
	"testing"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/routes"
	"github.com/meshd/meshd/pkg/networking/routes/routestest"
	"github.com/meshd/meshd/pkg/networking/util"
)

// BenchmarkRDS generates route "8080" (1000 virtual hosts) for one sidecar in a mesh of 1000 HTTP services:
// built from scratch, and served from the shared cache as for every further proxy of the namespace.
func BenchmarkRDS(b *testing.B) {
	services, pods := routestest.LargeMesh(1000)
	push := routestest.Push(services, pods, nil, nil)
	proxy := routestest.Sidecar(b, push, "client", "ns-0", "10.200.0.1", nil)
	w := &model.WatchedResource{TypeURL: model.RouteType, Names: []string{"8080"}}
	for _, bc := range []struct {
		name  string
		cache *util.Cache
	}{{"nocache", nil}, {"cached", util.NewCache(100)}} {
		b.Run(bc.name, func(b *testing.B) {
			g := routes.NewGenerator(bc.cache)
			b.ReportAllocs()
			for b.Loop() {
				res, err := g.Generate(proxy, push, w, nil)
				if err != nil || len(res) != 1 {
					b.Fatal(res, err)
				}
			}
		})
	}
}
