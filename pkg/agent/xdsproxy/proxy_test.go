package xdsproxy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/xds"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshd/meshd/internal/testutil"
	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/test/xdstest"

	"github.com/meshd/meshd/test/meshdtest"
)

var plaintext = grpc.WithTransportCredentials(insecure.NewCredentials())

// TestGRPCXDSClientThroughProxy: a real proxyless grpc-go client (which speaks SotW) whose bootstrap points
// at the proxy's socket resolves a service, calls the backend meshd routes it to, and follows a route edit:
// requests and responses cross the proxy both ways, initially and on later pushes, and its ACKs are seen.
func TestGRPCXDSClientThroughProxy(t *testing.T) {
	p1 := meshdtest.StartEchoBackend(t, "127.0.0.2:0", "v1")
	p2 := meshdtest.StartEchoBackend(t, "127.0.0.3:0", "v2")
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "echo.yaml"), fmt.Sprintf(meshdtest.EchoPlatform, p1, p2))
	routes := filepath.Join(dir, "routes.yaml")
	writeFile(t, routes, fmt.Sprintf(echoRoute, "v1"))
	m, _ := startMeshd(t, dir, "127.0.0.1:0")
	p, sock := startProxy(t, m.GRPCListener.String())

	bootstrap := fmt.Sprintf(`{
	  "xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
	  "node": {"id": "sidecar~127.0.0.1~client.default~default.svc.cluster.local",
	           "metadata": {"GENERATOR": "grpc", "NAMESPACE": "default"}}
	}`, unixTarget(sock))
	resolver, err := xds.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("xds:///echo.default.svc.cluster.local:7070", plaintext, grpc.WithResolvers(resolver))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := testgrpc.NewTestServiceClient(conn)
	call := func() (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		resp, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{}, grpc.WaitForReady(true))
		return resp.GetHostname(), err
	}
	if got, err := call(); err != nil || got != "v1" {
		t.Fatalf("first call reached %q (error %v), want v1 (the VirtualService routes to v1)", got, err)
	}

	writeFile(t, routes, fmt.Sprintf(echoRoute, "v2"))
	// While the new route and its cluster arrive (separate responses), grpc-go may briefly fail RPCs.
	testutil.Eventually(t, 20*time.Second, "calls reaching v2 after the route edit", func() bool {
		got, err := call()
		return err == nil && got == "v2"
	})

	for _, typ := range []string{model.ListenerType, model.RouteType, model.ClusterType, model.EndpointType} {
		if !p.Acked(typ) {
			t.Errorf("Acked(%s) = false after the client used config of that type", typ)
		}
	}
	st := p.Status()
	if st.Upstream != m.GRPCListener.String() || st.State != "READY" || st.ActiveStreams != 1 {
		t.Errorf("Status = %+v, want upstream %s, READY, 1 active stream", st, m.GRPCListener)
	}
	testutil.Eventually(t, 10*time.Second, "2 RDS responses and ACKs counted (initial and after the edit)", func() bool {
		rds := p.Status().Types[model.RouteType]
		return rds.Responses >= 2 && rds.ACKs >= 2
	})
}

