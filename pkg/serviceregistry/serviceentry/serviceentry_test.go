package serviceentry

import (
	"reflect"
	"testing"

	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/pkg/config/parse"
	"github.com/meshd/meshd/pkg/model"
)

func parseOne(t *testing.T, yaml string) *model.Config {
	t.Helper()
	objs, errs := parse.Parse([]byte(yaml), "se.yaml")
	if len(errs) > 0 || len(objs.Configs) != 1 {
		t.Fatalf("parse: %v", errs)
	}
	return objs.Configs[0]
}

func TestConvertServices(t *testing.T) {
	cfg := parseOne(t, `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: shop, labels: {team: a}}
spec:
  hosts: [api.example.com, www.example.com]
  addresses: [240.0.0.1]
  exportTo: ["."]
  ports:
  - {number: 443, name: https, protocol: HTTPS}
  - {number: 80, name: http-web, targetPort: 8080}
  resolution: DNS
`)
	svcs := ConvertServices(cfg)
	if len(svcs) != 2 {
		t.Fatalf("got %d services, want one per host", len(svcs))
	}
	want := &model.Service{
		Hostname: "api.example.com", Name: "api.example.com", Namespace: "shop",
		Addresses: []string{"240.0.0.1"}, Resolution: model.DNSLB, MeshExternal: true,
		Ports: []*model.Port{
			{Name: "https", Port: 443, Protocol: model.ProtocolHTTPS},
			{Name: "http-web", Port: 80, Protocol: model.ProtocolHTTP},
		},
		TargetPorts: map[int]model.TargetPort{80: {Number: 8080}},
		Labels:      map[string]string{"team": "a"}, ExportTo: []string{"."}, Source: "se.yaml",
	}
	if !reflect.DeepEqual(svcs[0], want) {
		t.Errorf("got  %+v\nwant %+v", svcs[0], want)
	}
	if svcs[1].Hostname != "www.example.com" {
		t.Errorf("second host %s", svcs[1].Hostname)
	}

	resolutions := []struct {
		in       networking.ServiceEntry_Resolution
		location networking.ServiceEntry_Location
		want     model.Resolution
	}{
		{networking.ServiceEntry_NONE, networking.ServiceEntry_MESH_INTERNAL, model.Passthrough},
		{networking.ServiceEntry_STATIC, networking.ServiceEntry_MESH_INTERNAL, model.ClientSideLB},
		{networking.ServiceEntry_DNS, networking.ServiceEntry_MESH_EXTERNAL, model.DNSLB},
		{networking.ServiceEntry_DNS_ROUND_ROBIN, networking.ServiceEntry_MESH_EXTERNAL, model.DNSLB},
	}
	for _, r := range resolutions {
		c := &model.Config{Kind: model.KindServiceEntry, Name: "x", Namespace: "ns",
			Spec: &networking.ServiceEntry{Hosts: []string{"a.b"}, Resolution: r.in, Location: r.location}}
		s := ConvertServices(c)[0]
		if s.Resolution != r.want || s.MeshExternal != (r.location == networking.ServiceEntry_MESH_EXTERNAL) {
			t.Errorf("%v/%v: resolution %v meshExternal %v", r.in, r.location, s.Resolution, s.MeshExternal)
		}
	}
	if ConvertServices(&model.Config{Kind: model.KindGateway, Spec: &networking.Gateway{}}) != nil {
		t.Error("non-ServiceEntry config converted")
	}
}

