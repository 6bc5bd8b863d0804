// Package golden pins the complete config meshd generates for the Bookinfo sample: the productpage sidecar and a
// proxyless gRPC client, every xDS type, as readable JSON reviewed like code. Refresh with
//
//	go test ./test/golden -update
package golden

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"testing"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/clusters"
	"github.com/meshd/meshd/pkg/networking/listeners"
	"github.com/meshd/meshd/pkg/networking/routes"
	"github.com/meshd/meshd/pkg/networking/util"
	"github.com/meshd/meshd/pkg/serviceregistry/file"
)

var update = flag.Bool("update", false, "rewrite the golden files from the current output")

type generators struct{ cds, eds, lds, rds model.Generator }

func sidecarGenerators(c *util.Cache) generators {
	return generators{clusters.NewCDS(c), clusters.NewEDS(c), listeners.NewLDS(c), routes.NewRDS(c)}
}

func grpcGenerators(c *util.Cache) generators {
	return generators{clusters.NewGRPCCDS(c), clusters.NewGRPCEDS(c), listeners.NewGRPCLDS(c), routes.NewGRPCRDS(c)}
}

// bookinfoPush loads the project's Bookinfo sample through the file source, as `make run` does.
func bookinfoPush(t testing.TB) *model.PushContext {
	t.Helper()
	src, err := file.New("../../samples/bookinfo", "cluster.local", nil)
	if err != nil {
		t.Fatal(err)
	}
	env := &model.Environment{ServiceDiscovery: src, ConfigStore: src, Mesh: model.DefaultMeshConfig(), DomainSuffix: "cluster.local"}
	return model.NewPushContext(env, nil, nil)
}

func proxy(t testing.TB, push *model.PushContext, id string, meta map[string]any) *model.Proxy {
	t.Helper()
	md, err := structpb.NewStruct(meta)
	if err != nil {
		t.Fatal(err)
	}
	p, err := model.ParseProxy(id, md)
	if err != nil {
		t.Fatal(err)
	}
	p.SetWorkload(push)
	return p
}

