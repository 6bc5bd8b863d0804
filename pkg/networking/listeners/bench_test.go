package listeners_test

import (
	"testing"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/listeners"
	"github.com/meshd/meshd/pkg/networking/routes/routestest"
	"github.com/meshd/meshd/pkg/networking/util"
)

// BenchmarkLDS generates every listener of one sidecar in a mesh of 1000 HTTP services (23 listeners): built
// from scratch, and with the shared cache warm as for every further proxy.
func BenchmarkLDS(b *testing.B) {
	services, pods := routestest.LargeMesh(1000)
	push := routestest.Push(services, pods, nil, nil)
	proxy := routestest.Sidecar(b, push, "client", "ns-0", "10.200.0.1", nil)
	w := &model.WatchedResource{TypeURL: model.ListenerType, Wildcard: true}
	for _, bc := range []struct {
		name  string
		cache *util.Cache
	}{{"nocache", nil}, {"cached", util.NewCache(1000)}} {
		b.Run(bc.name, func(b *testing.B) {
			g := listeners.NewGenerator(bc.cache)
			b.ReportAllocs()
			for b.Loop() {
				res, err := g.Generate(proxy, push, w, nil)
				if err != nil || len(res) != 23 {
					b.Fatal(len(res), err)
				}
			}
		})
	}
}
