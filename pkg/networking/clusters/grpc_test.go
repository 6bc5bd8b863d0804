package clusters

import (
	"slices"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/pkg/model"
)

// grpcMesh is bookinfo plus an echo gRPC service whose rule asks for consistent hashing and a request limit.
func grpcMesh() *fixture {
	f := bookinfo()
	echo := f.addService("echo", "default", "10.96.7.1", port("grpc", 7070))
	f.addPod(echo, "echo-1", "10.7.0.1", labels("app", "echo", "version", "v1"), locality("us-east/a"))
	f.addPod(echo, "echo-2", "10.7.0.2", labels("app", "echo", "version", "v1"), locality("us-east/a"), weight(5))
	f.addPod(echo, "echo-3", "10.7.0.3", labels("app", "echo", "version", "v2"), locality("us-west/a"), health(model.Unhealthy))
	f.addPod(echo, "echo-4", "10.7.0.4", labels("app", "echo", "version", "v2"), locality("us-west/b"), health(model.Draining))
	f.addPod(echo, "echo-5", "10.7.0.5", labels("app", "echo", "version", "v2"), locality("us-west/b"))
	f.addConfig(model.KindDestinationRule, "default", "echo", &networking.DestinationRule{
		Host: "echo",
		TrafficPolicy: &networking.TrafficPolicy{
			LoadBalancer: &networking.LoadBalancerSettings{LbPolicy: &networking.LoadBalancerSettings_ConsistentHash{
				ConsistentHash: &networking.LoadBalancerSettings_ConsistentHashLB{
					HashKey: &networking.LoadBalancerSettings_ConsistentHashLB_HttpHeaderName{HttpHeaderName: "x-user"},
					HashAlgorithm: &networking.LoadBalancerSettings_ConsistentHashLB_RingHash_{
						RingHash: &networking.LoadBalancerSettings_ConsistentHashLB_RingHash{MinimumRingSize: 2048},
					},
				},
			}},
			ConnectionPool: &networking.ConnectionPoolSettings{Http: &networking.ConnectionPoolSettings_HTTPSettings{
				Http2MaxRequests: 100, MaxRetries: 3,
			}},
			// Envoy-only for gRPC: grpc-go's outlier detection has no consecutive-5xx ejection.
			OutlierDetection: &networking.OutlierDetection{Consecutive_5XxErrors: wrapperspb.UInt32(5)},
		},
		Subsets: []*networking.Subset{
			{Name: "v1", Labels: labels("version", "v1"), TrafficPolicy: &networking.TrafficPolicy{
				LoadBalancer: &networking.LoadBalancerSettings{LbPolicy: &networking.LoadBalancerSettings_Simple{
					Simple: networking.LoadBalancerSettings_LEAST_REQUEST,
				}},
			}},
			{Name: "v2", Labels: labels("version", "v2")},
		},
	})
	return f
}

