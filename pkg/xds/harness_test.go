package xds

import (
	"context"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshd/meshd/internal/testutil"
	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/util"
)

// mutableDiscovery lets tests swap the registry between pushes.
type mutableDiscovery struct {
	mu sync.Mutex
	sd *model.StaticDiscovery
}

func (m *mutableDiscovery) set(services []*model.Service, eps []*model.Endpoint) {
	m.mu.Lock()
	m.sd = model.NewStaticDiscovery(services, eps, nil)
	m.mu.Unlock()
}
func (m *mutableDiscovery) get() *model.StaticDiscovery {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sd
}
func (m *mutableDiscovery) Services() []*model.Service           { return m.get().Services() }
func (m *mutableDiscovery) Endpoints(h string) []*model.Endpoint { return m.get().Endpoints(h) }
func (m *mutableDiscovery) Workloads() []*model.Workload         { return m.get().Workloads() }

// testGen builds minimal but valid resources straight from the push context, so protocol tests do not depend
// on the translation code: one EDS cluster per service port, one assignment per cluster, one listener per port.
type testGen struct{ typeURL string }

func (g testGen) Generate(p *model.Proxy, push *model.PushContext, w *model.WatchedResource, _ *model.PushRequest) ([]*discovery.Resource, error) {
	var out []*discovery.Resource
	want := func(name string) bool { return w.Wildcard || slices.Contains(w.Names, name) }
	for _, s := range push.ServicesForProxy(p) {
		for _, port := range s.Ports {
			name := model.BuildSubsetKey(model.Outbound, "", s.Hostname, port.Port)
			switch g.typeURL {
			case model.ClusterType:
				if want(name) {
					out = append(out, util.Resource(name, &cluster.Cluster{
						Name:           name,
						ConnectTimeout: push.Mesh.GetConnectTimeout(),
						// Like real clusters' verified SANs, the cluster depends on its endpoints' identities.
						AltStatName:          strings.Join(push.ServiceAccounts(s.Hostname), ","),
						ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
						EdsClusterConfig: &cluster.Cluster_EdsClusterConfig{
							EdsConfig: &core.ConfigSource{ConfigSourceSpecifier: &core.ConfigSource_Ads{}},
						},
					}))
				}
			case model.EndpointType:
				if want(name) {
					cla := &endpoint.ClusterLoadAssignment{ClusterName: name}
					var lbs []*endpoint.LbEndpoint
					for _, e := range push.Endpoints(s.Hostname, port.Port) {
						lbs = append(lbs, &endpoint.LbEndpoint{HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
							Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
								Address: e.Address, PortSpecifier: &core.SocketAddress_PortValue{PortValue: uint32(e.Port)}}}}}}})
					}
					cla.Endpoints = []*endpoint.LocalityLbEndpoints{{LbEndpoints: lbs}}
					out = append(out, util.Resource(name, cla))
				}
			case model.ListenerType:
				ln := "0.0.0.0_" + strconv.Itoa(port.Port)
				if want(ln) && !slices.ContainsFunc(out, func(r *discovery.Resource) bool { return r.Name == ln }) {
					out = append(out, util.Resource(ln, &listener.Listener{Name: ln}))
				}
			}
		}
	}
	return out, nil
}

func svc(host string, port int) *model.Service {
	return &model.Service{Hostname: host, Name: host, Namespace: "default",
		Ports: []*model.Port{{Name: "http", Port: port, Protocol: model.ProtocolHTTP}}}
}

func ep(host string, port int, addr string) *model.Endpoint {
	return &model.Endpoint{Hostname: host, ServicePort: port, Address: addr, Port: port}
}

type fixture struct {
	t    *testing.T
	s    *DiscoveryServer
	reg  *mutableDiscovery
	conn *grpc.ClientConn
	ads  discoverygrpc.AggregatedDiscoveryServiceClient
}

