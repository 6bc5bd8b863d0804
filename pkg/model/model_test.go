package model

import (
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/structpb"
	networking "istio.io/api/networking/v1alpha3"
)

func TestParseProxy(t *testing.T) {
	md, _ := structpb.NewStruct(map[string]any{
		"NAMESPACE": "default", "INSTANCE_IPS": "10.1.1.1,fd00::1", "GENERATOR": "grpc",
		"LABELS": map[string]any{"app": "productpage"}, "UNRELATED": []any{1.0, "x"},
	})
	p, err := ParseProxy("sidecar~10.1.1.1~productpage-v1-abc.default~default.svc.cluster.local", md)
	if err != nil {
		t.Fatal(err)
	}
	if p.Type != SidecarProxy || p.PodName != "productpage-v1-abc" || p.Namespace != "default" || !p.IsGRPC() ||
		!slices.Equal(p.IPAddresses, []string{"10.1.1.1", "fd00::1"}) || p.Labels["app"] != "productpage" ||
		p.Key() != "productpage-v1-abc.default" || p.DNSDomain != "default.svc.cluster.local" {
		t.Fatalf("parsed %+v", p)
	}
	for id, want := range map[string]string{
		"":                                      "empty",
		"sidecar~10.1.1.1~x.default":            "want 4 fields",
		"ztunnel~10.1.1.1~x.default~d":          "unknown proxy type",
		"sidecar~not-an-ip~x.default~d":         "not an IP address",
		"sidecar~10.1.1.1~nonamespace~d":        "no namespace",
		"router~10.1.1.1~gw.istio-system~d~bad": "want 4 fields",
	} {
		if _, err := ParseProxy(id, nil); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseProxy(%q) error = %v, want %q", id, err, want)
		}
	}
	bad, _ := structpb.NewStruct(map[string]any{"INSTANCE_IPS": "10.0.0.1,banana"})
	if _, err := ParseProxy("sidecar~10.1.1.1~x.default~d", bad); err == nil || !strings.Contains(err.Error(), "banana") {
		t.Errorf("bad INSTANCE_IPS: %v", err)
	}
	wrongType, _ := structpb.NewStruct(map[string]any{"LABELS": "not-a-map"})
	if _, err := ParseProxy("sidecar~10.1.1.1~x.default~d", wrongType); err == nil {
		t.Error("LABELS of the wrong type accepted")
	}
}

func TestResolveHostnameAndMatch(t *testing.T) {
	for in, want := range map[string]string{
		"reviews":                        "reviews.default.svc.cluster.local",
		"reviews.prod":                   "reviews.prod.svc.cluster.local",
		"reviews.prod.svc.cluster.local": "reviews.prod.svc.cluster.local",
		"*.prod.svc.cluster.local":       "*.prod.svc.cluster.local",
		"*":                              "*",
		"www.example.com":                "www.example.com",
	} {
		if got := ResolveHostname(in, "default", "cluster.local"); got != want {
			t.Errorf("ResolveHostname(%q) = %q, want %q", in, got, want)
		}
	}
	if !HostMatches("*.prod.svc.cluster.local", "a.prod.svc.cluster.local") || HostMatches("*.prod.svc.cluster.local", "a.dev.svc.cluster.local") ||
		!HostMatches("*", "anything") || HostMatches("a.b", "a.b.c") {
		t.Error("HostMatches")
	}
}

func TestProtocolFromPort(t *testing.T) {
	for _, c := range []struct {
		name, app string
		want      Protocol
	}{
		{"http", "", ProtocolHTTP}, {"http-web", "", ProtocolHTTP}, {"grpc-api", "", ProtocolGRPC}, {"tcp", "", ProtocolTCP},
		{"web", "", ProtocolUnsupported}, {"web", "http", ProtocolHTTP}, {"x", "kubernetes.io/h2c", ProtocolHTTP2},
		{"http", "tcp", ProtocolTCP}, {"HTTP2", "", ProtocolHTTP2},
	} {
		if got := ProtocolFromPort(c.name, c.app); got != c.want {
			t.Errorf("ProtocolFromPort(%q, %q) = %v, want %v", c.name, c.app, got, c.want)
		}
	}
}

func TestSubsetKeyRoundTrip(t *testing.T) {
	k := BuildSubsetKey(Outbound, "v1", "reviews.default.svc.cluster.local", 9080)
	if k != "outbound|9080|v1|reviews.default.svc.cluster.local" {
		t.Fatal(k)
	}
	d, s, h, p, err := ParseSubsetKey(k)
	if err != nil || d != Outbound || s != "v1" || h != "reviews.default.svc.cluster.local" || p != 9080 {
		t.Fatalf("%s %s %s %d %v", d, s, h, p, err)
	}
	for _, bad := range []string{"outbound|09080||h", "outbound|x||h", "outbound|9080|h", "a|1|b|c|d", "outbound|0||h"} {
		if _, _, _, _, err := ParseSubsetKey(bad); err == nil {
			t.Errorf("ParseSubsetKey(%q) accepted", bad)
		}
	}
}

