package xds

import (
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/meshd/meshd/pkg/model"
)

func TestEndpointChangesThatAlterClustersBecomeFullPushes(t *testing.T) {
	svc := &model.Service{Hostname: "a.default.svc.cluster.local", Namespace: "default", Ports: []*model.Port{{Port: 80}}}
	env := func(eps ...*model.Endpoint) *model.Environment {
		return &model.Environment{ServiceDiscovery: model.NewStaticDiscovery([]*model.Service{svc}, eps, nil),
			ConfigStore: model.NewStaticConfigStore(nil), Mesh: model.DefaultMeshConfig()}
	}
	ep := func(ip, sa, tls string) *model.Endpoint {
		return &model.Endpoint{Hostname: svc.Hostname, ServicePort: 80, Address: ip, Port: 80, Namespace: "default", ServiceAccount: sa, TLSMode: tls}
	}
	prev := model.NewPushContext(env(ep("10.0.0.1", "a", model.TLSModeIstio)), nil, nil)
	key := model.ConfigKey{Kind: model.KindEndpoints, Name: svc.Hostname, Namespace: "default"}
	for _, c := range []struct {
		name string
		eps  []*model.Endpoint
		full bool
	}{
		{"another replica, same identity", []*model.Endpoint{ep("10.0.0.1", "a", model.TLSModeIstio), ep("10.0.0.2", "a", model.TLSModeIstio)}, false},
		{"a new service account", []*model.Endpoint{ep("10.0.0.1", "a", model.TLSModeIstio), ep("10.0.0.2", "b", model.TLSModeIstio)}, true},
		{"an endpoint without a sidecar", []*model.Endpoint{ep("10.0.0.1", "a", model.TLSModeIstio), ep("10.0.0.2", "a", model.TLSModeDisabled)}, true},
	} {
		req := model.NewPushRequest(false, model.ReasonEndpointUpdate, key)
		push := model.NewPushContext(env(c.eps...), prev, req)
		if got := escalate(req, push, prev); got.Full != c.full {
			t.Errorf("%s: full = %v, want %v", c.name, got.Full, c.full)
		}
	}
}

// TestNewIdentityOnEndpointsPushesClusters: the server applies the escalation, so an endpoint-only change
// that adds a service account reaches the proxy as a CDS update, not only EDS.
func TestNewIdentityOnEndpointsPushesClusters(t *testing.T) {
	f := newFixture(t, true)
	c := f.sotw(t.Context())
	c.send(&discovery.DiscoveryRequest{Node: testNode("p1"), TypeUrl: model.ClusterType})
	cds := c.recv()
	c.send(&discovery.DiscoveryRequest{TypeUrl: model.ClusterType, ResponseNonce: cds.Nonce})
	eventually(t, "CDS ACK", func() bool { return f.watchStatus("p1", model.ClusterType).NonceAcked == cds.Nonce })

	withSA := ep("a.default.svc.cluster.local", 80, "10.0.0.9")
	withSA.Namespace, withSA.ServiceAccount = "default", "newcomer"
	f.reg.set(f.reg.Services(), []*model.Endpoint{ep("a.default.svc.cluster.local", 80, "10.0.0.1"), withSA,
		ep("b.default.svc.cluster.local", 80, "10.0.0.2")})
	f.s.ConfigUpdate(model.NewPushRequest(false, model.ReasonEndpointUpdate,
		model.ConfigKey{Kind: model.KindEndpoints, Name: "a.default.svc.cluster.local", Namespace: "default"}))
	r := c.recv()
	if r.TypeUrl != model.ClusterType {
		t.Fatalf("got %s, want CDS: the new identity changes the clusters", model.ShortType(r.TypeUrl))
	}
}