// newFixture starts a server on loopback with two services a and b, debouncing quickly.
func newFixture(t *testing.T, start bool) *fixture {
	t.Helper()
	reg := &mutableDiscovery{}
	reg.set([]*model.Service{svc("a.default.svc.cluster.local", 80), svc("b.default.svc.cluster.local", 80)},
		[]*model.Endpoint{ep("a.default.svc.cluster.local", 80, "10.0.0.1"), ep("b.default.svc.cluster.local", 80, "10.0.0.2")})
	env := &model.Environment{ServiceDiscovery: reg, ConfigStore: model.NewStaticConfigStore(nil), Mesh: model.DefaultMeshConfig(), DomainSuffix: "cluster.local"}
	s := New(env, Options{
		Debounce: DebounceOptions{After: 10 * time.Millisecond, Max: 100 * time.Millisecond, EDS: true},
		Generators: map[string]model.Generator{
			model.ClusterType: testGen{model.ClusterType}, model.EndpointType: testGen{model.EndpointType},
			model.ListenerType: testGen{model.ListenerType},
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	if start {
		s.Start(ctx)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	s.Register(g)
	go func() { _ = g.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		g.Stop()
		cancel()
	})
	return &fixture{t: t, s: s, reg: reg, conn: conn, ads: discoverygrpc.NewAggregatedDiscoveryServiceClient(conn)}
}

func testNode(name string) *core.Node {
	md, _ := structpb.NewStruct(map[string]any{"NAMESPACE": "default", "ISTIO_VERSION": "1.28.0"})
	return &core.Node{Id: "sidecar~10.1.0.1~" + name + ".default~default.svc.cluster.local", Metadata: md}
}

// streamClient wraps a SotW or Delta stream; responses are read in the background so tests can wait with
// deadlines.
type streamClient[Req, Resp any] struct {
	t      *testing.T
	stream interface {
		Send(Req) error
		Recv() (Resp, error)
	}
	resps chan Resp
	errs  chan error
}

func newStreamClient[Req, Resp any](t *testing.T, st interface {
	Send(Req) error
	Recv() (Resp, error)
}) *streamClient[Req, Resp] {
	c := &streamClient[Req, Resp]{t: t, stream: st, resps: make(chan Resp, 100), errs: make(chan error, 1)}
	go func() {
		for {
			r, err := st.Recv()
			if err != nil {
				c.errs <- err
				return
			}
			c.resps <- r
		}
	}()
	return c
}

func (c *streamClient[Req, Resp]) send(r Req) {
	c.t.Helper()
	if err := c.stream.Send(r); err != nil {
		c.t.Fatal(err)
	}
}

func (c *streamClient[Req, Resp]) recv() Resp {
	c.t.Helper()
	select {
	case r := <-c.resps:
		return r
	case err := <-c.errs:
		c.t.Fatalf("stream ended: %v", err)
	case <-time.After(10 * time.Second):
		c.t.Fatal("no response within 10s")
	}
	var zero Resp
	return zero
}

// expectNoneBefore asserts that no response arrives before the answer to a sentinel request: the server
// handles a stream's requests and pushes in order, so the sentinel's answer proves earlier work is done.
func (c *streamClient[Req, Resp]) expectNoneBefore(sentinel func(), isSentinel func(Resp) bool) {
	c.t.Helper()
	sentinel()
	if r := c.recv(); !isSentinel(r) {
		c.t.Fatalf("unexpected response %v before the sentinel", r)
	}
}

type (
	sotwClient  = streamClient[*discovery.DiscoveryRequest, *discovery.DiscoveryResponse]
	deltaClient = streamClient[*discovery.DeltaDiscoveryRequest, *discovery.DeltaDiscoveryResponse]
)

func (f *fixture) sotw(ctx context.Context) *sotwClient {
	st, err := f.ads.StreamAggregatedResources(ctx)
	if err != nil {
		f.t.Fatal(err)
	}
	return newStreamClient[*discovery.DiscoveryRequest, *discovery.DiscoveryResponse](f.t, st)
}

func (f *fixture) delta(ctx context.Context) *deltaClient {
	st, err := f.ads.DeltaAggregatedResources(ctx)
	if err != nil {
		f.t.Fatal(err)
	}
	return newStreamClient[*discovery.DeltaDiscoveryRequest, *discovery.DeltaDiscoveryResponse](f.t, st)
}

func ack(c *deltaClient, r *discovery.DeltaDiscoveryResponse) {
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce})
}

func names(rs []*discovery.Resource) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Name)
	}
	slices.Sort(out)
	return out
}

func anyNames(t *testing.T, resp *discovery.DiscoveryResponse) []string {
	t.Helper()
	var out []string
	for _, a := range resp.Resources {
		switch resp.TypeUrl {
		case model.ClusterType:
			var c cluster.Cluster
			if err := a.UnmarshalTo(&c); err != nil {
				t.Fatal(err)
			}
			out = append(out, c.Name)
		case model.EndpointType:
			var c endpoint.ClusterLoadAssignment
			if err := a.UnmarshalTo(&c); err != nil {
				t.Fatal(err)
			}
			out = append(out, c.ClusterName)
		case model.ListenerType:
			var l listener.Listener
			if err := a.UnmarshalTo(&l); err != nil {
				t.Fatal(err)
			}
			out = append(out, l.Name)
		}
	}
	slices.Sort(out)
	return out
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, what, cond)
}

func (f *fixture) connection(id string) *Connection {
	for _, c := range f.s.Connections() {
		if c.proxy.PodName == id {
			return c
		}
	}
	return nil
}

func (f *fixture) watchStatus(pod, typeURL string) WatchStatus {
	c := f.connection(pod)
	if c == nil {
		return WatchStatus{}
	}
	_, ws := c.Status()
	for _, w := range ws {
		if w.TypeURL == typeURL {
			return w
		}
	}
	return WatchStatus{}
}
