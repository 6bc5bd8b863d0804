package clusters

import (
	"strconv"
	"testing"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/util"
)

// benchMesh is 1000 HTTP services in 10 namespaces, each with 2 ports and 3 endpoints, and a sidecar in ns0
// that sees all of them (2000 outbound clusters).
func benchMesh(b *testing.B) (*model.PushContext, *model.Proxy, []string) {
	b.Helper()
	f := &fixture{}
	for i := range 1000 {
		ns := "ns" + strconv.Itoa(i%10)
		name := "svc" + strconv.Itoa(i)
		svc := f.addService(name, ns, "10.96."+strconv.Itoa(i/250)+"."+strconv.Itoa(i%250), port("http", 8080), port("http-admin", 9090))
		for j := range 3 {
			n := i*3 + j
			ip := "10." + strconv.Itoa(1+n/65536) + "." + strconv.Itoa(n/256%256) + "." + strconv.Itoa(n%256)
			f.addPod(svc, name+"-"+strconv.Itoa(j), ip, labels("app", name, "version", "v1"),
				locality("region/zone-"+strconv.Itoa(j)))
		}
	}
	push := f.push()
	p := sidecar(b, push, "svc0-0", "ns0", "10.1.0.0")
	rs, err := NewCDS(nil).Generate(p, push, &model.WatchedResource{Wildcard: true}, nil)
	if err != nil {
		b.Fatal(err)
	}
	watched := outboundNames(rs)
	if len(watched) != 2000 {
		b.Fatalf("%d outbound clusters, want 2000", len(watched))
	}
	return push, p, watched
}

func BenchmarkCDS(b *testing.B) {
	push, p, _ := benchMesh(b)
	benchColdWarm(b, NewCDS, p, push, &model.WatchedResource{Wildcard: true})
}

func BenchmarkEDS(b *testing.B) {
	push, p, watched := benchMesh(b)
	benchColdWarm(b, NewEDS, p, push, &model.WatchedResource{Names: watched})
}

// benchColdWarm measures a generator with an empty cache (the first proxy of a push) and with the cache a
// previous proxy filled (every other proxy).
func benchColdWarm(b *testing.B, newGen func(*util.Cache) model.Generator, p *model.Proxy, push *model.PushContext, w *model.WatchedResource) {
	gen := func(g model.Generator) {
		if _, err := g.Generate(p, push, w, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("cold", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			gen(newGen(util.NewCache(10000)))
		}
	})
	b.Run("warm", func(b *testing.B) {
		g := newGen(util.NewCache(10000))
		gen(g)
		b.ReportAllocs()
		for b.Loop() {
			gen(g)
		}
	})
}