// TestSotwAckNack drives a SotW stream by hand: Acked flips only once an ACK is sent (not on the response
// nor on a NACK), NACKs are counted, responses arrive unchanged, and when the client goes away the upstream
// stream is cancelled and nothing of the stream is left running.
func TestSotwAckNack(t *testing.T) {
	m, _ := startMeshd(t, platformDir(t), "127.0.0.1:0")
	p, sock := startProxy(t, m.GRPCListener.String())
	conn, err := grpc.NewClient(unixTarget(sock), plaintext)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	md, err := structpb.NewStruct(sidecarMeta)
	if err != nil {
		t.Fatal(err)
	}
	send := func(r *discovery.DiscoveryRequest) {
		t.Helper()
		if err := st.Send(r); err != nil {
			t.Fatal(err)
		}
	}
	recv := func(typeURL string) *discovery.DiscoveryResponse {
		t.Helper()
		for {
			r, err := st.Recv()
			if err != nil {
				t.Fatalf("waiting for %s: %v", typeURL, err)
			}
			if r.TypeUrl == typeURL {
				return r
			}
		}
	}

	if p.Acked(model.ClusterType) {
		t.Fatal("Acked(CDS) before any stream")
	}
	send(&discovery.DiscoveryRequest{Node: &core.Node{Id: sidecarID, Metadata: md}, TypeUrl: model.ClusterType})
	cds := recv(model.ClusterType)
	var names []string
	for _, a := range cds.Resources {
		var c cluster.Cluster
		if err := a.UnmarshalTo(&c); err != nil {
			t.Fatal(err)
		}
		names = append(names, c.Name)
	}
	if !slices.Contains(names, echoCluster) {
		t.Fatalf("CDS through the proxy = %v, want %s", names, echoCluster)
	}
	if p.Acked(model.ClusterType) {
		t.Fatal("Acked(CDS) = true on a response that was not ACKed yet")
	}

	send(&discovery.DiscoveryRequest{TypeUrl: model.ClusterType, ResponseNonce: cds.Nonce,
		ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "rejected by the test"}})
	testutil.Eventually(t, 10*time.Second, "the NACK counted", func() bool { return p.Status().Types[model.ClusterType].NACKs == 1 })
	if p.Acked(model.ClusterType) {
		t.Fatal("Acked(CDS) = true after a NACK")
	}

	send(&discovery.DiscoveryRequest{TypeUrl: model.ListenerType})
	lds := recv(model.ListenerType)
	send(&discovery.DiscoveryRequest{TypeUrl: model.ListenerType, VersionInfo: lds.VersionInfo, ResponseNonce: lds.Nonce})
	testutil.Eventually(t, 10*time.Second, "Acked(LDS)", func() bool { return p.Acked(model.ListenerType) })
	if got := p.Status().Types[model.ListenerType]; got.ACKs != 1 || got.NACKs != 0 || got.Responses < 1 {
		t.Errorf("LDS counts = %+v, want 1 ACK, no NACK, a response", got)
	}
	if p.Acked(model.ClusterType) {
		t.Error("an LDS ACK made CDS Acked")
	}

	if n := len(m.XDS.Connections()); n != 1 {
		t.Fatalf("meshd has %d connections, want the proxied one", n)
	}
	cancel()
	testutil.Eventually(t, 10*time.Second, "the proxy's active streams back to 0", func() bool { return p.Status().ActiveStreams == 0 })
	testutil.Eventually(t, 10*time.Second, "the upstream stream closed at meshd", func() bool { return len(m.XDS.Connections()) == 0 })
}

// TestDeltaThroughProxy: an Envoy-style Delta client on the socket gets clusters, ACKs them (seen by
// Acked), and a config edit on the meshd side arrives through the proxy as a later push.
func TestDeltaThroughProxy(t *testing.T) {
	dir := platformDir(t)
	m, _ := startMeshd(t, dir, "127.0.0.1:0")
	p, sock := startProxy(t, m.GRPCListener.String())
	e, err := xdstest.DialWith(t, unixTarget(sock), sidecarID, sidecarMeta, plaintext)
	if err != nil {
		t.Fatal(err)
	}
	if r := e.Next(15 * time.Second); r.TypeUrl != model.ClusterType {
		t.Fatalf("first response is %s, want CDS", r.TypeUrl)
	}
	if !slices.Contains(e.Names(model.ClusterType), echoCluster) {
		t.Fatalf("clusters = %v, want %s", e.Names(model.ClusterType), echoCluster)
	}
	testutil.Eventually(t, 10*time.Second, "Acked(CDS) after the client's ACK", func() bool { return p.Acked(model.ClusterType) })

	writeFile(t, filepath.Join(dir, "other.yaml"), otherService)
	testutil.Eventually(t, 20*time.Second, "the new Service's cluster pushed through the proxy", func() bool {
		e.Next(15 * time.Second)
		return slices.Contains(e.Names(model.ClusterType), otherCluster)
	})
	testutil.Eventually(t, 10*time.Second, "2 CDS responses and ACKs counted", func() bool {
		got := p.Status().Types[model.ClusterType]
		return got.Responses >= 2 && got.ACKs >= 2
	})
}