func TestGRPCCDSOnlyRequestedNames(t *testing.T) {
	push := grpcMesh().push()
	p := grpcClient(t, push, "productpage-v1-1", "default", "10.0.0.1")
	echo := fqdn("echo", "default")
	rs := generate(t, NewGRPCCDS(nil), p, push,
		"outbound|7070||"+echo, "outbound|7070|v1|"+echo, "outbound|9080||"+fqdn("ratings", "default"),
		"outbound|7070|v9|"+echo, "outbound|9080||nope.default.svc.cluster.local", "outbound|1||"+echo,
		"inbound|9080||", "garbage")
	want := []string{"outbound|7070|v1|" + echo, "outbound|7070||" + echo, "outbound|9080||" + fqdn("ratings", "default")}
	if got := names(rs); !slices.Equal(got, want) {
		t.Fatalf("names = %v, want %v", got, want)
	}
	cs := decodeClusters(t, rs)
	for name, c := range cs {
		if c.GetType() != cluster.Cluster_EDS || c.GetEdsClusterConfig().GetServiceName() != name ||
			c.GetEdsClusterConfig().GetEdsConfig().GetAds() == nil ||
			c.GetEdsClusterConfig().GetEdsConfig().GetResourceApiVersion() != core.ApiVersion_V3 {
			t.Errorf("%s: not an ADS EDS cluster: %v", name, c)
		}
		if c.TransportSocket != nil || c.TypedExtensionProtocolOptions != nil || c.OutlierDetection != nil ||
			c.UpstreamConnectionOptions != nil || c.Metadata != nil || c.CommonLbConfig != nil {
			t.Errorf("%s: carries Envoy-only fields: %v", name, c)
		}
	}

	def := cs["outbound|7070||"+echo]
	if def.LbPolicy != cluster.Cluster_RING_HASH || def.GetRingHashLbConfig().GetMinimumRingSize().GetValue() != 2048 {
		t.Errorf("consistent hash: %v %v, want RING_HASH 2048", def.LbPolicy, def.GetRingHashLbConfig())
	}
	th := def.GetCircuitBreakers().GetThresholds()
	if len(th) != 1 || th[0].GetMaxRequests().GetValue() != 100 || th[0].MaxRetries != nil || th[0].MaxConnections != nil {
		t.Errorf("circuit breakers = %v, want only max_requests 100", th)
	}
	if got := cs["outbound|7070|v1|"+echo].LbPolicy; got != cluster.Cluster_LEAST_REQUEST {
		t.Errorf("v1 lb_policy = %v, want LEAST_REQUEST from the subset", got)
	}
	ratings := cs["outbound|9080||"+fqdn("ratings", "default")]
	if ratings.LbPolicy != cluster.Cluster_ROUND_ROBIN || ratings.CircuitBreakers != nil {
		t.Errorf("ratings = %v, want ROUND_ROBIN without circuit breakers", ratings)
	}

	if rs := generate(t, NewGRPCCDS(nil), p, push); len(rs) != 0 {
		t.Errorf("gRPC CDS without names gave %v", names(rs))
	}
}

func TestGRPCEDSHealthyEndpointsPositiveWeights(t *testing.T) {
	push := grpcMesh().push()
	p := grpcClient(t, push, "productpage-v1-1", "default", "10.0.0.1")
	echo := fqdn("echo", "default")
	all, v2 := "outbound|7070||"+echo, "outbound|7070|v2|"+echo
	as := decodeAssignments(t, generate(t, NewGRPCEDS(nil), p, push, all, v2))
	want := []lbView{
		{"us-east/a/", 6, []string{"10.7.0.1:7070 HEALTHY 1 istio", "10.7.0.2:7070 HEALTHY 5 istio"}},
		{"us-west/b/", 1, []string{"10.7.0.5:7070 HEALTHY 1 istio"}},
	}
	if got := viewOf(as[all]); !equalViews(got, want) {
		t.Errorf("gRPC EDS:\n got %+v\nwant %+v (unhealthy-only us-west/a dropped)", got, want)
	}
	if got := viewOf(as[v2]); !equalViews(got, want[1:]) {
		t.Errorf("gRPC EDS v2:\n got %+v\nwant %+v", got, want[1:])
	}
	// The sidecar variant keeps the unhealthy and draining endpoints, with their status.
	side := decodeAssignments(t, generate(t, NewEDS(nil), sidecar(t, push, "productpage-v1-1", "default", "10.0.0.1"), push, all))
	if n := len(viewOf(side[all])); n != 3 {
		t.Errorf("sidecar EDS has %d localities, want 3", n)
	}
}

func TestGRPCSubsetsWithoutRule(t *testing.T) {
	// No DestinationRule: a subset name is unknown, so gRPC CDS omits it and EDS answers empty.
	push := bookinfo().push()
	p := grpcClient(t, push, "productpage-v1-1", "default", "10.0.0.1")
	name := "outbound|9080|v1|" + fqdn("ratings", "default")
	if rs := generate(t, NewGRPCCDS(nil), p, push, name); len(rs) != 0 {
		t.Errorf("CDS for an undefined subset: %v", names(rs))
	}
	if a := decodeAssignments(t, generate(t, NewGRPCEDS(nil), p, push, name))[name]; a == nil || len(a.Endpoints) != 0 {
		t.Errorf("EDS for an undefined subset: %v", a)
	}
}
