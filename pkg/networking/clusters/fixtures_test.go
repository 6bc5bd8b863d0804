package clusters

import (
	"slices"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	meshconfig "istio.io/api/mesh/v1alpha1"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/pkg/model"
)

// fixture is a mesh under construction: registry contents plus Istio config.
type fixture struct {
	services  []*model.Service
	endpoints []*model.Endpoint
	workloads []*model.Workload
	configs   []*model.Config
	mesh      *meshconfig.MeshConfig
}

func (f *fixture) env() *model.Environment {
	mesh := f.mesh
	if mesh == nil {
		mesh = model.DefaultMeshConfig()
	}
	return &model.Environment{
		ServiceDiscovery: model.NewStaticDiscovery(f.services, f.endpoints, f.workloads),
		ConfigStore:      model.NewStaticConfigStore(f.configs),
		Mesh:             mesh,
		DomainSuffix:     "cluster.local",
		ClusterID:        "Kubernetes",
	}
}

// push builds a full push context.
func (f *fixture) push() *model.PushContext { return model.NewPushContext(f.env(), nil, nil) }

// endpointPush builds an endpoint-only push over prev, for the given changed hostnames.
func (f *fixture) endpointPush(prev *model.PushContext, hosts ...string) *model.PushContext {
	keys := make([]model.ConfigKey, 0, len(hosts))
	for _, h := range hosts {
		keys = append(keys, model.ConfigKey{Kind: model.KindEndpoints, Name: h})
	}
	return model.NewPushContext(f.env(), prev, model.NewPushRequest(false, model.ReasonEndpointUpdate, keys...))
}

func fqdn(name, ns string) string { return name + "." + ns + ".svc.cluster.local" }

func port(name string, n int) *model.Port {
	return &model.Port{Name: name, Port: n, Protocol: model.ProtocolFromPort(name, "")}
}

// addService adds a ClientSideLB Kubernetes-like service selecting app=name.
func (f *fixture) addService(name, ns, vip string, ports ...*model.Port) *model.Service {
	s := &model.Service{
		Hostname:  fqdn(name, ns),
		Name:      name,
		Namespace: ns,
		Ports:     ports,
		Selector:  map[string]string{"app": name},
	}
	if vip != "" {
		s.Addresses = []string{vip}
	}
	f.services = append(f.services, s)
	return s
}

// addPod adds a workload and one endpoint per service port, serving svc from ip.
func (f *fixture) addPod(svc *model.Service, pod, ip string, labels map[string]string, mutate ...func(*model.Endpoint)) {
	f.workloads = append(f.workloads, &model.Workload{
		Name: pod, Namespace: svc.Namespace, IP: ip, Labels: labels, Ready: true, TLSMode: model.TLSModeIstio, Kind: "Pod",
		ServiceAccount: "sa-" + svc.Name,
	})
	for _, p := range svc.Ports {
		e := &model.Endpoint{
			Hostname: svc.Hostname, ServicePort: p.Port, Address: ip, Port: p.Port, Labels: labels,
			ServiceAccount: "sa-" + svc.Name, Namespace: svc.Namespace, WorkloadName: pod, TLSMode: model.TLSModeIstio,
		}
		for _, m := range mutate {
			m(e)
		}
		f.endpoints = append(f.endpoints, e)
	}
}

func (f *fixture) addConfig(kind model.Kind, ns, name string, spec proto.Message) {
	f.configs = append(f.configs, &model.Config{Kind: kind, Name: name, Namespace: ns, Spec: spec})
}

