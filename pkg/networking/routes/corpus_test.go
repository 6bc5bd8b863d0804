package routes_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"
	"sigs.k8s.io/yaml"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/routes"
	"github.com/meshd/meshd/pkg/networking/routes/routestest"
)

// corpusDir holds Istio's published Bookinfo traffic-management samples, beside the checkout (read-only).
const corpusDir = "../../../../shared/corpus/istio-samples/bookinfo/networking"

// corpusObjects reads the VirtualServices and DestinationRules of one sample file, in the "default" namespace
// unless the file says otherwise.
func corpusObjects(t *testing.T, path string) []*model.Config {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []*model.Config
	for _, doc := range splitYAML(string(raw)) {
		js, err := yaml.YAMLToJSON([]byte(doc))
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		var obj struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name      string `json:"name"`
				Namespace string `json:"namespace"`
			} `json:"metadata"`
			Spec json.RawMessage `json:"spec"`
		}
		if err := json.Unmarshal(js, &obj); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		var spec proto.Message
		switch obj.Kind {
		case "VirtualService":
			spec = &networking.VirtualService{}
		case "DestinationRule":
			spec = &networking.DestinationRule{}
		default:
			continue
		}
		if err := protojson.Unmarshal(obj.Spec, spec); err != nil {
			t.Fatalf("%s: %s %s: %v", path, obj.Kind, obj.Metadata.Name, err)
		}
		ns := obj.Metadata.Namespace
		if ns == "" {
			ns = "default"
		}
		out = append(out, routestest.Config(model.Kind(obj.Kind), ns, obj.Metadata.Name, spec))
	}
	return out
}

func splitYAML(s string) []string {
	var docs []string
	for _, d := range strings.Split("\n"+s, "\n---") {
		if strings.TrimSpace(d) != "" {
			docs = append(docs, d)
		}
	}
	return docs
}

// corpusPush is Bookinfo plus the ServiceEntry host the egress sample routes to, with the sample's objects
// and, for subsets, Bookinfo's DestinationRules.
func corpusPush(t *testing.T, configs []*model.Config) *model.PushContext {
	services, pods := routestest.Bookinfo()
	services = append(services, &model.Service{
		Hostname: "www.googleapis.com", Namespace: "default", MeshExternal: true, Resolution: model.DNSLB,
		Ports: []*model.Port{{Name: "http", Port: 80, Protocol: model.ProtocolHTTP}, {Name: "https", Port: 443, Protocol: model.ProtocolHTTPS}},
	})
	hasDR := false
	for _, c := range configs {
		hasDR = hasDR || c.Kind == model.KindDestinationRule
	}
	if !hasDR {
		configs = append(configs, corpusObjects(t, filepath.Join(corpusDir, "destination-rule-all.yaml"))...)
	}
	return routestest.Push(services, pods, configs, nil)
}

// Every VirtualService of Istio's Bookinfo samples translates, for sidecars and for gRPC clients, into routes
// that pass Envoy's validation, and the sidecar route configurations built with them stay valid.
func TestCorpusBookinfoVirtualServices(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(corpusDir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no samples in %s (the corpus sits beside the checkout): %v", corpusDir, err)
	}
	translated := 0
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			configs := corpusObjects(t, f)
			push := corpusPush(t, configs)
			proxy := routestest.Sidecar(t, push, "productpage-v1", "default", "10.1.0.1", nil)
			for _, vs := range push.AllVirtualServices() {
				for _, port := range corpusPorts(push, vs) {
					for _, flavor := range []routes.Flavor{routes.Sidecar, routes.GRPC} {
						rs := routes.TranslateHTTPRoutes(vs, push, proxy, port, flavor)
						if len(rs) == 0 && flavor == routes.Sidecar {
							t.Errorf("%s port %d: no routes", vs.Config, port)
						}
						rc := &route.RouteConfiguration{Name: "test", VirtualHosts: []*route.VirtualHost{{Name: "vh", Domains: []string{"*"}, Routes: rs}}}
						if err := routestest.ValidateDeep(rc); err != nil {
							t.Errorf("%s port %d flavor %d: %v", vs.Config, port, flavor, err)
						}
						translated++
					}
				}
			}
			for _, port := range []string{"9080", "80"} {
				routeConfig(t, proxy, push, port) // validates and checks domains
			}
		})
	}
	if translated == 0 {
		t.Fatal("no VirtualService translated")
	}
}

