package xds

import (
	"context"
	"slices"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"

	"github.com/meshd/meshd/pkg/model"
)

const (
	clusterA = "outbound|80||a.default.svc.cluster.local"
	clusterB = "outbound|80||b.default.svc.cluster.local"
	clusterC = "outbound|80||c.default.svc.cluster.local"
)

func TestSotWWildcardCDSThenACK(t *testing.T) {
	f := newFixture(t, true)
	c := f.sotw(t.Context())
	c.send(&discovery.DiscoveryRequest{Node: testNode("p1"), TypeUrl: model.ClusterType})
	r := c.recv()
	if got := anyNames(t, r); !slices.Equal(got, []string{clusterA, clusterB}) {
		t.Fatalf("clusters = %v", got)
	}
	if r.VersionInfo != f.s.PushContext().Version || r.Nonce == "" {
		t.Fatalf("version %q nonce %q, want version %q and a nonce", r.VersionInfo, r.Nonce, f.s.PushContext().Version)
	}
	c.send(&discovery.DiscoveryRequest{TypeUrl: model.ClusterType, ResponseNonce: r.Nonce, VersionInfo: r.VersionInfo})
	eventually(t, "ACK recorded", func() bool { return f.watchStatus("p1", model.ClusterType).NonceAcked == r.Nonce })
	if ws := f.watchStatus("p1", model.ClusterType); !ws.Wildcard || ws.VersionAcked != r.VersionInfo {
		t.Fatalf("watch state after ACK: %+v", ws)
	}
}

func TestFirstRequestWithoutNodeIsInvalidArgument(t *testing.T) {
	f := newFixture(t, true)
	bad := f.sotw(t.Context())
	bad.send(&discovery.DiscoveryRequest{TypeUrl: model.ClusterType})
	select {
	case err := <-bad.errs:
		if grpcstatus.Code(err) != codes.InvalidArgument {
			t.Fatalf("code = %v (%v), want InvalidArgument", grpcstatus.Code(err), err)
		}
	case r := <-bad.resps:
		t.Fatalf("got a response without a node: %v", r)
	}
	// A malformed node id is refused the same way.
	bad2 := f.sotw(t.Context())
	bad2.send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "garbage"}, TypeUrl: model.ClusterType})
	if err := <-bad2.errs; grpcstatus.Code(err) != codes.InvalidArgument {
		t.Fatalf("malformed node id: code = %v, want InvalidArgument", grpcstatus.Code(err))
	}
	// The server keeps serving others.
	good := f.sotw(t.Context())
	good.send(&discovery.DiscoveryRequest{Node: testNode("p1"), TypeUrl: model.ClusterType})
	if got := anyNames(t, good.recv()); len(got) != 2 {
		t.Fatalf("good client got %v", got)
	}
}

func TestNotReadyIsUnavailable(t *testing.T) {
	f := newFixture(t, false)
	c := f.sotw(t.Context())
	// The server refuses the stream before reading from it, so this send may already see the stream closed.
	_ = c.stream.Send(&discovery.DiscoveryRequest{Node: testNode("p1"), TypeUrl: model.ClusterType})
	if err := <-c.errs; grpcstatus.Code(err) != codes.Unavailable {
		t.Fatalf("code = %v, want Unavailable before the first push context", grpcstatus.Code(err))
	}
}

func TestNACKIsRecordedAndNotRepushed(t *testing.T) {
	f := newFixture(t, true)
	c := f.sotw(t.Context())
	// EDS is the type a full push re-sends even when unchanged (for cluster warming), so only the memory of
	// the NACK keeps the rejected content from going out again.
	c.send(&discovery.DiscoveryRequest{Node: testNode("p1"), TypeUrl: model.EndpointType, ResourceNames: []string{clusterA}})
	r := c.recv()
	before := testutil.ToFloat64(xdsRejects.WithLabelValues("eds"))
	c.send(&discovery.DiscoveryRequest{TypeUrl: model.EndpointType, ResponseNonce: r.Nonce, ResourceNames: []string{clusterA},
		ErrorDetail: &status.Status{Code: int32(codes.InvalidArgument), Message: "bad endpoints"}})
	eventually(t, "NACK recorded", func() bool { return f.watchStatus("p1", model.EndpointType).NackError == "bad endpoints" })
	if got := testutil.ToFloat64(xdsRejects.WithLabelValues("eds")) - before; got != 1 {
		t.Fatalf("pilot_total_xds_rejects{type=eds} rose by %v, want 1", got)
	}
	// A full push regenerates the same endpoints: they must not be sent again.
	f.s.Push(model.NewPushRequest(true, model.ReasonConfigUpdate))
	eventually(t, "the push to be processed", f.s.queue.idle)
	// Then the endpoints change: new content is sent.
	f.reg.set(f.reg.Services(), []*model.Endpoint{ep("a.default.svc.cluster.local", 80, "10.0.0.7")})
	f.s.Push(model.NewPushRequest(true, model.ReasonServiceUpdate))
	r2 := c.recv()
	var cla endpoint.ClusterLoadAssignment
	if err := r2.Resources[0].UnmarshalTo(&cla); err != nil {
		t.Fatal(err)
	}
	if got := cla.Endpoints[0].LbEndpoints[0].GetEndpoint().Address.GetSocketAddress().Address; got != "10.0.0.7" {
		t.Fatalf("after NACK, first response has endpoint %s; want the new content (10.0.0.7), not a re-send of the rejected one", got)
	}
}

