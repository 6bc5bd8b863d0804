package kube

import (
	"reflect"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/meshd/meshd/pkg/model"
)

func ptr[T any](v T) *T { return &v }

func TestConvertService(t *testing.T) {
	created := metav1.NewTime(time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC))
	base := func(mut func(*corev1.Service)) *corev1.Service {
		s := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "reviews", Namespace: "shop", Labels: map[string]string{"app": "reviews"},
				CreationTimestamp: created},
			Spec: corev1.ServiceSpec{
				ClusterIP: "10.96.0.12",
				Selector:  map[string]string{"app": "reviews"},
				Ports:     []corev1.ServicePort{{Name: "http", Port: 9080, Protocol: corev1.ProtocolTCP}},
			},
		}
		if mut != nil {
			mut(s)
		}
		return s
	}
	tests := []struct {
		name   string
		svc    *corev1.Service
		suffix string
		check  func(t *testing.T, s *model.Service)
	}{
		{"cluster IP service", base(nil), "", func(t *testing.T, s *model.Service) {
			want := &model.Service{
				Hostname: "reviews.shop.svc.cluster.local", Name: "reviews", Namespace: "shop",
				Addresses: []string{"10.96.0.12"}, Resolution: model.ClientSideLB,
				Ports:    []*model.Port{{Name: "http", Port: 9080, Protocol: model.ProtocolHTTP}},
				Selector: map[string]string{"app": "reviews"}, Labels: map[string]string{"app": "reviews"},
				Source: "kube", CreationTime: created.Time,
			}
			if !reflect.DeepEqual(s, want) {
				t.Errorf("got  %+v\nwant %+v", s, want)
			}
		}},
		{"domain suffix", base(nil), "corp.example", func(t *testing.T, s *model.Service) {
			if s.Hostname != "reviews.shop.svc.corp.example" {
				t.Errorf("hostname %s", s.Hostname)
			}
		}},
		{"dual stack", base(func(s *corev1.Service) { s.Spec.ClusterIPs = []string{"10.96.0.12", "fd00::12"} }), "", func(t *testing.T, s *model.Service) {
			if !reflect.DeepEqual(s.Addresses, []string{"10.96.0.12", "fd00::12"}) {
				t.Errorf("addresses %v", s.Addresses)
			}
		}},
		{"headless", base(func(s *corev1.Service) { s.Spec.ClusterIP = "None"; s.Spec.ClusterIPs = []string{"None"} }), "", func(t *testing.T, s *model.Service) {
			if len(s.Addresses) != 0 || s.Resolution != model.Passthrough {
				t.Errorf("addresses %v resolution %v, want none and Passthrough", s.Addresses, s.Resolution)
			}
		}},
		{"external name", base(func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeExternalName
			s.Spec.ExternalName = "db.example.com"
			s.Spec.ClusterIP = ""
			s.Spec.Selector = nil
		}), "", func(t *testing.T, s *model.Service) {
			if s.Resolution != model.DNSLB || s.ExternalName != "db.example.com" || !s.MeshExternal || len(s.Addresses) != 0 || s.Selector != nil {
				t.Errorf("got %+v", s)
			}
		}},
		{"target ports by number and name", base(func(s *corev1.Service) {
			s.Spec.Ports = []corev1.ServicePort{
				{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)},
				{Name: "grpc", Port: 90, TargetPort: intstr.FromString("grpc-port")},
				{Name: "tcp-same", Port: 100},
				{Name: "tcp-str", Port: 110, TargetPort: intstr.FromString("1110")},
			}
		}), "", func(t *testing.T, s *model.Service) {
			want := map[int]model.TargetPort{80: {Number: 8080}, 90: {Name: "grpc-port"}, 110: {Number: 1110}}
			if !reflect.DeepEqual(s.TargetPorts, want) {
				t.Errorf("target ports %v, want %v", s.TargetPorts, want)
			}
		}},
		{"protocols", base(func(s *corev1.Service) {
			s.Spec.Ports = []corev1.ServicePort{
				{Name: "web", Port: 1, AppProtocol: ptr("kubernetes.io/h2c")},
				{Name: "http-api", Port: 2, AppProtocol: ptr("grpc")},
				{Name: "http-web", Port: 3},
				{Name: "mongo", Port: 4},
				{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
				{Name: "sctp", Port: 5, Protocol: corev1.ProtocolSCTP},
				{Name: "", Port: 6},
				{Name: "https-x", Port: 7, AppProtocol: ptr("unknown-thing")},
			}
		}), "", func(t *testing.T, s *model.Service) {
			want := []*model.Port{
				{Name: "web", Port: 1, Protocol: model.ProtocolHTTP2},
				{Name: "http-api", Port: 2, Protocol: model.ProtocolGRPC},
				{Name: "http-web", Port: 3, Protocol: model.ProtocolHTTP},
				{Name: "mongo", Port: 4, Protocol: model.ProtocolMongo},
				{Name: "dns", Port: 53, Protocol: model.ProtocolUDP},
				{Name: "", Port: 6, Protocol: model.ProtocolUnsupported},
				{Name: "https-x", Port: 7, Protocol: model.ProtocolHTTPS},
			}
			if !reflect.DeepEqual(s.Ports, want) {
				for _, p := range s.Ports {
					t.Logf("%+v", p)
				}
				t.Errorf("ports differ")
			}
		}},
		{"exportTo annotation", base(func(s *corev1.Service) {
			s.Annotations = map[string]string{AnnotationExportTo: " ., istio-system ,,"}
		}), "", func(t *testing.T, s *model.Service) {
			if !reflect.DeepEqual(s.ExportTo, []string{".", "istio-system"}) {
				t.Errorf("exportTo %q", s.ExportTo)
			}
		}},
		{"empty selector selects nothing", base(func(s *corev1.Service) { s.Spec.Selector = map[string]string{} }), "", func(t *testing.T, s *model.Service) {
			if s.Selector != nil {
				t.Errorf("selector %v, want nil", s.Selector)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.check(t, ConvertService(tt.svc, tt.suffix)) })
	}
}

