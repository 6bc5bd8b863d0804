// Package routestest holds the fixtures the route and listener tests share: a Bookinfo-like mesh, proxies
// built the way the xDS server builds them, and a deep validator for generated Envoy resources.
package routestest

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	meshconfig "istio.io/api/mesh/v1alpha1"

	"github.com/meshd/meshd/pkg/model"
)

// Domain is the cluster domain of the fixtures.
const Domain = "cluster.local"

// HTTPService is a service with one HTTP port named "http".
func HTTPService(name, ns, vip string, port int) *model.Service {
	return Service(name, ns, vip, &model.Port{Name: "http", Port: port, Protocol: model.ProtocolHTTP})
}

// Service is a cluster-local service selecting app=<name>.
func Service(name, ns, vip string, ports ...*model.Port) *model.Service {
	s := &model.Service{
		Hostname:  name + "." + ns + ".svc." + Domain,
		Name:      name,
		Namespace: ns,
		Ports:     ports,
		Selector:  map[string]string{"app": name},
	}
	if vip != "" {
		s.Addresses = []string{vip}
	}
	return s
}

// Pod is a workload with app and version labels.
func Pod(name, ns, ip, app, version string) *model.Workload {
	return &model.Workload{Name: name, Namespace: ns, IP: ip, Ready: true, Kind: "Pod",
		Labels: map[string]string{"app": app, "version": version}}
}

// Bookinfo returns the services and pods of a Bookinfo-like mesh in namespace "default": productpage, reviews,
// ratings, details (HTTP 9080), mysqldb (TCP 3306), and httpbin in namespace "other" (HTTP 8000).
func Bookinfo() ([]*model.Service, []*model.Workload) {
	services := []*model.Service{
		HTTPService("productpage", "default", "10.0.0.1", 9080),
		HTTPService("reviews", "default", "10.0.0.2", 9080),
		HTTPService("ratings", "default", "10.0.0.3", 9080),
		HTTPService("details", "default", "10.0.0.4", 9080),
		Service("mysqldb", "default", "10.0.0.10", &model.Port{Name: "tcp-mysql", Port: 3306, Protocol: model.ProtocolTCP}),
		HTTPService("httpbin", "other", "10.0.1.1", 8000),
	}
	pods := []*model.Workload{
		Pod("productpage-v1", "default", "10.1.0.1", "productpage", "v1"),
		Pod("reviews-v1", "default", "10.1.0.2", "reviews", "v1"),
		Pod("reviews-v2", "default", "10.1.0.3", "reviews", "v2"),
		Pod("reviews-v3", "default", "10.1.0.4", "reviews", "v3"),
		Pod("ratings-v1", "default", "10.1.0.5", "ratings", "v1"),
		Pod("details-v1", "default", "10.1.0.6", "details", "v1"),
		Pod("mysqldb-v1", "default", "10.1.0.7", "mysqldb", "v1"),
		Pod("httpbin-v1", "other", "10.1.1.1", "httpbin", "v1"),
	}
	return services, pods
}

// Config wraps a spec as a config object; objects are created one second apart in argument order, so earlier
// ones take precedence in conflicts.
func Config(kind model.Kind, ns, name string, spec proto.Message) *model.Config {
	return &model.Config{Kind: kind, Namespace: ns, Name: name, Spec: spec}
}

// Push builds a push context over the given registry and configs; mesh may be nil for the defaults.
func Push(services []*model.Service, pods []*model.Workload, configs []*model.Config, mesh *meshconfig.MeshConfig) *model.PushContext {
	if mesh == nil {
		mesh = model.DefaultMeshConfig()
	}
	base := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	for i, c := range configs {
		if c.CreationTimestamp.IsZero() {
			c.CreationTimestamp = base.Add(time.Duration(i) * time.Second)
		}
	}
	env := &model.Environment{
		ServiceDiscovery: model.NewStaticDiscovery(services, nil, pods),
		ConfigStore:      model.NewStaticConfigStore(configs),
		Mesh:             mesh,
		DomainSuffix:     Domain,
	}
	return model.NewPushContext(env, nil, nil)
}