func labels(kv ...string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

func locality(l string) func(*model.Endpoint) { return func(e *model.Endpoint) { e.Locality = l } }
func weight(w uint32) func(*model.Endpoint)   { return func(e *model.Endpoint) { e.Weight = w } }
func health(h model.HealthStatus) func(*model.Endpoint) {
	return func(e *model.Endpoint) { e.Health = h }
}
func tlsMode(m string) func(*model.Endpoint) { return func(e *model.Endpoint) { e.TLSMode = m } }

var reviewsHost = fqdn("reviews", "default")

// bookinfo is the Istio sample: productpage calls details and reviews (v1, v2, v3 in three zones), reviews
// calls ratings. A DestinationRule defines the reviews subsets.
func bookinfo() *fixture {
	f := &fixture{}
	pp := f.addService("productpage", "default", "10.96.0.10", port("http", 9080))
	det := f.addService("details", "default", "10.96.0.11", port("http", 9080))
	rat := f.addService("ratings", "default", "10.96.0.12", port("http", 9080))
	rev := f.addService("reviews", "default", "10.96.0.13", port("http", 9080))
	f.addPod(pp, "productpage-v1-1", "10.0.0.1", labels("app", "productpage", "version", "v1"), locality("us-east/a"))
	f.addPod(det, "details-v1-1", "10.0.1.1", labels("app", "details", "version", "v1"), locality("us-east/a"))
	f.addPod(rat, "ratings-v1-1", "10.0.2.1", labels("app", "ratings", "version", "v1"), locality("us-east/a"))
	f.addPod(rev, "reviews-v1-1", "10.0.3.1", labels("app", "reviews", "version", "v1"), locality("us-east/a"))
	f.addPod(rev, "reviews-v2-1", "10.0.3.2", labels("app", "reviews", "version", "v2"), locality("us-east/b"), weight(3))
	f.addPod(rev, "reviews-v2-2", "10.0.3.12", labels("app", "reviews", "version", "v2"), locality("us-east/b"),
		tlsMode(model.TLSModeDisabled))
	f.addPod(rev, "reviews-v3-1", "10.0.3.3", labels("app", "reviews", "version", "v3"), locality("us-west/a/rack1"))
	f.addPod(rev, "reviews-v3-2", "10.0.3.4", labels("app", "reviews", "version", "v3"), locality("us-west/a/rack1"),
		health(model.Unhealthy))
	f.addPod(rev, "reviews-v3-3", "10.0.3.5", labels("app", "reviews", "version", "v3"), locality("us-west/a/rack1"),
		health(model.Draining))
	f.addConfig(model.KindDestinationRule, "default", "reviews", &networking.DestinationRule{
		Host: "reviews",
		Subsets: []*networking.Subset{
			{Name: "v1", Labels: labels("version", "v1")},
			{Name: "v2", Labels: labels("version", "v2")},
			{Name: "v3", Labels: labels("version", "v3")},
		},
	})
	return f
}

// sidecar connects a sidecar for the pod with this IP and resolves its workload.
func sidecar(t testing.TB, push *model.PushContext, pod, ns, ip string) *model.Proxy {
	t.Helper()
	return connect(t, push, "sidecar~"+ip+"~"+pod+"."+ns+"~"+ns+".svc.cluster.local", nil)
}

func router(t testing.TB, push *model.PushContext, pod, ns, ip string) *model.Proxy {
	t.Helper()
	return connect(t, push, "router~"+ip+"~"+pod+"."+ns+"~"+ns+".svc.cluster.local", nil)
}

func grpcClient(t testing.TB, push *model.PushContext, pod, ns, ip string) *model.Proxy {
	t.Helper()
	meta, err := structpb.NewStruct(map[string]any{"GENERATOR": model.GeneratorGRPC})
	if err != nil {
		t.Fatal(err)
	}
	p := connect(t, push, "sidecar~"+ip+"~"+pod+"."+ns+"~"+ns+".svc.cluster.local", meta)
	if !p.IsGRPC() {
		t.Fatal("proxy is not a gRPC client")
	}
	return p
}

func connect(t testing.TB, push *model.PushContext, id string, meta *structpb.Struct) *model.Proxy {
	t.Helper()
	p, err := model.ParseProxy(id, meta)
	if err != nil {
		t.Fatal(err)
	}
	p.SetWorkload(push)
	return p
}

func generate(t testing.TB, g model.Generator, p *model.Proxy, push *model.PushContext, watched ...string) []*discovery.Resource {
	t.Helper()
	w := &model.WatchedResource{Names: watched, Wildcard: len(watched) == 0}
	rs, err := g.Generate(p, push, w, &model.PushRequest{Full: true, Push: push})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.Name == "" || r.Version == "" || r.Resource == nil {
			t.Errorf("resource %q: name, version and body must be set", r.Name)
		}
	}
	if !slices.IsSortedFunc(rs, func(a, b *discovery.Resource) int {
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	}) {
		t.Errorf("resources not sorted by name: %v", names(rs))
	}
	return rs
}