func TestConvertPod(t *testing.T) {
	pod := func(mut func(*corev1.Pod)) *corev1.Pod {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "reviews-v1", Namespace: "default", Labels: map[string]string{"app": "reviews"}},
			Spec: corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{Name: "app",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 9080}, {ContainerPort: 9999}}}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.244.0.12",
				Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
		}
		if mut != nil {
			mut(p)
		}
		return p
	}
	tests := []struct {
		name      string
		pod       *corev1.Pod
		wantNil   bool
		wantIP    string
		wantReady bool
	}{
		{"running and ready", pod(nil), false, "10.244.0.12", true},
		{"ready condition false", pod(func(p *corev1.Pod) {
			p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse}}
		}), false, "10.244.0.12", false},
		{"other conditions but no Ready one", pod(func(p *corev1.Pod) {
			p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionTrue}}
		}), false, "10.244.0.12", false},
		{"minimal: IP and no conditions", pod(func(p *corev1.Pod) { p.Status.Conditions = nil }), false, "10.244.0.12", true},
		{"minimal: IP, no phase, no conditions", pod(func(p *corev1.Pod) { p.Status.Conditions = nil; p.Status.Phase = "" }), false, "10.244.0.12", true},
		{"no IP yet", pod(func(p *corev1.Pod) { p.Status.PodIP = ""; p.Status.Conditions = nil }), false, "", false},
		{"pending with IP", pod(func(p *corev1.Pod) { p.Status.Phase = corev1.PodPending }), false, "", false},
		{"terminating", pod(func(p *corev1.Pod) { p.DeletionTimestamp = &metav1.Time{Time: time.Now()} }), false, "10.244.0.12", false},
		{"succeeded", pod(func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }), true, "", false},
		{"failed", pod(func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed }), true, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := ConvertPod(tt.pod)
			if tt.wantNil {
				if w != nil {
					t.Fatalf("got %+v, want nil", w)
				}
				return
			}
			if w == nil {
				t.Fatal("got nil")
			}
			if w.IP != tt.wantIP || w.Ready != tt.wantReady {
				t.Errorf("IP %q ready %v, want %q %v", w.IP, w.Ready, tt.wantIP, tt.wantReady)
			}
			if w.Name != "reviews-v1" || w.Namespace != "default" || w.Kind != "Pod" || w.NodeName != "node-1" ||
				w.ServiceAccount != "default" || w.Labels["app"] != "reviews" {
				t.Errorf("workload %+v", w)
			}
			if !reflect.DeepEqual(w.ContainerPorts, map[string]int{"http": 9080}) {
				t.Errorf("container ports %v", w.ContainerPorts)
			}
		})
	}
}

