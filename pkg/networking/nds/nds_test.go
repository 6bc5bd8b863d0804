package nds

import (
	"reflect"
	"testing"

	networking "istio.io/api/networking/v1alpha3"

	ndspb "github.com/meshd/meshd/pkg/dns/nds"
	"github.com/meshd/meshd/pkg/model"
)

type fixture struct {
	services  []*model.Service
	endpoints []*model.Endpoint
	configs   []*model.Config
}

func (f *fixture) push() *model.PushContext {
	env := &model.Environment{
		ServiceDiscovery: model.NewStaticDiscovery(f.services, f.endpoints, nil),
		ConfigStore:      model.NewStaticConfigStore(f.configs),
		Mesh:             model.DefaultMeshConfig(),
		DomainSuffix:     "cluster.local",
	}
	return model.NewPushContext(env, nil, nil)
}

// kubeService adds a Kubernetes-shaped service (name.ns.svc.cluster.local) with one port per number.
func (f *fixture) kubeService(name, ns string, vips []string, ports ...int) *model.Service {
	s := &model.Service{Hostname: name + "." + ns + ".svc.cluster.local", Name: name, Namespace: ns, Addresses: vips}
	for _, p := range ports {
		s.Ports = append(s.Ports, &model.Port{Name: "http", Port: p, Protocol: model.ProtocolHTTP})
	}
	if len(vips) == 0 {
		s.Resolution = model.Passthrough
	}
	f.services = append(f.services, s)
	return s
}

// serviceEntry adds a ServiceEntry-shaped service: its name is the host.
func (f *fixture) serviceEntry(host, ns string, res model.Resolution, addrs ...string) *model.Service {
	s := &model.Service{Hostname: host, Name: host, Namespace: ns, Addresses: addrs, Resolution: res,
		Ports: []*model.Port{{Name: "https", Port: 443, Protocol: model.ProtocolHTTPS}}, MeshExternal: true}
	f.services = append(f.services, s)
	return s
}

func (f *fixture) endpoint(svc *model.Service, port int, addr string, h model.HealthStatus) {
	f.endpoints = append(f.endpoints, &model.Endpoint{Hostname: svc.Hostname, ServicePort: port, Address: addr,
		Port: port, Namespace: svc.Namespace, Health: h})
}

func sidecar(t *testing.T, push *model.PushContext, ns string) *model.Proxy {
	t.Helper()
	p, err := model.ParseProxy("sidecar~10.1.0.1~client."+ns+"~"+ns+".svc.cluster.local", nil)
	if err != nil {
		t.Fatal(err)
	}
	p.SetWorkload(push)
	return p
}