func TestPushRequestMerge(t *testing.T) {
	t0 := time.Now()
	a := NewPushRequest(false, ReasonEndpointUpdate, ConfigKey{Kind: KindEndpoints, Name: "a"})
	a.Start = t0
	b := NewPushRequest(false, ReasonEndpointUpdate, ConfigKey{Kind: KindEndpoints, Name: "b"})
	b.Start = t0.Add(-time.Second)
	m := a.Merge(b)
	if m.Full || len(m.ConfigsUpdated) != 2 || m.Reason[ReasonEndpointUpdate] != 2 || !m.Start.Equal(b.Start) {
		t.Fatalf("merge = %+v", m)
	}
	if len(a.ConfigsUpdated) != 1 {
		t.Fatal("merge modified its input")
	}
	all := m.Merge(NewPushRequest(true, ReasonGlobalUpdate))
	if !all.Full || all.ConfigsUpdated != nil {
		t.Fatalf("a full push of everything must absorb key lists: %+v", all)
	}
	if (*PushRequest)(nil).Merge(a) != a || a.Merge(nil) != a {
		t.Fatal("nil is not the identity")
	}
}

func cfg(kind Kind, ns, name string, created time.Time, spec any) *Config {
	c := &Config{Kind: kind, Namespace: ns, Name: name, CreationTimestamp: created}
	switch s := spec.(type) {
	case *networking.DestinationRule:
		c.Spec = s
	case *networking.Sidecar:
		c.Spec = s
	case *networking.VirtualService:
		c.Spec = s
	}
	return c
}

func testEnv(services []*Service, eps []*Endpoint, configs ...*Config) *Environment {
	return &Environment{
		ServiceDiscovery: NewStaticDiscovery(services, eps, nil),
		ConfigStore:      NewStaticConfigStore(configs),
		Mesh:             DefaultMeshConfig(),
	}
}

func TestDestinationRulePrecedence(t *testing.T) {
	now := time.Now()
	reviews := &Service{Hostname: "reviews.bookinfo.svc.cluster.local", Namespace: "bookinfo"}
	env := testEnv([]*Service{reviews}, nil,
		cfg(KindDestinationRule, "istio-system", "root", now, &networking.DestinationRule{Host: "*.svc.cluster.local"}),
		cfg(KindDestinationRule, "bookinfo", "svc-ns-wild", now, &networking.DestinationRule{Host: "*.bookinfo.svc.cluster.local"}),
		cfg(KindDestinationRule, "bookinfo", "svc-ns", now.Add(time.Second), &networking.DestinationRule{Host: "reviews"}),
		cfg(KindDestinationRule, "client", "client-ns", now, &networking.DestinationRule{Host: "reviews.bookinfo.svc.cluster.local"}),
		cfg(KindDestinationRule, "hidden", "private", now, &networking.DestinationRule{Host: "reviews.bookinfo.svc.cluster.local", ExportTo: []string{"."}}),
	)
	push := NewPushContext(env, nil, nil)
	for ns, want := range map[string]string{"client": "client-ns", "bookinfo": "svc-ns", "other": "svc-ns", "hidden": "private"} {
		if got := push.DestinationRule(ns, reviews.Hostname); got == nil || got.Config.Name != want {
			t.Errorf("proxy in %s: rule %v, want %s", ns, got, want)
		}
	}
	if got := push.DestinationRule("other", "ratings.other.svc.cluster.local"); got == nil || got.Config.Name != "root" {
		t.Errorf("root namespace fallback: %v", got)
	}
}

