package xds

import (
	"context"
	"slices"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meshd/meshd/pkg/model"
)

func TestDeltaWildcardSendsOnlyChangesAndRemovals(t *testing.T) {
	f := newFixture(t, true)
	c := f.delta(t.Context())
	c.send(&discovery.DeltaDiscoveryRequest{Node: testNode("p1"), TypeUrl: model.ClusterType})
	r := c.recv()
	if got := names(r.Resources); !slices.Equal(got, []string{clusterA, clusterB}) {
		t.Fatalf("initial clusters %v", got)
	}
	for _, res := range r.Resources {
		if res.Version == "" {
			t.Fatalf("resource %s has no version", res.Name)
		}
	}
	ack(c, r)
	eventually(t, "ACK", func() bool { return f.watchStatus("p1", model.ClusterType).NonceAcked == r.Nonce })

	// Add c, remove b: one response with exactly that.
	f.reg.set([]*model.Service{svc("a.default.svc.cluster.local", 80), svc("c.default.svc.cluster.local", 80)}, nil)
	f.s.ConfigUpdate(model.NewPushRequest(true, model.ReasonServiceUpdate))
	r2 := c.recv()
	if got := names(r2.Resources); !slices.Equal(got, []string{clusterC}) {
		t.Fatalf("changed = %v, want only %s", got, clusterC)
	}
	if !slices.Equal(r2.RemovedResources, []string{clusterB}) {
		t.Fatalf("removed = %v, want %s", r2.RemovedResources, clusterB)
	}
}

func TestDeltaSubscribeUnsubscribeAndReconnect(t *testing.T) {
	f := newFixture(t, true)
	ctx, cancel := context.WithCancel(t.Context())
	c := f.delta(ctx)
	c.send(&discovery.DeltaDiscoveryRequest{Node: testNode("p1"), TypeUrl: model.EndpointType, ResourceNamesSubscribe: []string{clusterA}})
	r := c.recv()
	if got := names(r.Resources); !slices.Equal(got, []string{clusterA}) {
		t.Fatalf("eds %v", got)
	}
	ack(c, r)
	// Subscribing to b sends b alone; a is unchanged.
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: model.EndpointType, ResourceNamesSubscribe: []string{clusterB}})
	r2 := c.recv()
	if got := names(r2.Resources); !slices.Equal(got, []string{clusterB}) {
		t.Fatalf("after subscribing b: %v", got)
	}
	ack(c, r2)
	// A name that does not exist is answered as removed, so the proxy does not wait for it.
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: model.EndpointType, ResourceNamesSubscribe: []string{"outbound|80||nope.default.svc.cluster.local"}})
	r3 := c.recv()
	if len(r3.Resources) != 0 || !slices.Equal(r3.RemovedResources, []string{"outbound|80||nope.default.svc.cluster.local"}) {
		t.Fatalf("unknown name: resources %v removed %v", names(r3.Resources), r3.RemovedResources)
	}
	ack(c, r3)
	// Unsubscribing b: later changes to b are not sent.
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: model.EndpointType, ResourceNamesUnsubscribe: []string{clusterB}})
	eventually(t, "unsubscribed", func() bool {
		return !slices.Contains(f.watchStatus("p1", model.EndpointType).Names, clusterB)
	})
	f.reg.set(f.reg.Services(), []*model.Endpoint{ep("a.default.svc.cluster.local", 80, "10.0.0.1"), ep("b.default.svc.cluster.local", 80, "10.0.0.9")})
	f.s.Push(model.NewPushRequest(false, model.ReasonEndpointUpdate, model.ConfigKey{Kind: model.KindEndpoints, Name: "b.default.svc.cluster.local"}))
	// Then a changes: the next response is about a only.
	f.reg.set(f.reg.Services(), []*model.Endpoint{ep("a.default.svc.cluster.local", 80, "10.0.0.5"), ep("b.default.svc.cluster.local", 80, "10.0.0.9")})
	f.s.Push(model.NewPushRequest(false, model.ReasonEndpointUpdate, model.ConfigKey{Kind: model.KindEndpoints, Name: "a.default.svc.cluster.local"}))
	r4 := c.recv()
	if got := names(r4.Resources); !slices.Equal(got, []string{clusterA}) {
		t.Fatalf("after unsubscribe of b, got %v", got)
	}
	aVersion := r4.Resources[0].Version
	cancel()
	eventually(t, "disconnect", func() bool { return f.connection("p1") == nil })

	// Reconnect saying we hold a at its current version and b at a stale one: only b is sent.
	c2 := f.delta(t.Context())
	c2.send(&discovery.DeltaDiscoveryRequest{Node: testNode("p1"), TypeUrl: model.EndpointType,
		ResourceNamesSubscribe:  []string{clusterA, clusterB},
		InitialResourceVersions: map[string]string{clusterA: aVersion, clusterB: "stale"}})
	r5 := c2.recv()
	if got := names(r5.Resources); !slices.Equal(got, []string{clusterB}) {
		t.Fatalf("after reconnect got %v, want only the stale %s", got, clusterB)
	}
}

func TestDeltaCDSChangeResendsEndpointsForWarming(t *testing.T) {
	f := newFixture(t, true)
	c := f.delta(t.Context())
	c.send(&discovery.DeltaDiscoveryRequest{Node: testNode("p1"), TypeUrl: model.ClusterType})
	cds := c.recv()
	ack(c, cds)
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: model.EndpointType, ResourceNamesSubscribe: []string{clusterA, clusterB}})
	eds := c.recv()
	ack(c, eds)
	eventually(t, "ACKs", func() bool { return f.watchStatus("p1", model.EndpointType).NonceAcked == eds.Nonce })

	// The mesh connect timeout changes every cluster; endpoints stay the same. Envoy re-warms the changed
	// clusters and needs their endpoints again, so EDS follows CDS with both assignments.
	mesh := model.DefaultMeshConfig()
	mesh.ConnectTimeout = durationpb.New(3 * time.Second)
	f.s.env.Mesh = mesh
	f.s.Push(model.NewPushRequest(true, model.ReasonGlobalUpdate))
	r := c.recv()
	if r.TypeUrl != model.ClusterType || !slices.Equal(names(r.Resources), []string{clusterA, clusterB}) {
		t.Fatalf("cds push: %s %v", model.ShortType(r.TypeUrl), names(r.Resources))
	}
	r2 := c.recv()
	if r2.TypeUrl != model.EndpointType || !slices.Equal(names(r2.Resources), []string{clusterA, clusterB}) {
		t.Fatalf("after a cluster change: %s %v, want EDS for both clusters", model.ShortType(r2.TypeUrl), names(r2.Resources))
	}
	for i, res := range r2.Resources {
		if res.Version != eds.Resources[i].Version {
			t.Fatalf("%s: endpoints changed unexpectedly", res.Name)
		}
	}
}