func TestEndpointsInline(t *testing.T) {
	cfg := parseOne(t, `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: data}
spec:
  hosts: [db.internal]
  location: MESH_INTERNAL
  ports:
  - {number: 5432, name: pg}
  - {number: 9000, name: admin, targetPort: 9001}
  - {number: 9100, name: metrics}
  resolution: STATIC
  endpoints:
  - address: 10.0.0.5
    ports: {pg: 6432}
    labels: {version: v1, security.istio.io/tlsMode: istio}
    locality: us/east/a
    weight: 3
    serviceAccount: db
  - address: 10.0.0.6
`)
	svcs := ConvertServices(cfg)
	eps := Endpoints(cfg, svcs, nil)
	type brief struct {
		addr          string
		svcPort, port int
		tls           string
	}
	var got []brief
	for _, e := range eps {
		got = append(got, brief{e.Address, e.ServicePort, e.Port, e.TLSMode})
		if e.Hostname != "db.internal" || e.Namespace != "data" || e.Health != model.Healthy {
			t.Errorf("endpoint %+v", e)
		}
	}
	want := []brief{
		{"10.0.0.5", 5432, 6432, "istio"}, // endpoint port by name
		{"10.0.0.6", 5432, 5432, "disabled"},
		{"10.0.0.5", 9000, 9001, "istio"}, // target port
		{"10.0.0.6", 9000, 9001, "disabled"},
		{"10.0.0.5", 9100, 9100, "istio"}, // service port
		{"10.0.0.6", 9100, 9100, "disabled"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("endpoints\n got  %v\n want %v", got, want)
	}
	e := eps[0]
	if e.Weight != 3 || e.Locality != "us/east/a" || e.ServiceAccount != "db" || e.Labels["version"] != "v1" {
		t.Errorf("endpoint details %+v", e)
	}
}

func TestEndpointsFromSelectorAndDNS(t *testing.T) {
	cfg := parseOne(t, `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vms, namespace: shop}
spec:
  hosts: [vm.shop.internal]
  location: MESH_INTERNAL
  ports: [{number: 80, name: http, targetPort: 8080}]
  resolution: STATIC
  workloadSelector: {labels: {app: vm}}
`)
	weCfg := parseOne(t, `apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-1, namespace: shop}
spec: {address: 192.168.0.7, labels: {app: vm}, ports: {http: 18080}, serviceAccount: vm-sa, locality: r/z}
`)
	we := ConvertWorkloadEntry(weCfg)
	pod := &model.Workload{Name: "p", Namespace: "shop", IP: "10.0.0.3", Labels: map[string]string{"app": "vm"}, Kind: "Pod", Ready: false, TLSMode: "istio"}
	elsewhere := &model.Workload{Name: "q", Namespace: "other", IP: "10.0.0.4", Labels: map[string]string{"app": "vm"}, Kind: "Pod", Ready: true}
	unlabelled := &model.Workload{Name: "r", Namespace: "shop", IP: "10.0.0.5", Labels: map[string]string{"app": "x"}, Kind: "Pod", Ready: true}
	svcs := ConvertServices(cfg)
	if !reflect.DeepEqual(svcs[0].Selector, map[string]string{"app": "vm"}) {
		t.Errorf("selector %v", svcs[0].Selector)
	}
	eps := Endpoints(cfg, svcs, []*model.Workload{we, pod, elsewhere, unlabelled})
	if len(eps) != 2 {
		t.Fatalf("got %d endpoints, want 2: %+v", len(eps), eps)
	}
	if e := eps[0]; e.Address != "10.0.0.3" || e.Port != 8080 || e.Health != model.Unhealthy {
		t.Errorf("pod endpoint %+v", e)
	}
	if e := eps[1]; e.Address != "192.168.0.7" || e.Port != 18080 || e.Health != model.Healthy || e.ServiceAccount != "vm-sa" ||
		e.TLSMode != model.TLSModeIstio || e.WorkloadName != "vm-1" || e.Locality != "r/z" {
		t.Errorf("WorkloadEntry endpoint %+v", e)
	}

	dns := parseOne(t, `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: google}
spec:
  hosts: [www.googleapis.com]
  ports: [{number: 443, name: https, protocol: HTTPS}]
  resolution: DNS
`)
	eps = Endpoints(dns, ConvertServices(dns), nil)
	if len(eps) != 1 || eps[0].Address != "www.googleapis.com" || eps[0].Port != 443 || eps[0].TLSMode != model.TLSModeDisabled {
		t.Errorf("DNS endpoints %+v", eps)
	}
	none := &model.Config{Kind: model.KindServiceEntry, Name: "n", Namespace: "default",
		Spec: &networking.ServiceEntry{Hosts: []string{"x.com"}, Ports: []*networking.ServicePort{{Number: 80, Name: "http"}}}}
	if eps := Endpoints(none, ConvertServices(none), nil); len(eps) != 0 {
		t.Errorf("resolution NONE has endpoints %+v", eps)
	}
}

func TestConvertWorkloadEntry(t *testing.T) {
	tests := []struct {
		name    string
		spec    *networking.WorkloadEntry
		wantTLS string
		wantSA  string
	}{
		{"defaults", &networking.WorkloadEntry{Address: "1.2.3.4"}, model.TLSModeIstio, "default"},
		{"label disables mtls", &networking.WorkloadEntry{Address: "1.2.3.4", Labels: map[string]string{"security.istio.io/tlsMode": "disabled"}, ServiceAccount: "vm"}, model.TLSModeDisabled, "vm"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := ConvertWorkloadEntry(&model.Config{Kind: model.KindWorkloadEntry, Name: "we", Namespace: "ns", Spec: tt.spec})
			if w.TLSMode != tt.wantTLS || w.ServiceAccount != tt.wantSA || w.Kind != KindWorkloadEntry || w.IP != "1.2.3.4" ||
				!w.Ready || w.Name != "we" || w.Namespace != "ns" {
				t.Errorf("workload %+v", w)
			}
		})
	}
}