func TestUnackedPushesCollapseIntoOneLatest(t *testing.T) {
	f := newFixture(t, true)
	c := f.sotw(t.Context())
	c.send(&discovery.DiscoveryRequest{Node: testNode("p1"), TypeUrl: model.ClusterType})
	first := c.recv()
	// Three changes while the first response is unacknowledged.
	for _, h := range []string{"c", "d", "e"} {
		f.reg.set(append(f.reg.Services(), svc(h+".default.svc.cluster.local", 80)), nil)
		f.s.Push(model.NewPushRequest(true, model.ReasonServiceUpdate))
	}
	eventually(t, "push held until ACK", func() bool { return f.watchStatus("p1", model.ClusterType).Pending })
	c.send(&discovery.DiscoveryRequest{TypeUrl: model.ClusterType, ResponseNonce: first.Nonce})
	latest := c.recv()
	if got := anyNames(t, latest); len(got) != 5 {
		t.Fatalf("after ACK got %v, want the latest state with 5 clusters", got)
	}
	if latest.VersionInfo != f.s.PushContext().Version {
		t.Fatalf("version %s, want latest %s", latest.VersionInfo, f.s.PushContext().Version)
	}
	// Nothing else is queued: a stale ACK of the first nonce is ignored and answered by nothing, and the next
	// request (a new LDS watch) is answered first.
	expired := testutil.ToFloat64(xdsExpiredNonce.WithLabelValues("cds"))
	c.send(&discovery.DiscoveryRequest{TypeUrl: model.ClusterType, ResponseNonce: first.Nonce,
		ErrorDetail: &status.Status{Message: "stale nack"}})
	c.expectNoneBefore(func() { c.send(&discovery.DiscoveryRequest{TypeUrl: model.ListenerType}) },
		func(r *discovery.DiscoveryResponse) bool { return r.TypeUrl == model.ListenerType })
	if ws := f.watchStatus("p1", model.ClusterType); ws.NackError != "" {
		t.Fatalf("stale NACK was recorded: %+v", ws)
	}
	if testutil.ToFloat64(xdsExpiredNonce.WithLabelValues("cds")) != expired+1 {
		t.Fatal("stale nonce not counted in pilot_xds_expired_nonce")
	}
}

func TestEndpointOnlyPushSendsChangedClustersOnly(t *testing.T) {
	f := newFixture(t, true)
	c := f.sotw(t.Context())
	c.send(&discovery.DiscoveryRequest{Node: testNode("p1"), TypeUrl: model.ClusterType})
	cds := c.recv()
	c.send(&discovery.DiscoveryRequest{TypeUrl: model.ClusterType, ResponseNonce: cds.Nonce})
	c.send(&discovery.DiscoveryRequest{TypeUrl: model.EndpointType, ResourceNames: []string{clusterA, clusterB}})
	eds := c.recv()
	if got := anyNames(t, eds); !slices.Equal(got, []string{clusterA, clusterB}) {
		t.Fatalf("eds = %v", got)
	}
	c.send(&discovery.DiscoveryRequest{TypeUrl: model.EndpointType, ResponseNonce: eds.Nonce, ResourceNames: []string{clusterA, clusterB}})
	eventually(t, "EDS ACK", func() bool { return f.watchStatus("p1", model.EndpointType).NonceAcked == eds.Nonce })

	// A second proxy watches only a's endpoints.
	other := f.sotw(t.Context())
	other.send(&discovery.DiscoveryRequest{Node: testNode("p2"), TypeUrl: model.EndpointType, ResourceNames: []string{clusterA}})
	oeds := other.recv()
	other.send(&discovery.DiscoveryRequest{TypeUrl: model.EndpointType, ResponseNonce: oeds.Nonce, ResourceNames: []string{clusterA}})
	eventually(t, "p2 EDS ACK", func() bool { return f.watchStatus("p2", model.EndpointType).NonceAcked == oeds.Nonce })

	pushesBefore := testutil.ToFloat64(xdsPushes.WithLabelValues("cds"))
	f.reg.set(f.reg.Services(), []*model.Endpoint{ep("a.default.svc.cluster.local", 80, "10.0.0.1"),
		ep("b.default.svc.cluster.local", 80, "10.0.0.2"), ep("b.default.svc.cluster.local", 80, "10.0.0.3")})
	f.s.ConfigUpdate(model.NewPushRequest(false, model.ReasonEndpointUpdate,
		model.ConfigKey{Kind: model.KindEndpoints, Name: "b.default.svc.cluster.local", Namespace: "default"}))
	r := c.recv()
	if r.TypeUrl != model.EndpointType || !slices.Equal(anyNames(t, r), []string{clusterB}) {
		t.Fatalf("endpoint push = %s %v, want EDS for %s only", r.TypeUrl, anyNames(t, r), clusterB)
	}
	if testutil.ToFloat64(xdsPushes.WithLabelValues("cds")) != pushesBefore {
		t.Fatal("an endpoint-only change pushed CDS")
	}
	// p2 does not watch b: it gets nothing. Its next request is answered first.
	other.expectNoneBefore(func() { other.send(&discovery.DiscoveryRequest{TypeUrl: model.ClusterType}) },
		func(r *discovery.DiscoveryResponse) bool { return r.TypeUrl == model.ClusterType })
}

