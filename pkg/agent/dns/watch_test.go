package dns

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	miekg "github.com/miekg/dns"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshd/meshd/pkg/dns/nds"
)

// scriptedADS is a control plane that misbehaves on purpose: its first stream sends a table that does not
// decode and then breaks; later streams send a good table and stay open.
type scriptedADS struct {
	discovery.UnimplementedAggregatedDiscoveryServiceServer
	good    *nds.NameTable
	streams atomic.Int32
	reqs    chan *discovery.DiscoveryRequest
}

func (f *scriptedADS) StreamAggregatedResources(st discovery.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	n := f.streams.Add(1)
	recv := func() error {
		r, err := st.Recv()
		if err != nil {
			return err
		}
		f.reqs <- r
		return nil
	}
	if err := recv(); err != nil {
		return err
	}
	if n == 1 {
		bad := &anypb.Any{TypeUrl: nds.TypeURL, Value: []byte{0x0a, 0x7f}} // a length running past the end
		if err := st.Send(&discovery.DiscoveryResponse{TypeUrl: nds.TypeURL, VersionInfo: "v1", Nonce: "n1",
			Resources: []*anypb.Any{bad}}); err != nil {
			return err
		}
		if err := recv(); err != nil {
			return err
		}
		return status.Error(codes.Unavailable, "scripted failure")
	}
	if err := st.Send(&discovery.DiscoveryResponse{TypeUrl: nds.TypeURL, VersionInfo: "v2", Nonce: "n2",
		Resources: []*anypb.Any{f.good.Any()}}); err != nil {
		return err
	}
	if err := recv(); err != nil {
		return err
	}
	<-st.Context().Done()
	return nil
}

// dialADS serves ads on loopback and returns a client connection to it.
func dialADS(t *testing.T, register func(*grpc.Server)) *grpc.ClientConn {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	register(g)
	go func() { _ = g.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		g.Stop()
	})
	return conn
}

// runWatch runs Watch until the test ends, and checks that it returns when its context does.
func runWatch(t *testing.T, conn grpc.ClientConnInterface, node *corev3.Node, s *Server) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Watch(ctx, conn, node, s, nil)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("Watch did not return after its context ended")
		}
	})
}

func nextRequest(t *testing.T, reqs <-chan *discovery.DiscoveryRequest) *discovery.DiscoveryRequest {
	t.Helper()
	select {
	case r := <-reqs:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no request from Watch within 10s")
		return nil
	}
}

func TestWatchNacksBadTableAndReconnects(t *testing.T) {
	up := startUpstream(t)
	s := startProxy(t, Options{Upstreams: []string{up.addr}})
	prev := meshTable()
	s.UpdateTable(prev)

	ads := &scriptedADS{reqs: make(chan *discovery.DiscoveryRequest, 10), good: &nds.NameTable{Table: map[string]*nds.NameInfo{
		"details.default.svc.cluster.local": {IPs: []string{"10.96.0.11"}, Registry: nds.RegistryKubernetes,
			Shortname: "details", Namespace: "default"},
	}}}
	conn := dialADS(t, func(g *grpc.Server) { discovery.RegisterAggregatedDiscoveryServiceServer(g, ads) })
	node := &corev3.Node{Id: "sidecar~10.1.0.1~client.default~default.svc.cluster.local"}
	runWatch(t, conn, node, s)

	first := nextRequest(t, ads.reqs)
	if first.GetNode().GetId() != node.Id || first.TypeUrl != nds.TypeURL || first.ResponseNonce != "" ||
		len(first.ResourceNames) != 0 {
		t.Fatalf("first request: %v", first)
	}
	nack := nextRequest(t, ads.reqs)
	if nack.ResponseNonce != "n1" || nack.ErrorDetail == nil || nack.ErrorDetail.Message == "" || nack.VersionInfo != "" {
		t.Fatalf("want a NACK of n1 with an error and no accepted version, got %v", nack)
	}
	if s.Table() != prev {
		t.Fatal("an undecodable table replaced the one in use")
	}

	again := nextRequest(t, ads.reqs)
	if ads.streams.Load() != 2 || again.GetNode().GetId() != node.Id || again.ResponseNonce != "" {
		t.Fatalf("want a new stream opening with the node, got stream %d: %v", ads.streams.Load(), again)
	}
	ack := nextRequest(t, ads.reqs)
	if ack.ResponseNonce != "n2" || ack.VersionInfo != "v2" || ack.ErrorDetail != nil {
		t.Fatalf("want an ACK of n2 at v2, got %v", ack)
	}
	// The ACK is sent after the table is applied.
	expect(t, query(t, s, "udp", "details.", miekg.TypeA), miekg.RcodeSuccess, "10.96.0.11")
}
