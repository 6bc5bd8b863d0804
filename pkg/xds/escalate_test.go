package xds

import (
	"testing"

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