func names(rs []*discovery.Resource) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.Name
	}
	return out
}

// decodeClusters unmarshals CDS resources, checking each is valid (deeply) and named like its resource.
func decodeClusters(t testing.TB, rs []*discovery.Resource) map[string]*cluster.Cluster {
	t.Helper()
	out := map[string]*cluster.Cluster{}
	for _, r := range rs {
		c := &cluster.Cluster{}
		if err := r.Resource.UnmarshalTo(c); err != nil {
			t.Fatalf("%s: %v", r.Name, err)
		}
		if c.Name != r.Name {
			t.Errorf("resource %q holds cluster %q", r.Name, c.Name)
		}
		validateDeep(t, r.Name, c)
		out[c.Name] = c
	}
	return out
}

func decodeAssignments(t testing.TB, rs []*discovery.Resource) map[string]*endpoint.ClusterLoadAssignment {
	t.Helper()
	out := map[string]*endpoint.ClusterLoadAssignment{}
	for _, r := range rs {
		a := &endpoint.ClusterLoadAssignment{}
		if err := r.Resource.UnmarshalTo(a); err != nil {
			t.Fatalf("%s: %v", r.Name, err)
		}
		if a.ClusterName != r.Name {
			t.Errorf("resource %q holds assignment for %q", r.Name, a.ClusterName)
		}
		validateDeep(t, r.Name, a)
		out[a.ClusterName] = a
	}
	return out
}

// validateDeep runs Envoy's validation rules on m and on every message packed in an Any inside it (typed
// extension options, transport sockets), which ValidateAll alone does not look into.
func validateDeep(t testing.TB, what string, m proto.Message) {
	t.Helper()
	if v, ok := m.(interface{ ValidateAll() error }); ok {
		if err := v.ValidateAll(); err != nil {
			t.Errorf("%s: %T invalid: %v", what, m, err)
		}
	}
	var walk func(protoreflect.Message)
	walk = func(pm protoreflect.Message) {
		pm.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			if fd.Kind() != protoreflect.MessageKind && fd.Kind() != protoreflect.GroupKind {
				return true
			}
			visit := func(mv protoreflect.Message) {
				if a, ok := mv.Interface().(*anypb.Any); ok {
					inner, err := a.UnmarshalNew()
					if err != nil {
						t.Errorf("%s: cannot decode %s: %v", what, a.TypeUrl, err)
						return
					}
					validateDeep(t, what+" > "+a.TypeUrl, inner)
					return
				}
				walk(mv)
			}
			switch {
			case fd.IsList():
				for i := 0; i < v.List().Len(); i++ {
					visit(v.List().Get(i).Message())
				}
			case fd.IsMap():
				if fd.MapValue().Kind() == protoreflect.MessageKind {
					v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
						visit(mv.Message())
						return true
					})
				}
			default:
				visit(v.Message())
			}
			return true
		})
	}
	walk(m.ProtoReflect())
}

func istioField(t testing.TB, md interface {
	GetFilterMetadata() map[string]*structpb.Struct
}, key string,
) *structpb.Value {
	t.Helper()
	s := md.GetFilterMetadata()[istioMetadataKey]
	if s == nil {
		return nil
	}
	return s.Fields[key]
}