func TestSidecarEgressScopesServices(t *testing.T) {
	a := &Service{Hostname: "a.ns1.svc.cluster.local", Namespace: "ns1"}
	b := &Service{Hostname: "b.ns2.svc.cluster.local", Namespace: "ns2"}
	c := &Service{Hostname: "c.ns2.svc.cluster.local", Namespace: "ns2", ExportTo: []string{"."}}
	env := testEnv([]*Service{a, b, c}, nil,
		cfg(KindSidecar, "ns1", "default", time.Now(), &networking.Sidecar{Egress: []*networking.IstioEgressListener{{Hosts: []string{"./*"}}}}),
		cfg(KindSidecar, "ns3", "narrow", time.Now(), &networking.Sidecar{
			WorkloadSelector: &networking.WorkloadSelector{Labels: map[string]string{"app": "x"}},
			Egress:           []*networking.IstioEgressListener{{Hosts: []string{"ns2/b.ns2.svc.cluster.local"}}}}),
	)
	push := NewPushContext(env, nil, nil)
	hosts := func(p *Proxy) []string {
		var out []string
		for _, s := range push.ServicesForProxy(p) {
			out = append(out, s.Hostname)
		}
		return out
	}
	if got := hosts(&Proxy{Namespace: "ns1"}); !slices.Equal(got, []string{a.Hostname}) {
		t.Errorf("ns1 with ./*: %v", got)
	}
	if got := hosts(&Proxy{Namespace: "ns3", Labels: map[string]string{"app": "x"}}); !slices.Equal(got, []string{b.Hostname}) {
		t.Errorf("ns3 selected: %v", got)
	}
	if got := hosts(&Proxy{Namespace: "ns3", Labels: map[string]string{"app": "y"}}); !slices.Equal(got, []string{a.Hostname, b.Hostname}) {
		t.Errorf("ns3 unselected sees every exported service: %v", got)
	}
	if got := hosts(&Proxy{Namespace: "ns2"}); !slices.Equal(got, []string{a.Hostname, b.Hostname, c.Hostname}) {
		t.Errorf("ns2 sees its private service: %v", got)
	}
}

func TestEndpointOnlyPushSharesConfigAndRebuildsChangedServices(t *testing.T) {
	a := &Service{Hostname: "a.default.svc.cluster.local", Namespace: "default", Ports: []*Port{{Port: 80}}}
	b := &Service{Hostname: "b.default.svc.cluster.local", Namespace: "default", Ports: []*Port{{Port: 80}}}
	env := testEnv([]*Service{a, b}, []*Endpoint{{Hostname: a.Hostname, ServicePort: 80, Address: "10.0.0.1"}, {Hostname: b.Hostname, ServicePort: 80, Address: "10.0.0.2"}})
	first := NewPushContext(env, nil, nil)
	env.ServiceDiscovery = NewStaticDiscovery([]*Service{a, b}, []*Endpoint{
		{Hostname: a.Hostname, ServicePort: 80, Address: "10.0.0.9"}, {Hostname: b.Hostname, ServicePort: 80, Address: "10.0.0.8"}}, nil)
	second := NewPushContext(env, first, NewPushRequest(false, ReasonEndpointUpdate, ConfigKey{Kind: KindEndpoints, Name: a.Hostname}))
	if second.ConfigSeq() != first.ConfigSeq() || second.Seq == first.Seq {
		t.Fatal("an endpoint-only push must keep the config sequence and get a new push sequence")
	}
	if got := second.Endpoints(a.Hostname, 80)[0].Address; got != "10.0.0.9" {
		t.Errorf("changed service endpoints = %s, want rebuilt", got)
	}
	if got := second.Endpoints(b.Hostname, 80)[0].Address; got != "10.0.0.2" {
		t.Errorf("unchanged service endpoints = %s, want shared from the previous push", got)
	}
	if second.EndpointSeq(a.Hostname) == first.EndpointSeq(a.Hostname) || second.EndpointSeq(b.Hostname) != first.EndpointSeq(b.Hostname) {
		t.Error("endpoint sequences must change exactly for the changed service")
	}
	third := NewPushContext(env, second, NewPushRequest(true, ReasonConfigUpdate))
	if third.ConfigSeq() == second.ConfigSeq() || third.Endpoints(b.Hostname, 80)[0].Address != "10.0.0.8" {
		t.Error("a full push rebuilds everything")
	}
}

func TestServiceTargetsResolveNamedPorts(t *testing.T) {
	svc := &Service{Hostname: "a.default.svc.cluster.local", Namespace: "default", Selector: map[string]string{"app": "a"},
		Ports:       []*Port{{Name: "http", Port: 80}, {Name: "grpc", Port: 7070}, {Name: "missing", Port: 81}},
		TargetPorts: map[int]TargetPort{80: {Number: 8080}, 7070: {Name: "grpc"}, 81: {Name: "nope"}}}
	other := &Service{Hostname: "b.other.svc.cluster.local", Namespace: "other", Selector: map[string]string{"app": "a"}, Ports: []*Port{{Port: 90}}}
	push := NewPushContext(testEnv([]*Service{svc, other}, nil), nil, nil)
	w := &Workload{Namespace: "default", Labels: map[string]string{"app": "a", "version": "v1"}, ContainerPorts: map[string]int{"grpc": 17070}}
	var got []int
	for _, st := range push.ServiceTargets(w) {
		got = append(got, st.TargetPort)
	}
	if !slices.Equal(got, []int{8080, 17070}) {
		t.Fatalf("target ports = %v, want [8080 17070] (named port resolved, unresolvable one and other namespaces skipped)", got)
	}
}