// corpusPorts are the ports a sample VirtualService is routed on: its services' HTTP ports, or 80 for hosts that
// are not services (gateway samples with host "*").
func corpusPorts(push *model.PushContext, vs *model.VirtualServiceEntry) []int {
	var ports []int
	for _, h := range vs.Hosts {
		if svc := push.ServiceByHostname(h); svc != nil {
			for _, p := range svc.Ports {
				if p.Protocol.IsHTTP() {
					ports = append(ports, p.Port)
				}
			}
		}
	}
	if len(ports) == 0 {
		ports = []int{80}
	}
	return ports
}

// The samples mean what Istio users expect: spot checks of weights, header match, fault injection and port
// rewriting against their sidecar translation.
func TestCorpusBookinfoSemantics(t *testing.T) {
	reviews := func(t *testing.T, file string) []*route.Route {
		configs := corpusObjects(t, filepath.Join(corpusDir, file))
		push := corpusPush(t, configs)
		proxy := routestest.Sidecar(t, push, "productpage-v1", "default", "10.1.0.1", nil)
		return routes.TranslateHTTPRoutes(push.VirtualServiceForHost("default", reviewsFQDN), push, proxy, 9080, routes.Sidecar)
	}
	t.Run("80-20", func(t *testing.T) {
		rs := reviews(t, "virtual-service-reviews-80-20.yaml")
		assertProto(t, "weights", action(t, rs[0]).GetWeightedClusters(), &route.WeightedCluster{Clusters: []*route.WeightedCluster_ClusterWeight{
			{Name: "outbound|9080|v1|" + reviewsFQDN, Weight: wrapperspb.UInt32(80)},
			{Name: "outbound|9080|v2|" + reviewsFQDN, Weight: wrapperspb.UInt32(20)},
		}})
	})
	t.Run("test-v2", func(t *testing.T) {
		rs := reviews(t, "virtual-service-reviews-test-v2.yaml")
		if len(rs) != 2 || rs[0].GetMatch().GetHeaders()[0].GetStringMatch().GetExact() != "jason" ||
			action(t, rs[0]).GetCluster() != "outbound|9080|v2|"+reviewsFQDN || action(t, rs[1]).GetCluster() != "outbound|9080|v1|"+reviewsFQDN {
			t.Errorf("routes = %v", rs)
		}
	})
	t.Run("fault-abort", func(t *testing.T) {
		configs := corpusObjects(t, filepath.Join(corpusDir, "fault-injection-details-v1.yaml"))
		push := corpusPush(t, configs)
		proxy := routestest.Sidecar(t, push, "productpage-v1", "default", "10.1.0.1", nil)
		rs := vhost(t, routeConfig(t, proxy, push, "9080"), "details.default.svc.cluster.local:9080").GetRoutes()
		f := &faultfilter.HTTPFault{}
		if err := rs[0].GetTypedPerFilterConfig()[routes.FaultFilterName].UnmarshalTo(f); err != nil {
			t.Fatal(err)
		}
		if f.GetAbort().GetHttpStatus() != 555 || f.GetAbort().GetPercentage().GetNumerator() != 1000000 {
			t.Errorf("abort = %v", f.GetAbort())
		}
	})
	t.Run("egress-port-rewrite", func(t *testing.T) {
		configs := corpusObjects(t, filepath.Join(corpusDir, "egress-rule-google-apis.yaml"))
		push := corpusPush(t, configs)
		proxy := routestest.Sidecar(t, push, "productpage-v1", "default", "10.1.0.1", nil)
		rs := vhost(t, routeConfig(t, proxy, push, "80"), "www.googleapis.com:80").GetRoutes()
		if c := action(t, rs[0]).GetCluster(); c != "outbound|443||www.googleapis.com" {
			t.Errorf("cluster = %q", c)
		}
	})
}
