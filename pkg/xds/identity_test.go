package xds

import (
	"strings"
	"testing"

	"github.com/meshd/meshd/pkg/model"
)

func TestAuthorizeCallerAsItselfOnly(t *testing.T) {
	w := &model.Workload{Name: "productpage-v1", Namespace: "default", IP: "10.0.0.1", ServiceAccount: "productpage"}
	push := model.NewPushContext(&model.Environment{
		ServiceDiscovery: model.NewStaticDiscovery(nil, nil, []*model.Workload{w}),
		ConfigStore:      model.NewStaticConfigStore(nil), Mesh: model.DefaultMeshConfig(),
	}, nil, nil)
	caller := Caller{Namespace: "default", ServiceAccount: "productpage", Identity: "spiffe://cluster.local/ns/default/sa/productpage"}
	for _, c := range []struct {
		name, node, sa, want string
	}{
		{"itself", "sidecar~10.0.0.1~productpage-v1.default~default.svc.cluster.local", "productpage", ""},
		{"unknown workload of its namespace", "sidecar~10.0.0.9~x.default~default.svc.cluster.local", "", ""},
		{"another namespace", "sidecar~10.0.0.9~x.prod~prod.svc.cluster.local", "", `namespace "prod"`},
		{"another service account in metadata", "sidecar~10.0.0.9~x.default~default.svc.cluster.local", "reviews", `service account "reviews"`},
		{"another workload's address", "sidecar~10.0.0.1~productpage-v1.default~default.svc.cluster.local", "", ""},
	} {
		p, err := model.ParseProxy(c.node, nil)
		if err != nil {
			t.Fatal(err)
		}
		p.Metadata.ServiceAccount = c.sa
		err = authorize(caller, p, push)
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: err = %v, want %q", c.name, err, c.want)
		}
	}
	// The registry's view wins over what the proxy says: a caller cannot pose as a known workload of another
	// service account by omitting SERVICE_ACCOUNT.
	other := Caller{Namespace: "default", ServiceAccount: "reviews", Identity: "spiffe://cluster.local/ns/default/sa/reviews"}
	p, _ := model.ParseProxy("sidecar~10.0.0.1~productpage-v1.default~default.svc.cluster.local", nil)
	if err := authorize(other, p, push); err == nil || !strings.Contains(err.Error(), "productpage-v1.default") {
		t.Fatalf("posing as productpage: %v", err)
	}
}