// TestControlPlaneRestart: when meshd goes away the downstream stream ends with an error (so the workload
// reconnects and re-subscribes), nothing of it stays running, and a client reconnecting through the same
// socket gets config from the meshd that comes back on the same address.
func TestControlPlaneRestart(t *testing.T) {
	dir := platformDir(t)
	m1, stop1 := startMeshd(t, dir, "127.0.0.1:0")
	addr := m1.GRPCListener.String()
	p, sock := startProxy(t, addr)

	e1, err := xdstest.DialWith(t, unixTarget(sock), sidecarID, sidecarMeta, plaintext)
	if err != nil {
		t.Fatal(err)
	}
	e1.Next(15 * time.Second)
	if !slices.Contains(e1.Names(model.ClusterType), echoCluster) {
		t.Fatalf("clusters before the restart = %v", e1.Names(model.ClusterType))
	}

	stop1()
	// meshd's shutdown drops the connection, which the upstream stream reports as Unavailable: the workload
	// must see that status (it decides how grpc-go and Envoy retry), marked as coming from the upstream.
	err = e1.Err(20 * time.Second)
	if err == nil {
		t.Fatal("the downstream stream stayed open after meshd stopped")
	}
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "xds proxy: upstream "+addr) {
		t.Fatalf("downstream ended with %v, want the upstream's Unavailable status", err)
	}
	testutil.Eventually(t, 10*time.Second, "active streams back to 0", func() bool { return p.Status().ActiveStreams == 0 })

	startMeshd(t, dir, addr)
	e2, err := xdstest.DialWith(t, unixTarget(sock), sidecarID, sidecarMeta, plaintext)
	if err != nil {
		t.Fatal(err)
	}
	if r := e2.Next(30 * time.Second); r.TypeUrl != model.ClusterType {
		t.Fatalf("first response after the restart is %s", r.TypeUrl)
	}
	if !slices.Contains(e2.Names(model.ClusterType), echoCluster) {
		t.Fatalf("clusters after the restart = %v", e2.Names(model.ClusterType))
	}
}

// TestUpstreamDownAtConnect: a client that connects while the control plane is down keeps its stream
// (the proxy waits for the upstream) and gets config as soon as meshd comes up.
func TestUpstreamDownAtConnect(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	p, sock := startProxy(t, addr)

	e, err := xdstest.DialWith(t, unixTarget(sock), sidecarID, sidecarMeta, plaintext)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the stream waiting on a failing upstream", func() bool {
		st := p.Status()
		return st.ActiveStreams == 1 && st.State == "TRANSIENT_FAILURE"
	})

	startMeshd(t, platformDir(t), addr)
	if r := e.Next(30 * time.Second); r.TypeUrl != model.ClusterType {
		t.Fatalf("first response is %s", r.TypeUrl)
	}
	if !slices.Contains(e.Names(model.ClusterType), echoCluster) {
		t.Fatalf("clusters = %v", e.Names(model.ClusterType))
	}
}

// TestSocketLifecycle: the socket's directory is created owner/group-only and the socket owner-only; Close
// removes it; a stale socket from a previous run is replaced, a non-socket file is not; Serve's return ends
// open streams (even one still waiting for the upstream) and removes the socket.
func TestSocketLifecycle(t *testing.T) {
	sock := socketPath(t)
	opts := Options{Socket: sock, Upstream: "127.0.0.1:1", DialOptions: []grpc.DialOption{plaintext}, Logger: testLogger()}

	p, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&fs.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode = %v, want a socket with 0600", fi.Mode())
	}
	di, err := os.Stat(filepath.Dir(sock))
	if err != nil {
		t.Fatal(err)
	}
	if perm := di.Mode().Perm(); perm&0o027 != 0 || perm&0o700 != 0o700 {
		t.Errorf("socket directory mode = %v, want at most 0750", perm)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("socket still there after Close: %v", err)
	}

	// A previous run that crashed leaves its socket file behind, with nobody listening.
	stale, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	if _, err := os.Lstat(sock); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}
	p, err = New(opts)
	if err != nil {
		t.Fatalf("New over a stale socket: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- p.Serve(ctx) }()

	conn, err := grpc.NewClient(unixTarget(sock), plaintext)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	streamCtx, streamCancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer streamCancel()
	st, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(streamCtx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: sidecarID}, TypeUrl: model.ClusterType}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the stream open at the proxy", func() bool { return p.Status().ActiveStreams == 1 })

	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Serve did not return with a stream waiting for the upstream")
	}
	if _, err := st.Recv(); err == nil {
		t.Fatal("the stream is still open after Serve returned")
	} else if status.Code(err) == codes.DeadlineExceeded {
		t.Fatalf("the stream ended only by the test's own deadline: %v", err)
	}
	if n := p.Status().ActiveStreams; n != 0 {
		t.Errorf("ActiveStreams = %d after Serve returned", n)
	}
	testutil.Eventually(t, 10*time.Second, "the workload's connection closed by Serve's return", func() bool {
		return conn.GetState() != connectivity.Ready
	})
	if _, err := os.Lstat(sock); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("socket still there after Serve returned: %v", err)
	}

	// Anything that is not a socket is someone else's file: refuse rather than delete it.
	if err := os.WriteFile(sock, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(opts); err == nil {
		t.Fatal("New replaced a regular file")
	}
	if b, err := os.ReadFile(sock); err != nil || string(b) != "keep me" {
		t.Fatalf("the regular file was touched: %q, %v", b, err)
	}
}