// RegistryOnlyMesh is the default mesh config with outboundTrafficPolicy REGISTRY_ONLY.
func RegistryOnlyMesh() *meshconfig.MeshConfig {
	m := model.DefaultMeshConfig()
	m.OutboundTrafficPolicy = &meshconfig.MeshConfig_OutboundTrafficPolicy{Mode: meshconfig.MeshConfig_OutboundTrafficPolicy_REGISTRY_ONLY}
	return m
}

// Sidecar is the proxy of a pod as the xDS server sees it: parsed from its node id and metadata, with its
// workload looked up in push.
func Sidecar(t testing.TB, push *model.PushContext, pod, ns, ip string, meta map[string]any) *model.Proxy {
	t.Helper()
	if meta == nil {
		meta = map[string]any{}
	}
	if _, ok := meta["NAMESPACE"]; !ok {
		meta["NAMESPACE"] = ns
	}
	st, err := structpb.NewStruct(meta)
	if err != nil {
		t.Fatal(err)
	}
	p, err := model.ParseProxy("sidecar~"+ip+"~"+pod+"."+ns+"~"+ns+".svc."+Domain, st)
	if err != nil {
		t.Fatal(err)
	}
	p.SetWorkload(push)
	return p
}

// GRPCClient is a proxyless gRPC client (GENERATOR=grpc) in namespace ns.
func GRPCClient(t testing.TB, push *model.PushContext, pod, ns, ip string, labels map[string]any) *model.Proxy {
	t.Helper()
	meta := map[string]any{"GENERATOR": "grpc"}
	if labels != nil {
		meta["LABELS"] = labels
	}
	return Sidecar(t, push, pod, ns, ip, meta)
}

// ValidateDeep runs ValidateAll on m and, because ValidateAll does not look inside google.protobuf.Any, on
// every message packed in an Any anywhere below it. Packed types must be registered (linked in), as Envoy
// requires them to be known.
func ValidateDeep(m proto.Message) error {
	var errs []error
	validate(m.ProtoReflect(), string(m.ProtoReflect().Descriptor().Name()), &errs)
	return errors.Join(errs...)
}

func validate(m protoreflect.Message, path string, errs *[]error) {
	if v, ok := m.Interface().(interface{ ValidateAll() error }); ok {
		if err := v.ValidateAll(); err != nil {
			*errs = append(*errs, fmt.Errorf("%s: %w", path, err))
		}
	}
	walk(m, path, errs)
}

func walk(m protoreflect.Message, path string, errs *[]error) {
	if m.Descriptor().FullName() == "google.protobuf.Any" {
		a := m.Interface().(*anypb.Any)
		inner, err := a.UnmarshalNew()
		if err != nil {
			*errs = append(*errs, fmt.Errorf("%s: Any %s: %w", path, a.GetTypeUrl(), err))
			return
		}
		validate(inner.ProtoReflect(), path+"<"+strings.TrimPrefix(a.GetTypeUrl(), "type.googleapis.com/")+">", errs)
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		p := path + "." + string(fd.Name())
		switch {
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				walk(l.Get(i).Message(), fmt.Sprintf("%s[%d]", p, i), errs)
			}
		case fd.IsMap() && fd.MapValue().Message() != nil:
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				walk(mv.Message(), fmt.Sprintf("%s[%v]", p, k.Interface()), errs)
				return true
			})
		case !fd.IsList() && !fd.IsMap() && fd.Message() != nil:
			walk(v.Message(), p, errs)
		}
		return true
	})
}

// LargeMesh is n HTTP services spread over 10 namespaces ("ns-0".."ns-9"), each with a VIP, port 8080 and one
// of 20 other HTTP ports, plus a client pod "client" in ns-0: the shape of the generation benchmarks.
func LargeMesh(n int) ([]*model.Service, []*model.Workload) {
	services := make([]*model.Service, 0, n)
	for i := range n {
		ns := fmt.Sprintf("ns-%d", i%10)
		vip := fmt.Sprintf("10.%d.%d.%d", 100+i/65536, (i/256)%256, i%256)
		services = append(services, Service(fmt.Sprintf("svc-%d", i), ns, vip,
			&model.Port{Name: "http", Port: 8080, Protocol: model.ProtocolHTTP},
			&model.Port{Name: "http-alt", Port: 9000 + i%20, Protocol: model.ProtocolHTTP}))
	}
	return services, []*model.Workload{Pod("client", "ns-0", "10.200.0.1", "svc-0", "v1")}
}