func TestSotWUnsubscribeWithEmptyNames(t *testing.T) {
	f := newFixture(t, true)
	c := f.sotw(t.Context())
	c.send(&discovery.DiscoveryRequest{Node: testNode("p1"), TypeUrl: model.EndpointType, ResourceNames: []string{clusterA}})
	eds := c.recv()
	c.send(&discovery.DiscoveryRequest{TypeUrl: model.EndpointType, ResponseNonce: eds.Nonce})
	eventually(t, "unsubscribe", func() bool {
		ws := f.watchStatus("p1", model.EndpointType)
		return ws.NonceAcked == eds.Nonce && len(ws.Names) == 0
	})
	f.reg.set(f.reg.Services(), []*model.Endpoint{ep("a.default.svc.cluster.local", 80, "10.9.9.9")})
	f.s.Push(model.NewPushRequest(false, model.ReasonEndpointUpdate))
	c.expectNoneBefore(func() { c.send(&discovery.DiscoveryRequest{TypeUrl: model.ListenerType}) },
		func(r *discovery.DiscoveryResponse) bool { return r.TypeUrl == model.ListenerType })
}

func TestFullPushOrdersClustersBeforeEndpointsBeforeListeners(t *testing.T) {
	f := newFixture(t, true)
	c := f.sotw(t.Context())
	c.send(&discovery.DiscoveryRequest{Node: testNode("p1"), TypeUrl: model.ListenerType})
	c.send(&discovery.DiscoveryRequest{TypeUrl: model.EndpointType, ResourceNames: []string{clusterA}})
	c.send(&discovery.DiscoveryRequest{TypeUrl: model.ClusterType})
	acks := map[string]*discovery.DiscoveryResponse{}
	for range 3 {
		r := c.recv()
		acks[r.TypeUrl] = r
	}
	for _, r := range acks {
		req := &discovery.DiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce}
		if r.TypeUrl == model.EndpointType {
			req.ResourceNames = []string{clusterA}
		}
		c.send(req)
	}
	eventually(t, "all ACKed", func() bool {
		return f.watchStatus("p1", model.ListenerType).NonceAcked != "" && f.watchStatus("p1", model.EndpointType).NonceAcked != "" &&
			f.watchStatus("p1", model.ClusterType).NonceAcked != ""
	})
	f.reg.set(append(f.reg.Services(), svc("c.default.svc.cluster.local", 81)), f.reg.get().Endpoints("a.default.svc.cluster.local"))
	f.s.Push(model.NewPushRequest(true, model.ReasonServiceUpdate))
	var order []string
	for range 3 {
		order = append(order, model.ShortType(c.recv().TypeUrl))
	}
	if !slices.Equal(order, []string{"cds", "eds", "lds"}) {
		t.Fatalf("push order = %v, want cds, eds, lds", order)
	}
}

func TestReconnectResumes(t *testing.T) {
	f := newFixture(t, true)
	ctx, cancel := context.WithCancel(t.Context())
	c := f.sotw(ctx)
	c.send(&discovery.DiscoveryRequest{Node: testNode("p1"), TypeUrl: model.ClusterType})
	r := c.recv()
	cancel()
	eventually(t, "old connection removed", func() bool { return f.connection("p1") == nil })
	// Envoy reconnects with the version it has and no nonce; it gets the full state again.
	c2 := f.sotw(t.Context())
	c2.send(&discovery.DiscoveryRequest{Node: testNode("p1"), TypeUrl: model.ClusterType, VersionInfo: r.VersionInfo})
	if got := anyNames(t, c2.recv()); !slices.Equal(got, []string{clusterA, clusterB}) {
		t.Fatalf("after reconnect: %v", got)
	}
	// A stream that arrives with a nonce from another server instance is answered in full too.
	c3 := f.sotw(t.Context())
	c3.send(&discovery.DiscoveryRequest{Node: testNode("p3"), TypeUrl: model.ClusterType, ResponseNonce: "from-another-server"})
	if got := anyNames(t, c3.recv()); len(got) != 2 {
		t.Fatalf("nonce from another server: %v", got)
	}
}