func TestBuildNameTable(t *testing.T) {
	f := &fixture{}
	f.kubeService("reviews", "default", []string{"10.96.0.13"}, 9080)
	f.kubeService("ratings", "other", []string{"10.96.1.1", "fd00::1"}, 9080)
	f.serviceEntry("api.example.com", "ext", model.ClientSideLB, "240.240.0.1")
	f.serviceEntry("placeholder.example.com", "ext", model.ClientSideLB, "0.0.0.0")
	f.serviceEntry("dns.example.com", "ext", model.DNSLB)
	// A ServiceEntry for a cluster-shaped host is still external: its name is the host.
	f.serviceEntry("legacy.default.svc.cluster.local", "default", model.ClientSideLB, "240.240.0.2")
	ext := &model.Service{Hostname: "extname.default.svc.cluster.local", Name: "extname", Namespace: "default",
		Resolution: model.DNSLB, ExternalName: "example.org", MeshExternal: true}
	f.services = append(f.services, ext)
	headless := f.kubeService("db", "default", nil, 5432, 9100)
	f.endpoint(headless, 5432, "10.0.5.2", model.Healthy)
	f.endpoint(headless, 5432, "10.0.5.1", model.Healthy)
	f.endpoint(headless, 9100, "10.0.5.1", model.Healthy) // same pod on another port: listed once
	f.endpoint(headless, 5432, "10.0.5.3", model.Unhealthy)
	f.endpoint(headless, 5432, "10.0.5.4", model.Draining)
	f.kubeService("empty", "default", nil, 80) // headless without endpoints
	hidden := f.kubeService("private", "other", []string{"10.96.1.2"}, 80)
	hidden.ExportTo = []string{"."}

	push := f.push()
	got := BuildNameTable(sidecar(t, push, "default"), push).Table
	want := map[string]*ndspb.NameInfo{
		"reviews.default.svc.cluster.local": {IPs: []string{"10.96.0.13"}, Registry: "Kubernetes", Shortname: "reviews",
			Namespace: "default"},
		"ratings.other.svc.cluster.local": {IPs: []string{"10.96.1.1", "fd00::1"}, Registry: "Kubernetes",
			Shortname: "ratings", Namespace: "other"},
		"api.example.com":                  {IPs: []string{"240.240.0.1"}, Registry: "External", Namespace: "ext"},
		"legacy.default.svc.cluster.local": {IPs: []string{"240.240.0.2"}, Registry: "External", Namespace: "default"},
		"db.default.svc.cluster.local": {IPs: []string{"10.0.5.1", "10.0.5.2"}, Registry: "Kubernetes", Shortname: "db",
			Namespace: "default"},
	}
	if !reflect.DeepEqual(got, want) {
		for h := range got {
			t.Logf("got  %s: %+v", h, got[h])
		}
		for h := range want {
			t.Logf("want %s: %+v", h, want[h])
		}
		t.Fatal("name table differs")
	}

	// From the other namespace the entries are the same (the agent derives the short forms for its own
	// namespace), and the namespace-private service becomes visible.
	other := BuildNameTable(sidecar(t, push, "other"), push).Table
	for h, info := range got {
		if !reflect.DeepEqual(other[h], info) {
			t.Errorf("%s from the other namespace: %+v, want %+v", h, other[h], info)
		}
	}
	if other["private.other.svc.cluster.local"] == nil {
		t.Error("a service exported to its own namespace is missing there")
	}
}

func TestSidecarEgressScopesTable(t *testing.T) {
	f := &fixture{}
	f.kubeService("reviews", "default", []string{"10.96.0.13"}, 9080)
	f.kubeService("ratings", "other", []string{"10.96.1.1"}, 9080)
	f.configs = append(f.configs, &model.Config{Kind: model.KindSidecar, Name: "default", Namespace: "default",
		Spec: &networking.Sidecar{Egress: []*networking.IstioEgressListener{{Hosts: []string{"./*"}}}}})
	push := f.push()
	got := BuildNameTable(sidecar(t, push, "default"), push).Table
	if got["reviews.default.svc.cluster.local"] == nil || got["ratings.other.svc.cluster.local"] != nil {
		t.Fatalf("Sidecar egress ./* should keep only default's services, got %v", keys(got))
	}
}

func TestGenerate(t *testing.T) {
	f := &fixture{}
	f.kubeService("reviews", "default", []string{"10.96.0.13"}, 9080)
	push := f.push()
	proxy := sidecar(t, push, "default")
	gen := NewNDS()
	res, err := gen.Generate(proxy, push, &model.WatchedResource{TypeURL: ndspb.TypeURL}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 || res[0].Name != "" || res[0].Version == "" {
		t.Fatalf("want one unnamed, versioned resource, got %v", res)
	}
	tbl, err := ndspb.FromAny(res[0].Resource)
	if err != nil {
		t.Fatal(err)
	}
	if got := tbl.Table["reviews.default.svc.cluster.local"]; got == nil || got.IPs[0] != "10.96.0.13" {
		t.Fatalf("decoded table: %v", tbl.Table)
	}
	again, _ := gen.Generate(proxy, push, &model.WatchedResource{TypeURL: ndspb.TypeURL}, nil)
	if again[0].Version != res[0].Version {
		t.Error("the same push gave two versions: unchanged tables would be re-sent")
	}

	f.kubeService("details", "default", []string{"10.96.0.11"}, 9080)
	push2 := f.push()
	changed, _ := gen.Generate(sidecar(t, push2, "default"), push2, &model.WatchedResource{TypeURL: ndspb.TypeURL}, nil)
	if changed[0].Version == res[0].Version {
		t.Error("a new service did not change the version")
	}
}

func keys(m map[string]*ndspb.NameInfo) []string { return model.SortedKeys(m) }