func TestPodTLSModeAndLocality(t *testing.T) {
	tests := []struct {
		name         string
		labels       map[string]string
		annotations  map[string]string
		containers   []string
		sa           string
		wantTLS      string
		wantLocality string
		wantSA       string
	}{
		{"plain pod", nil, nil, []string{"app"}, "", model.TLSModeDisabled, "", "default"},
		{"injected sidecar container", nil, nil, []string{"app", "istio-proxy"}, "reviews", model.TLSModeIstio, "", "reviews"},
		{"sidecar status annotation", nil, map[string]string{AnnotationSidecarStatus: "{}"}, []string{"app"}, "", model.TLSModeIstio, "", "default"},
		{"label wins over container", map[string]string{LabelTLSMode: "disabled"}, nil, []string{"istio-proxy"}, "", model.TLSModeDisabled, "", "default"},
		{"label says istio", map[string]string{LabelTLSMode: "istio"}, nil, []string{"app"}, "", model.TLSModeIstio, "", "default"},
		{"topology labels", map[string]string{LabelRegion: "us-east1", LabelZone: "us-east1-b", LabelSubzone: "rack7"}, nil, nil, "", model.TLSModeDisabled, "us-east1/us-east1-b/rack7", "default"},
		{"region only", map[string]string{LabelRegion: "eu"}, nil, nil, "", model.TLSModeDisabled, "eu", "default"},
		{"istio-locality label", map[string]string{LabelIstioLocality: "r.z.s", LabelRegion: "x"}, nil, nil, "", model.TLSModeDisabled, "r/z/s", "default"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", Labels: tt.labels, Annotations: tt.annotations},
				Spec: corev1.PodSpec{ServiceAccountName: tt.sa}, Status: corev1.PodStatus{PodIP: "10.0.0.1"}}
			for _, c := range tt.containers {
				p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: c})
			}
			w := ConvertPod(p)
			if w.TLSMode != tt.wantTLS || w.Locality != tt.wantLocality || w.ServiceAccount != tt.wantSA {
				t.Errorf("tls %q locality %q sa %q, want %q %q %q", w.TLSMode, w.Locality, w.ServiceAccount, tt.wantTLS, tt.wantLocality, tt.wantSA)
			}
		})
	}
}

func TestEndpointsFromPods(t *testing.T) {
	svc := &model.Service{
		Hostname: "reviews.default.svc.cluster.local", Name: "reviews", Namespace: "default",
		Selector: map[string]string{"app": "reviews"},
		Ports: []*model.Port{
			{Name: "http", Port: 9080, Protocol: model.ProtocolHTTP},
			{Name: "metrics", Port: 9090, Protocol: model.ProtocolHTTP},
		},
		TargetPorts: map[int]model.TargetPort{9090: {Name: "prom"}},
	}
	ready := &model.Workload{Name: "reviews-v1", Namespace: "default", IP: "10.0.0.2", Ready: true, Kind: "Pod",
		Labels: map[string]string{"app": "reviews", "version": "v1"}, ServiceAccount: "bookinfo-reviews",
		Locality: "r/z", TLSMode: model.TLSModeIstio, ContainerPorts: map[string]int{"prom": 15090}}
	notReady := &model.Workload{Name: "reviews-v2", Namespace: "default", IP: "10.0.0.1", Ready: false, Kind: "Pod",
		Labels: map[string]string{"app": "reviews", "version": "v2"}, TLSMode: model.TLSModeDisabled}
	noIP := &model.Workload{Name: "reviews-v3", Namespace: "default", Kind: "Pod", Labels: map[string]string{"app": "reviews"}}
	otherNS := &model.Workload{Name: "reviews-x", Namespace: "other", IP: "10.0.0.9", Ready: true, Kind: "Pod", Labels: map[string]string{"app": "reviews"}}
	otherApp := &model.Workload{Name: "ratings", Namespace: "default", IP: "10.0.0.8", Ready: true, Kind: "Pod", Labels: map[string]string{"app": "ratings"}}
	vm := &model.Workload{Name: "vm", Namespace: "default", IP: "192.168.1.5", Ready: true, Kind: "WorkloadEntry",
		Labels: map[string]string{"app": "reviews"}, ContainerPorts: map[string]int{"http": 8080, "metrics": 8090}}

	got := EndpointsFromPods(svc, []*model.Workload{ready, notReady, noIP, otherNS, otherApp, vm})
	type brief struct {
		addr     string
		svcPort  int
		port     int
		health   model.HealthStatus
		workload string
	}
	var gotBrief []brief
	for _, e := range got {
		gotBrief = append(gotBrief, brief{e.Address, e.ServicePort, e.Port, e.Health, e.WorkloadName})
		if e.Hostname != svc.Hostname || e.Namespace != "default" {
			t.Errorf("endpoint %+v: wrong hostname or namespace", e)
		}
	}
	want := []brief{
		// Sorted by service port, then address. reviews-v2 has no "prom" port, so it serves only 9080.
		{"10.0.0.1", 9080, 9080, model.Unhealthy, "reviews-v2"},
		{"10.0.0.2", 9080, 9080, model.Healthy, "reviews-v1"},
		{"192.168.1.5", 9080, 8080, model.Healthy, "vm"},
		{"10.0.0.2", 9090, 15090, model.Healthy, "reviews-v1"},
		{"192.168.1.5", 9090, 8090, model.Healthy, "vm"},
	}
	if !reflect.DeepEqual(gotBrief, want) {
		t.Errorf("endpoints\n got  %v\n want %v", gotBrief, want)
	}
	e := got[1]
	if e.ServiceAccount != "bookinfo-reviews" || e.Locality != "r/z" || e.TLSMode != model.TLSModeIstio || e.Labels["version"] != "v1" {
		t.Errorf("endpoint does not carry the workload's details: %+v", e)
	}

	ext := &model.Service{Hostname: "db.default.svc.cluster.local", Namespace: "default", ExternalName: "db.example.com",
		Resolution: model.DNSLB, Ports: []*model.Port{{Name: "tcp", Port: 5432}}}
	eps := EndpointsFromPods(ext, []*model.Workload{ready})
	if len(eps) != 1 || eps[0].Address != "db.example.com" || eps[0].Port != 5432 {
		t.Errorf("ExternalName endpoints %+v", eps)
	}
}