// generateAll follows the order a real client subscribes in: wildcard (or named) LDS and CDS, then the RDS
// names the listeners reference and the EDS names the clusters reference.
func generateAll(t testing.TB, g generators, p *model.Proxy, push *model.PushContext, ldsNames, cdsNames []string) map[string][]*discovery.Resource {
	t.Helper()
	gen := func(gen model.Generator, w *model.WatchedResource) []*discovery.Resource {
		res, err := gen.Generate(p, push, w, &model.PushRequest{Full: true, Push: push})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	out := map[string][]*discovery.Resource{}
	out["lds"] = gen(g.lds, &model.WatchedResource{TypeURL: model.ListenerType, Names: ldsNames, Wildcard: ldsNames == nil})
	var rdsNames []string
	for _, r := range out["lds"] {
		rdsNames = append(rdsNames, rdsReferences(t, r)...)
	}
	slices.Sort(rdsNames)
	out["rds"] = gen(g.rds, &model.WatchedResource{TypeURL: model.RouteType, Names: slices.Compact(rdsNames)})
	if cdsNames == nil && p.IsGRPC() {
		cdsNames = clustersReferenced(t, out["rds"])
	}
	out["cds"] = gen(g.cds, &model.WatchedResource{TypeURL: model.ClusterType, Names: cdsNames, Wildcard: cdsNames == nil})
	var edsNames []string
	for _, r := range out["cds"] {
		if _, _, _, _, err := model.ParseSubsetKey(r.Name); err == nil && r.Name[:len(model.Outbound)] == model.Outbound {
			edsNames = append(edsNames, r.Name)
		}
	}
	out["eds"] = gen(g.eds, &model.WatchedResource{TypeURL: model.EndpointType, Names: edsNames})
	return out
}

// rdsReferences returns the route names an HTTP connection manager in the listener asks for.
func rdsReferences(t testing.TB, r *discovery.Resource) []string {
	var l listener.Listener
	if err := r.Resource.UnmarshalTo(&l); err != nil {
		t.Fatal(err)
	}
	var names []string
	add := func(m *hcm.HttpConnectionManager) {
		if rds := m.GetRds(); rds != nil {
			names = append(names, rds.RouteConfigName)
		}
	}
	if api := l.GetApiListener().GetApiListener(); api != nil {
		var m hcm.HttpConnectionManager
		if err := api.UnmarshalTo(&m); err == nil {
			add(&m)
		}
	}
	for _, fc := range l.FilterChains {
		for _, f := range fc.Filters {
			var m hcm.HttpConnectionManager
			if f.GetTypedConfig().MessageIs(&m) {
				if err := f.GetTypedConfig().UnmarshalTo(&m); err != nil {
					t.Fatal(err)
				}
				add(&m)
			}
		}
	}
	return names
}

// clustersReferenced lists the clusters route configurations send traffic to, as grpc-go then requests them.
func clustersReferenced(t testing.TB, rs []*discovery.Resource) []string {
	var names []string
	for _, r := range rs {
		js, err := protojson.Marshal(r.Resource)
		if err != nil {
			t.Fatal(err)
		}
		var walk func(v any)
		walk = func(v any) {
			switch x := v.(type) {
			case map[string]any:
				for k, c := range x {
					if s, ok := c.(string); ok && (k == "cluster" || k == "name") && len(s) > 9 && s[:9] == "outbound|" {
						names = append(names, s)
					}
					walk(c)
				}
			case []any:
				for _, c := range x {
					walk(c)
				}
			}
		}
		var v any
		if err := json.Unmarshal(js, &v); err != nil {
			t.Fatal(err)
		}
		walk(v)
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// render turns resources into stable, indented JSON (protojson alone varies its whitespace on purpose).
func render(t testing.TB, rs []*discovery.Resource) []byte {
	t.Helper()
	var items []any
	for _, r := range rs {
		js, err := protojson.Marshal(r.Resource)
		if err != nil {
			t.Fatalf("%s: %v", r.Name, err)
		}
		var v any
		if err := json.Unmarshal(js, &v); err != nil {
			t.Fatal(err)
		}
		items = append(items, v)
	}
	b, err := json.MarshalIndent(items, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the generated config; review the change and run `go test ./test/golden -update`.\n%s",
			path, firstDifference(want, got))
	}
}

func firstDifference(want, got []byte) string {
	wl, gl := bytes.Split(want, []byte("\n")), bytes.Split(got, []byte("\n"))
	for i := 0; i < len(wl) || i < len(gl); i++ {
		var w, g []byte
		if i < len(wl) {
			w = wl[i]
		}
		if i < len(gl) {
			g = gl[i]
		}
		if !bytes.Equal(w, g) {
			return "line " + itoa(i+1) + ":\n  want: " + string(w) + "\n  got:  " + string(g)
		}
	}
	return ""
}

func itoa(n int) string { return string(json.Number(jsonInt(n))) }

func jsonInt(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

func validate(t *testing.T, rs []*discovery.Resource) {
	t.Helper()
	for _, r := range rs {
		m, err := r.Resource.UnmarshalNew()
		if err != nil {
			t.Fatalf("%s: %v", r.Name, err)
		}
		if v, ok := m.(interface{ ValidateAll() error }); ok {
			if err := v.ValidateAll(); err != nil {
				t.Errorf("%s fails Envoy validation: %v", r.Name, err)
			}
		}
	}
}

func TestProductpageSidecarGolden(t *testing.T) {
	push := bookinfoPush(t)
	p := proxy(t, push, "sidecar~10.244.0.10~productpage-v1.default~default.svc.cluster.local",
		map[string]any{"NAMESPACE": "default", "ISTIO_VERSION": "1.28.0"})
	if p.Workload == nil || p.Workload.Name != "productpage-v1" {
		t.Fatalf("productpage workload not found by IP: %+v", p.Workload)
	}
	out := generateAll(t, sidecarGenerators(util.NewCache(1000)), p, push, nil, nil)
	for _, typ := range []string{"cds", "eds", "lds", "rds"} {
		if len(out[typ]) == 0 {
			t.Fatalf("no %s resources", typ)
		}
		validate(t, out[typ])
		checkGolden(t, "productpage."+typ+".json", render(t, out[typ]))
	}
}

func TestGRPCClientGolden(t *testing.T) {
	push := bookinfoPush(t)
	p := proxy(t, push, "sidecar~10.244.0.99~grpc-client.default~default.svc.cluster.local",
		map[string]any{"NAMESPACE": "default", "GENERATOR": "grpc"})
	out := generateAll(t, grpcGenerators(util.NewCache(1000)), p, push, []string{"reviews.default.svc.cluster.local:9080"}, nil)
	for _, typ := range []string{"cds", "eds", "lds", "rds"} {
		if len(out[typ]) == 0 {
			t.Fatalf("no %s resources", typ)
		}
		validate(t, out[typ])
		checkGolden(t, "grpc-client."+typ+".json", render(t, out[typ]))
	}
}