func TestEndpointsFromSlices(t *testing.T) {
	svc := &model.Service{Hostname: "reviews.default.svc.cluster.local", Name: "reviews", Namespace: "default",
		Ports: []*model.Port{{Name: "http", Port: 9080}, {Name: "grpc", Port: 7070}}}
	cond := func(ready, serving, terminating *bool) discoveryv1.EndpointConditions {
		return discoveryv1.EndpointConditions{Ready: ready, Serving: serving, Terminating: terminating}
	}
	yes, no := ptr(true), ptr(false)
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "reviews-abc", Namespace: "default", Labels: map[string]string{LabelServiceName: "reviews"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr("http"), Port: ptr(int32(8080))},
			{Name: ptr("unknown"), Port: ptr(int32(1))},
		},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.0.0.1"}, Conditions: cond(nil, nil, nil), Zone: ptr("zone-a")},
			{Addresses: []string{"10.0.0.2"}, Conditions: cond(yes, yes, no)},
			{Addresses: []string{"10.0.0.3"}, Conditions: cond(no, yes, yes), TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: "old-pod"}},
			{Addresses: []string{"10.0.0.4"}, Conditions: cond(no, no, yes)},
			{Addresses: []string{"10.0.0.5"}, Conditions: cond(no, nil, nil)},
			{Addresses: []string{"10.0.0.6"}, Conditions: cond(no, yes, nil)},
		},
	}
	other := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "ratings-x", Namespace: "default", Labels: map[string]string{LabelServiceName: "ratings"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(9080))}},
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.9.9.9"}}},
	}
	fqdn := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "reviews-fqdn", Namespace: "default", Labels: map[string]string{LabelServiceName: "reviews"}},
		AddressType: discoveryv1.AddressTypeFQDN,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(9080))}},
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"x.example.com"}}},
	}
	pods := map[string]*model.Workload{
		"10.0.0.2": {Name: "reviews-v2-pod", Namespace: "default", IP: "10.0.0.2", Labels: map[string]string{"version": "v2"},
			ServiceAccount: "bookinfo-reviews", TLSMode: model.TLSModeIstio, Locality: "r/z2"},
	}
	got := EndpointsFromSlices(svc, []*discoveryv1.EndpointSlice{slice, other, fqdn}, pods)
	wantHealth := map[string]model.HealthStatus{
		"10.0.0.1": model.Healthy,   // unset conditions mean ready
		"10.0.0.2": model.Healthy,   // ready
		"10.0.0.3": model.Draining,  // serving and terminating
		"10.0.0.4": model.Unhealthy, // terminating, not serving
		"10.0.0.5": model.Unhealthy, // not ready, serving unset follows ready
		"10.0.0.6": model.Unhealthy, // serving but not terminating: not ready for another reason
	}
	if len(got) != len(wantHealth) {
		t.Fatalf("got %d endpoints, want %d: %+v", len(got), len(wantHealth), got)
	}
	for _, e := range got {
		if e.Health != wantHealth[e.Address] {
			t.Errorf("%s: health %v, want %v", e.Address, e.Health, wantHealth[e.Address])
		}
		if e.ServicePort != 9080 || e.Port != 8080 || e.Hostname != svc.Hostname {
			t.Errorf("%s: service port %d port %d", e.Address, e.ServicePort, e.Port)
		}
	}
	byAddr := map[string]*model.Endpoint{}
	for _, e := range got {
		byAddr[e.Address] = e
	}
	if e := byAddr["10.0.0.1"]; e.Locality != "/zone-a" || e.TLSMode != model.TLSModeDisabled || e.Labels != nil {
		t.Errorf("endpoint without pod: %+v", e)
	}
	if e := byAddr["10.0.0.2"]; e.Labels["version"] != "v2" || e.ServiceAccount != "bookinfo-reviews" || e.TLSMode != model.TLSModeIstio ||
		e.WorkloadName != "reviews-v2-pod" || e.Locality != "r/z2" {
		t.Errorf("endpoint with pod: %+v", e)
	}
	if e := byAddr["10.0.0.3"]; e.WorkloadName != "old-pod" {
		t.Errorf("workload name from targetRef: %+v", e)
	}
}
