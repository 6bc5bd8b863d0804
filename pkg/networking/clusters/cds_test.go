package clusters

import (
	"math"
	"slices"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	meshconfig "istio.io/api/mesh/v1alpha1"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/pkg/model"
)

func TestSidecarCDSBookinfoClusterNames(t *testing.T) {
	push := bookinfo().push()
	p := sidecar(t, push, "productpage-v1-1", "default", "10.0.0.1")
	rs := generate(t, NewCDS(nil), p, push)
	decodeClusters(t, rs)
	want := []string{
		"BlackHoleCluster",
		"InboundPassthroughCluster",
		"PassthroughCluster",
		"inbound|9080||",
		// Byte order: '|' sorts after the letters, so subset clusters come before default ones.
		"outbound|9080|v1|reviews.default.svc.cluster.local",
		"outbound|9080|v2|reviews.default.svc.cluster.local",
		"outbound|9080|v3|reviews.default.svc.cluster.local",
		"outbound|9080||details.default.svc.cluster.local",
		"outbound|9080||productpage.default.svc.cluster.local",
		"outbound|9080||ratings.default.svc.cluster.local",
		"outbound|9080||reviews.default.svc.cluster.local",
	}
	if got := names(rs); !slices.Equal(got, want) {
		t.Errorf("clusters:\n got %q\nwant %q", got, want)
	}
}

func TestOutboundEDSClusterShape(t *testing.T) {
	f := bookinfo()
	f.addService("grpc-echo", "default", "10.96.0.20", port("grpc", 7070), port("http", 8080), port("udp-dns", 53))
	f.services[len(f.services)-1].Ports[2].Protocol = model.ProtocolUDP
	push := f.push()
	p := sidecar(t, push, "productpage-v1-1", "default", "10.0.0.1")
	cs := decodeClusters(t, generate(t, NewCDS(nil), p, push))

	name := "outbound|9080||" + reviewsHost
	c := cs[name]
	if c == nil {
		t.Fatalf("no cluster %s", name)
	}
	if c.GetType() != cluster.Cluster_EDS {
		t.Errorf("type = %v, want EDS", c.GetType())
	}
	eds := c.GetEdsClusterConfig()
	if eds.GetServiceName() != name || eds.GetEdsConfig().GetAds() == nil ||
		eds.GetEdsConfig().GetResourceApiVersion() != core.ApiVersion_V3 {
		t.Errorf("eds_cluster_config = %v, want ads, V3, service_name %s", eds, name)
	}
	if got := c.GetConnectTimeout().AsDuration(); got != 10*time.Second {
		t.Errorf("connect_timeout = %v, want the mesh default 10s", got)
	}
	if c.LbPolicy != cluster.Cluster_LEAST_REQUEST {
		t.Errorf("lb_policy = %v, want Istio's default LEAST_REQUEST", c.LbPolicy)
	}
	th := c.GetCircuitBreakers().GetThresholds()
	if len(th) != 1 || th[0].GetMaxConnections().GetValue() != math.MaxUint32 ||
		th[0].GetMaxPendingRequests().GetValue() != math.MaxUint32 || th[0].GetMaxRequests().GetValue() != math.MaxUint32 ||
		th[0].GetMaxRetries().GetValue() != math.MaxUint32 || !th[0].TrackRemaining {
		t.Errorf("circuit breakers = %v, want Istio's unlimited defaults with track_remaining", th)
	}
	if c.TypedExtensionProtocolOptions != nil {
		t.Errorf("HTTP/1.1 cluster has protocol options %v", c.TypedExtensionProtocolOptions)
	}
	svcs := istioField(t, c.Metadata, "services").GetListValue().GetValues()
	if len(svcs) != 1 {
		t.Fatalf("metadata services = %v", svcs)
	}
	sm := svcs[0].GetStructValue().GetFields()
	if sm["host"].GetStringValue() != reviewsHost || sm["name"].GetStringValue() != "reviews" ||
		sm["namespace"].GetStringValue() != "default" {
		t.Errorf("metadata service = %v", sm)
	}
	if got := istioField(t, c.Metadata, "config").GetStringValue(); got != "/apis/networking.istio.io/v1alpha3/namespaces/default/destination-rule/reviews" {
		t.Errorf("metadata config = %q", got)
	}
	if istioField(t, c.Metadata, "subset") != nil {
		t.Error("default cluster carries subset metadata")
	}
	v2 := cs["outbound|9080|v2|"+reviewsHost]
	if got := istioField(t, v2.GetMetadata(), "subset").GetStringValue(); got != "v2" {
		t.Errorf("v2 subset metadata = %q", got)
	}
	if v2.GetEdsClusterConfig().GetServiceName() != "outbound|9080|v2|"+reviewsHost {
		t.Errorf("subset EDS service name = %q", v2.GetEdsClusterConfig().GetServiceName())
	}
	if got := istioField(t, cs["outbound|9080||"+fqdn("ratings", "default")].GetMetadata(), "config"); got != nil {
		t.Errorf("cluster without DestinationRule has config metadata %v", got)
	}

	// gRPC ports get explicit HTTP/2 upstream, HTTP ports of the same service do not; UDP ports get nothing.
	h2 := httpOptionsOf(t, cs["outbound|7070||"+fqdn("grpc-echo", "default")])
	if h2.GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
		t.Errorf("gRPC port options = %v, want explicit http2", h2)
	}
	if o := cs["outbound|8080||"+fqdn("grpc-echo", "default")].GetTypedExtensionProtocolOptions(); o != nil {
		t.Errorf("HTTP port of gRPC service has protocol options %v", o)
	}
	if cs["outbound|53||"+fqdn("grpc-echo", "default")] != nil {
		t.Error("UDP port got a cluster")
	}
}

func TestConnectTimeoutFromMeshConfig(t *testing.T) {
	f := bookinfo()
	f.mesh = model.DefaultMeshConfig()
	f.mesh.ConnectTimeout = durationpb.New(3 * time.Second)
	push := f.push()
	p := sidecar(t, push, "productpage-v1-1", "default", "10.0.0.1")
	for name, c := range decodeClusters(t, generate(t, NewCDS(nil), p, push)) {
		if got := c.GetConnectTimeout().AsDuration(); got != 3*time.Second {
			t.Errorf("%s: connect_timeout = %v, want 3s from mesh config", name, got)
		}
	}
}

func httpOptionsOf(t *testing.T, c *cluster.Cluster) *httpv3.HttpProtocolOptions {
	t.Helper()
	a := c.GetTypedExtensionProtocolOptions()[httpProtocolOptionsKey]
	if a == nil {
		t.Fatalf("%s: no %s", c.GetName(), httpProtocolOptionsKey)
	}
	o := &httpv3.HttpProtocolOptions{}
	if err := a.UnmarshalTo(o); err != nil {
		t.Fatal(err)
	}
	return o
}

// policyMesh is one HTTP service "svc" (ports 8080 and 9090) in default with the given DestinationRule.
func policyMesh(t *testing.T, dr *networking.DestinationRule) map[string]*cluster.Cluster {
	t.Helper()
	f := &fixture{}
	svc := f.addService("svc", "default", "10.96.1.1", port("http", 8080), port("http-admin", 9090))
	f.addPod(svc, "svc-1", "10.1.0.1", labels("app", "svc", "version", "v1"))
	dr.Host = "svc"
	f.addConfig(model.KindDestinationRule, "default", "svc", dr)
	push := f.push()
	p := sidecar(t, push, "client", "default", "10.9.9.9")
	return decodeClusters(t, generate(t, NewCDS(nil), p, push))
}

func TestDestinationRuleConnectionPoolAndOutlierDetection(t *testing.T) {
	cs := policyMesh(t, &networking.DestinationRule{TrafficPolicy: &networking.TrafficPolicy{
		ConnectionPool: &networking.ConnectionPoolSettings{
			Tcp: &networking.ConnectionPoolSettings_TCPSettings{
				MaxConnections: 100,
				ConnectTimeout: durationpb.New(250 * time.Millisecond),
				TcpKeepalive: &networking.ConnectionPoolSettings_TCPSettings_TcpKeepalive{
					Probes: 3, Time: durationpb.New(2 * time.Hour), Interval: durationpb.New(75 * time.Second),
				},
			},
			Http: &networking.ConnectionPoolSettings_HTTPSettings{
				Http1MaxPendingRequests:  10,
				Http2MaxRequests:         200,
				MaxRetries:               5,
				IdleTimeout:              durationpb.New(30 * time.Second),
				MaxRequestsPerConnection: 7,
			},
		},
		OutlierDetection: &networking.OutlierDetection{
			Consecutive_5XxErrors:    wrapperspb.UInt32(7),
			ConsecutiveGatewayErrors: wrapperspb.UInt32(3),
			Interval:                 durationpb.New(5 * time.Minute),
			BaseEjectionTime:         durationpb.New(15 * time.Minute),
			MaxEjectionPercent:       50,
			MinHealthPercent:         30,
		},
	}})
	c := cs["outbound|8080||"+fqdn("svc", "default")]
	th := c.GetCircuitBreakers().GetThresholds()[0]
	if th.GetMaxConnections().GetValue() != 100 || th.GetMaxPendingRequests().GetValue() != 10 ||
		th.GetMaxRequests().GetValue() != 200 || th.GetMaxRetries().GetValue() != 5 || !th.TrackRemaining {
		t.Errorf("thresholds = %v", th)
	}
	if got := c.GetConnectTimeout().AsDuration(); got != 250*time.Millisecond {
		t.Errorf("connect_timeout = %v, want 250ms", got)
	}
	ka := c.GetUpstreamConnectionOptions().GetTcpKeepalive()
	if ka.GetKeepaliveProbes().GetValue() != 3 || ka.GetKeepaliveTime().GetValue() != 7200 ||
		ka.GetKeepaliveInterval().GetValue() != 75 {
		t.Errorf("tcp keepalive = %v", ka)
	}
	opts := httpOptionsOf(t, c)
	if opts.GetCommonHttpProtocolOptions().GetIdleTimeout().AsDuration() != 30*time.Second ||
		opts.GetCommonHttpProtocolOptions().GetMaxRequestsPerConnection().GetValue() != 7 {
		t.Errorf("common http options = %v", opts.GetCommonHttpProtocolOptions())
	}
	if opts.GetExplicitHttpConfig().GetHttpProtocolOptions() == nil {
		t.Errorf("HTTP/1.1 cluster with options must say explicit http1, got %v", opts.GetUpstreamProtocolOptions())
	}
	od := c.GetOutlierDetection()
	if od.GetConsecutive_5Xx().GetValue() != 7 || od.GetEnforcingConsecutive_5Xx().GetValue() != 100 ||
		od.GetConsecutiveGatewayFailure().GetValue() != 3 || od.GetEnforcingConsecutiveGatewayFailure().GetValue() != 100 ||
		od.GetInterval().AsDuration() != 5*time.Minute || od.GetBaseEjectionTime().AsDuration() != 15*time.Minute ||
		od.GetMaxEjectionPercent().GetValue() != 50 || od.GetEnforcingSuccessRate() == nil ||
		od.GetEnforcingSuccessRate().GetValue() != 0 {
		t.Errorf("outlier detection = %v", od)
	}
	if got := c.GetCommonLbConfig().GetHealthyPanicThreshold(); got == nil || got.Value != 30 {
		t.Errorf("healthy_panic_threshold = %v, want 30 from minHealthPercent", got)
	}
}

func TestOutlierDetectionDisablesPanicModeByDefault(t *testing.T) {
	cs := policyMesh(t, &networking.DestinationRule{TrafficPolicy: &networking.TrafficPolicy{
		OutlierDetection: &networking.OutlierDetection{Consecutive_5XxErrors: wrapperspb.UInt32(0)},
	}})
	c := cs["outbound|8080||"+fqdn("svc", "default")]
	if got := c.GetCommonLbConfig().GetHealthyPanicThreshold(); got == nil || got.Value != 0 {
		t.Errorf("healthy_panic_threshold = %v, want explicit 0", got)
	}
	if od := c.GetOutlierDetection(); od.GetConsecutive_5Xx().GetValue() != 0 || od.GetEnforcingConsecutive_5Xx() == nil ||
		od.GetEnforcingConsecutive_5Xx().GetValue() != 0 {
		t.Errorf("consecutive5xxErrors 0 must disable 5xx ejection: %v", od)
	}
	if plain := policyMesh(t, &networking.DestinationRule{}); plain["outbound|8080||"+fqdn("svc", "default")].GetOutlierDetection() != nil {
		t.Error("outlier detection without a policy")
	}
}

func TestDestinationRuleLoadBalancer(t *testing.T) {
	simple := func(s networking.LoadBalancerSettings_SimpleLB) *networking.LoadBalancerSettings {
		return &networking.LoadBalancerSettings{LbPolicy: &networking.LoadBalancerSettings_Simple{Simple: s}}
	}
	hash := func(ch *networking.LoadBalancerSettings_ConsistentHashLB) *networking.LoadBalancerSettings {
		ch.HashKey = &networking.LoadBalancerSettings_ConsistentHashLB_HttpHeaderName{HttpHeaderName: "x-user"}
		return &networking.LoadBalancerSettings{LbPolicy: &networking.LoadBalancerSettings_ConsistentHash{ConsistentHash: ch}}
	}
	cases := []struct {
		name     string
		lb       *networking.LoadBalancerSettings
		policy   cluster.Cluster_LbPolicy
		typ      cluster.Cluster_DiscoveryType
		ringSize uint64
		maglev   uint64
	}{
		{"unset", nil, cluster.Cluster_LEAST_REQUEST, cluster.Cluster_EDS, 0, 0},
		{"round robin", simple(networking.LoadBalancerSettings_ROUND_ROBIN), cluster.Cluster_ROUND_ROBIN, cluster.Cluster_EDS, 0, 0},
		{"least request", simple(networking.LoadBalancerSettings_LEAST_REQUEST), cluster.Cluster_LEAST_REQUEST, cluster.Cluster_EDS, 0, 0},
		{"random", simple(networking.LoadBalancerSettings_RANDOM), cluster.Cluster_RANDOM, cluster.Cluster_EDS, 0, 0},
		{"passthrough", simple(networking.LoadBalancerSettings_PASSTHROUGH), cluster.Cluster_CLUSTER_PROVIDED, cluster.Cluster_ORIGINAL_DST, 0, 0},
		{"ring hash", hash(&networking.LoadBalancerSettings_ConsistentHashLB{HashAlgorithm: &networking.LoadBalancerSettings_ConsistentHashLB_RingHash_{
			RingHash: &networking.LoadBalancerSettings_ConsistentHashLB_RingHash{MinimumRingSize: 4096},
		}}), cluster.Cluster_RING_HASH, cluster.Cluster_EDS, 4096, 0},
		{"deprecated ring size", hash(&networking.LoadBalancerSettings_ConsistentHashLB{}), cluster.Cluster_RING_HASH, cluster.Cluster_EDS, 1024, 0},
		{"ring size capped", hash(&networking.LoadBalancerSettings_ConsistentHashLB{MinimumRingSize: 1 << 40}), cluster.Cluster_RING_HASH, cluster.Cluster_EDS, maxRingSize, 0},
		{"maglev", hash(&networking.LoadBalancerSettings_ConsistentHashLB{HashAlgorithm: &networking.LoadBalancerSettings_ConsistentHashLB_Maglev{
			Maglev: &networking.LoadBalancerSettings_ConsistentHashLB_MagLev{TableSize: 65537},
		}}), cluster.Cluster_MAGLEV, cluster.Cluster_EDS, 0, 65537},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := policyMesh(t, &networking.DestinationRule{TrafficPolicy: &networking.TrafficPolicy{LoadBalancer: tc.lb}})["outbound|8080||"+fqdn("svc", "default")]
			if c.LbPolicy != tc.policy || c.GetType() != tc.typ {
				t.Errorf("lb_policy %v type %v, want %v %v", c.LbPolicy, c.GetType(), tc.policy, tc.typ)
			}
			if got := c.GetRingHashLbConfig().GetMinimumRingSize().GetValue(); got != tc.ringSize {
				t.Errorf("minimum_ring_size = %d, want %d", got, tc.ringSize)
			}
			if got := c.GetMaglevLbConfig().GetTableSize().GetValue(); got != tc.maglev {
				t.Errorf("maglev table_size = %d, want %d", got, tc.maglev)
			}
			if tc.typ == cluster.Cluster_ORIGINAL_DST && (c.EdsClusterConfig != nil || c.LoadAssignment != nil) {
				t.Errorf("ORIGINAL_DST cluster keeps endpoints config: %v %v", c.EdsClusterConfig, c.LoadAssignment)
			}
		})
	}
}

func TestPortLevelSettingsAndSubsetPolicies(t *testing.T) {
	random := &networking.LoadBalancerSettings{LbPolicy: &networking.LoadBalancerSettings_Simple{Simple: networking.LoadBalancerSettings_RANDOM}}
	rr := &networking.LoadBalancerSettings{LbPolicy: &networking.LoadBalancerSettings_Simple{Simple: networking.LoadBalancerSettings_ROUND_ROBIN}}
	pool := func(n int32) *networking.ConnectionPoolSettings {
		return &networking.ConnectionPoolSettings{Tcp: &networking.ConnectionPoolSettings_TCPSettings{MaxConnections: n}}
	}
	cs := policyMesh(t, &networking.DestinationRule{
		TrafficPolicy: &networking.TrafficPolicy{
			LoadBalancer:     random,
			ConnectionPool:   pool(10),
			OutlierDetection: &networking.OutlierDetection{Consecutive_5XxErrors: wrapperspb.UInt32(5)},
			PortLevelSettings: []*networking.TrafficPolicy_PortTrafficPolicy{{
				Port:         &networking.PortSelector{Number: 9090},
				LoadBalancer: rr,
			}},
		},
		Subsets: []*networking.Subset{
			// v1 overrides only the pool: LB and outlier detection are inherited per port.
			{Name: "v1", Labels: labels("version", "v1"), TrafficPolicy: &networking.TrafficPolicy{ConnectionPool: pool(20)}},
			// v2's own port-level entry for 8080 replaces everything for that port.
			{Name: "v2", Labels: labels("version", "v2"), TrafficPolicy: &networking.TrafficPolicy{
				ConnectionPool: pool(30),
				PortLevelSettings: []*networking.TrafficPolicy_PortTrafficPolicy{{
					Port: &networking.PortSelector{Number: 8080}, ConnectionPool: pool(40),
				}},
			}},
		},
	})
	host := fqdn("svc", "default")
	type want struct {
		lb      cluster.Cluster_LbPolicy
		maxConn uint32
		outlier bool
	}
	for name, w := range map[string]want{
		"outbound|8080||" + host:   {cluster.Cluster_RANDOM, 10, true},
		"outbound|9090||" + host:   {cluster.Cluster_ROUND_ROBIN, math.MaxUint32, false}, // port level does not inherit
		"outbound|8080|v1|" + host: {cluster.Cluster_RANDOM, 20, true},
		"outbound|9090|v1|" + host: {cluster.Cluster_ROUND_ROBIN, 20, false},
		"outbound|8080|v2|" + host: {cluster.Cluster_LEAST_REQUEST, 40, false},
		"outbound|9090|v2|" + host: {cluster.Cluster_ROUND_ROBIN, 30, false},
	} {
		c := cs[name]
		if c == nil {
			t.Errorf("no cluster %s", name)
			continue
		}
		got := want{c.LbPolicy, c.GetCircuitBreakers().GetThresholds()[0].GetMaxConnections().GetValue(), c.OutlierDetection != nil}
		if got != w {
			t.Errorf("%s: got %+v, want %+v", name, got, w)
		}
	}
}

func TestH2UpgradePolicy(t *testing.T) {
	host := fqdn("svc", "default")
	upgrade := &networking.ConnectionPoolSettings{Http: &networking.ConnectionPoolSettings_HTTPSettings{
		H2UpgradePolicy:      networking.ConnectionPoolSettings_HTTPSettings_UPGRADE,
		MaxConcurrentStreams: 64,
	}}
	c := policyMesh(t, &networking.DestinationRule{TrafficPolicy: &networking.TrafficPolicy{ConnectionPool: upgrade}})["outbound|8080||"+host]
	h2 := httpOptionsOf(t, c).GetExplicitHttpConfig().GetHttp2ProtocolOptions()
	if h2 == nil || h2.GetMaxConcurrentStreams().GetValue() != 64 {
		t.Errorf("UPGRADE: http2 options = %v, want explicit http2 with 64 streams", h2)
	}
	client := &networking.ConnectionPoolSettings{Http: &networking.ConnectionPoolSettings_HTTPSettings{UseClientProtocol: true}}
	c = policyMesh(t, &networking.DestinationRule{TrafficPolicy: &networking.TrafficPolicy{ConnectionPool: client}})["outbound|8080||"+host]
	if httpOptionsOf(t, c).GetUseDownstreamProtocolConfig() == nil {
		t.Error("useClientProtocol: want use_downstream_protocol_config")
	}

	// Mesh-wide UPGRADE applies to HTTP ports unless the rule says DO_NOT_UPGRADE.
	f := &fixture{mesh: model.DefaultMeshConfig()}
	f.mesh.H2UpgradePolicy = meshconfig.MeshConfig_UPGRADE
	f.addService("a", "default", "10.96.2.1", port("http", 80), port("tcp", 81))
	f.addService("b", "default", "10.96.2.2", port("http", 80))
	f.addConfig(model.KindDestinationRule, "default", "b", &networking.DestinationRule{Host: "b", TrafficPolicy: &networking.TrafficPolicy{
		ConnectionPool: &networking.ConnectionPoolSettings{Http: &networking.ConnectionPoolSettings_HTTPSettings{
			H2UpgradePolicy: networking.ConnectionPoolSettings_HTTPSettings_DO_NOT_UPGRADE,
		}},
	}})
	push := f.push()
	cs := decodeClusters(t, generate(t, NewCDS(nil), sidecar(t, push, "client", "default", "10.9.9.9"), push))
	if httpOptionsOf(t, cs["outbound|80||"+fqdn("a", "default")]).GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
		t.Error("mesh UPGRADE did not upgrade an HTTP port")
	}
	if cs["outbound|81||"+fqdn("a", "default")].TypedExtensionProtocolOptions != nil {
		t.Error("mesh UPGRADE upgraded a TCP port")
	}
	if cs["outbound|80||"+fqdn("b", "default")].TypedExtensionProtocolOptions != nil {
		t.Error("DO_NOT_UPGRADE in the rule did not win over the mesh")
	}
}

func tlsContextOf(t *testing.T, c *cluster.Cluster) *tlsv3.UpstreamTlsContext {
	t.Helper()
	ts := c.GetTransportSocket()
	if ts == nil {
		t.Fatalf("%s: no transport socket", c.Name)
	}
	if ts.Name != "envoy.transport_sockets.tls" {
		t.Errorf("transport socket %q", ts.Name)
	}
	ctx := &tlsv3.UpstreamTlsContext{}
	if err := ts.GetTypedConfig().UnmarshalTo(ctx); err != nil {
		t.Fatal(err)
	}
	return ctx
}

func TestDestinationRuleTLS(t *testing.T) {
	host := fqdn("svc", "default")
	tlsRule := func(tls *networking.ClientTLSSettings) map[string]*cluster.Cluster {
		return policyMesh(t, &networking.DestinationRule{TrafficPolicy: &networking.TrafficPolicy{Tls: tls}})
	}

	simple := tlsRule(&networking.ClientTLSSettings{
		Mode: networking.ClientTLSSettings_SIMPLE, CaCertificates: "/etc/certs/ca.pem", Sni: "svc.example.com",
		SubjectAltNames: []string{"svc.example.com", "spiffe://td/ns/default/sa/svc", "10.1.0.1"}, CaCrl: "/etc/certs/crl.pem",
	})["outbound|8080||"+host]
	ctx := tlsContextOf(t, simple)
	vc := ctx.GetCommonTlsContext().GetValidationContext()
	if ctx.Sni != "svc.example.com" || vc.GetTrustedCa().GetFilename() != "/etc/certs/ca.pem" ||
		vc.GetCrl().GetFilename() != "/etc/certs/crl.pem" || len(ctx.GetCommonTlsContext().GetTlsCertificates()) != 0 {
		t.Errorf("SIMPLE context = %v", ctx)
	}
	sans := vc.GetMatchTypedSubjectAltNames()
	wantTypes := []tlsv3.SubjectAltNameMatcher_SanType{tlsv3.SubjectAltNameMatcher_DNS, tlsv3.SubjectAltNameMatcher_URI, tlsv3.SubjectAltNameMatcher_IP_ADDRESS}
	if len(sans) != 3 {
		t.Fatalf("SAN matchers = %v", sans)
	}
	for i, m := range sans {
		if m.SanType != wantTypes[i] || m.GetMatcher().GetExact() == "" {
			t.Errorf("SAN matcher %d = %v, want %v exact", i, m, wantTypes[i])
		}
	}
	if got := istioField(t, simple.Metadata, "alpn_override").GetStringValue(); got != "false" {
		t.Errorf("alpn_override = %q", got)
	}
	if o := simple.GetTypedExtensionProtocolOptions(); o != nil {
		t.Errorf("explicit sni needs no auto_sni, got options %v", o)
	}

	mutual := tlsRule(&networking.ClientTLSSettings{
		Mode: networking.ClientTLSSettings_MUTUAL, CaCertificates: "/etc/certs/ca.pem",
		ClientCertificate: "/etc/certs/cert.pem", PrivateKey: "/etc/certs/key.pem",
	})
	ctx = tlsContextOf(t, mutual["outbound|8080||"+host])
	certs := ctx.GetCommonTlsContext().GetTlsCertificates()
	if len(certs) != 1 || certs[0].GetCertificateChain().GetFilename() != "/etc/certs/cert.pem" ||
		certs[0].GetPrivateKey().GetFilename() != "/etc/certs/key.pem" {
		t.Errorf("MUTUAL certificates = %v", certs)
	}
	up := httpOptionsOf(t, mutual["outbound|8080||"+host]).GetUpstreamHttpProtocolOptions()
	if !up.GetAutoSni() || !up.GetAutoSanValidation() {
		t.Errorf("without sni: upstream options = %v, want auto_sni and auto_san_validation", up)
	}

	// MUTUAL without a client key still originates TLS (the server rejects it), never plaintext.
	noKey := tlsRule(&networking.ClientTLSSettings{Mode: networking.ClientTLSSettings_MUTUAL, ClientCertificate: "/c.pem"})
	if certs := tlsContextOf(t, noKey["outbound|8080||"+host]).GetCommonTlsContext().GetTlsCertificates(); len(certs) != 0 {
		t.Errorf("MUTUAL without key: certificates %v", certs)
	}

	insecure := tlsRule(&networking.ClientTLSSettings{Mode: networking.ClientTLSSettings_SIMPLE, CaCertificates: "/ca.pem",
		InsecureSkipVerify: wrapperspb.Bool(true)})["outbound|8080||"+host]
	if tlsContextOf(t, insecure).GetCommonTlsContext().GetValidationContextType() != nil {
		t.Error("insecureSkipVerify still validates")
	}
	if httpOptionsOf(t, insecure).GetUpstreamHttpProtocolOptions().GetAutoSanValidation() {
		t.Error("insecureSkipVerify still validates SANs")
	}

	// DISABLE is plaintext: no transport socket and no auto-mTLS matches (ISTIO_MUTUAL: see mtls_test.go).
	disabled := tlsRule(&networking.ClientTLSSettings{Mode: networking.ClientTLSSettings_DISABLE})["outbound|8080||"+host]
	if disabled.GetTransportSocket() != nil || disabled.GetTransportSocketMatches() != nil {
		t.Errorf("DISABLE: transport socket %v, matches %v, want none", disabled.GetTransportSocket(), disabled.GetTransportSocketMatches())
	}

	// HTTP/2 upstreams advertise h2 over ALPN.
	f := &fixture{}
	f.addService("g", "default", "10.96.3.1", port("grpc", 7070))
	f.addConfig(model.KindDestinationRule, "default", "g", &networking.DestinationRule{Host: "g", TrafficPolicy: &networking.TrafficPolicy{
		Tls: &networking.ClientTLSSettings{Mode: networking.ClientTLSSettings_SIMPLE, Sni: "g"},
	}})
	push := f.push()
	g := decodeClusters(t, generate(t, NewCDS(nil), sidecar(t, push, "c", "default", "10.9.9.9"), push))["outbound|7070||"+fqdn("g", "default")]
	if alpn := tlsContextOf(t, g).GetCommonTlsContext().GetAlpnProtocols(); !slices.Equal(alpn, []string{"h2"}) {
		t.Errorf("ALPN = %v, want [h2]", alpn)
	}
}

func TestHeadlessDNSAndExternalNameServices(t *testing.T) {
	f := &fixture{}
	headless := f.addService("db", "default", "", port("tcp-mysql", 3306))
	headless.Resolution = model.Passthrough
	f.addPod(headless, "db-0", "10.2.0.1", labels("app", "db"))

	dns := &model.Service{Hostname: "api.example.com", Name: "api.example.com", Namespace: "default", Resolution: model.DNSLB,
		Ports: []*model.Port{port("https", 443)}, MeshExternal: true}
	f.services = append(f.services, dns)
	for _, h := range []string{"b.example.com", "a.example.com"} {
		f.endpoints = append(f.endpoints, &model.Endpoint{Hostname: dns.Hostname, ServicePort: 443, Address: h, Port: 8443, Namespace: "default"})
	}
	bare := &model.Service{Hostname: "bare.example.com", Name: "bare.example.com", Namespace: "default", Resolution: model.DNSLB,
		Ports: []*model.Port{port("http", 80)}, MeshExternal: true}
	ext := &model.Service{Hostname: fqdn("legacy", "default"), Name: "legacy", Namespace: "default", Resolution: model.DNSLB,
		ExternalName: "legacy.corp.example", Ports: []*model.Port{port("http", 80)}}
	// LB PASSTHROUGH turns a DNS service into ORIGINAL_DST, which must not keep its inline endpoints.
	pt := &model.Service{Hostname: "pt.example.com", Name: "pt.example.com", Namespace: "default", Resolution: model.DNSLB,
		Ports: []*model.Port{port("http", 80)}, MeshExternal: true}
	f.services = append(f.services, bare, ext, pt)
	f.addConfig(model.KindDestinationRule, "default", "pt", &networking.DestinationRule{Host: pt.Hostname, TrafficPolicy: &networking.TrafficPolicy{
		LoadBalancer: &networking.LoadBalancerSettings{LbPolicy: &networking.LoadBalancerSettings_Simple{Simple: networking.LoadBalancerSettings_PASSTHROUGH}},
	}})
	push := f.push()
	p := sidecar(t, push, "client", "default", "10.9.9.9")
	cs := decodeClusters(t, generate(t, NewCDS(nil), p, push))

	h := cs["outbound|3306||"+headless.Hostname]
	if h.GetType() != cluster.Cluster_ORIGINAL_DST || h.LbPolicy != cluster.Cluster_CLUSTER_PROVIDED ||
		h.EdsClusterConfig != nil || h.LoadAssignment != nil {
		t.Errorf("headless cluster = %v", h)
	}

	type hostPort struct {
		host string
		port uint32
	}
	addrs := func(c *cluster.Cluster) []hostPort {
		var out []hostPort
		for _, l := range c.GetLoadAssignment().GetEndpoints() {
			for _, e := range l.LbEndpoints {
				sa := e.GetEndpoint().GetAddress().GetSocketAddress()
				out = append(out, hostPort{sa.Address, sa.GetPortValue()})
			}
		}
		return out
	}
	for name, want := range map[string][]hostPort{
		"outbound|443||api.example.com": {{"a.example.com", 8443}, {"b.example.com", 8443}},
		"outbound|80||bare.example.com": {{"bare.example.com", 80}},
		"outbound|80||" + ext.Hostname:  {{"legacy.corp.example", 80}},
	} {
		c := cs[name]
		if c.GetType() != cluster.Cluster_STRICT_DNS || c.DnsLookupFamily != cluster.Cluster_V4_ONLY || !c.RespectDnsTtl ||
			c.EdsClusterConfig != nil || c.LbPolicy != cluster.Cluster_LEAST_REQUEST {
			t.Errorf("%s: not a V4 STRICT_DNS cluster: %v", name, c)
		}
		if c.GetLoadAssignment().GetClusterName() != name {
			t.Errorf("%s: load assignment named %q", name, c.GetLoadAssignment().GetClusterName())
		}
		if got := addrs(c); !slices.Equal(got, want) {
			t.Errorf("%s: endpoints %v, want %v", name, got, want)
		}
	}
	if c := cs["outbound|80||pt.example.com"]; c.GetType() != cluster.Cluster_ORIGINAL_DST ||
		c.LbPolicy != cluster.Cluster_CLUSTER_PROVIDED || c.LoadAssignment != nil {
		t.Errorf("DNS service with LB PASSTHROUGH = %v, want ORIGINAL_DST without load assignment", c)
	}
	if !istioField(t, cs["outbound|443||api.example.com"].Metadata, "external").GetBoolValue() {
		t.Error("mesh-external service lacks external metadata")
	}

	// The proxy resolves DNS clusters and headless traffic itself: EDS answers with empty assignments.
	eds := decodeAssignments(t, generate(t, NewEDS(nil), p, push, "outbound|443||api.example.com"))
	if a := eds["outbound|443||api.example.com"]; a == nil || len(a.Endpoints) != 0 {
		t.Errorf("EDS for a DNS cluster = %v, want empty", a)
	}
}

func TestInboundClusters(t *testing.T) {
	f := &fixture{}
	app := f.addService("app", "default", "10.96.4.1", port("http", 80), port("grpc", 9090))
	app.TargetPorts = map[int]model.TargetPort{80: {Number: 8080}}
	alias := &model.Service{Hostname: fqdn("app-alias", "default"), Name: "app-alias", Namespace: "default",
		Addresses: []string{"10.96.4.2"}, Ports: []*model.Port{port("http", 8080)}, Selector: labels("app", "app")}
	f.services = append(f.services, alias)
	f.addPod(app, "app-1", "10.3.0.1", labels("app", "app"))
	push := f.push()
	p := sidecar(t, push, "app-1", "default", "10.3.0.1")
	if len(p.ServiceTargets) != 3 {
		t.Fatalf("service targets = %v", p.ServiceTargets)
	}
	cs := decodeClusters(t, generate(t, NewCDS(nil), p, push))
	var inbound []string
	for name := range cs {
		if len(name) > 8 && name[:8] == "inbound|" {
			inbound = append(inbound, name)
		}
	}
	slices.Sort(inbound)
	if want := []string{"inbound|8080||", "inbound|9090||"}; !slices.Equal(inbound, want) {
		t.Fatalf("inbound clusters = %v, want %v (deduplicated by target port)", inbound, want)
	}
	for _, name := range inbound {
		c := cs[name]
		bind := c.GetUpstreamBindConfig().GetSourceAddress()
		if c.GetType() != cluster.Cluster_ORIGINAL_DST || c.LbPolicy != cluster.Cluster_CLUSTER_PROVIDED ||
			bind.GetAddress() != "127.0.0.6" || bind.GetPortValue() != 0 {
			t.Errorf("%s = %v", name, c)
		}
	}
	if cs["inbound|8080||"].TypedExtensionProtocolOptions != nil {
		t.Error("HTTP/1.1 inbound cluster has protocol options")
	}
	if httpOptionsOf(t, cs["inbound|9090||"]).GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
		t.Error("gRPC inbound cluster is not HTTP/2")
	}
	var hosts []string
	for _, v := range istioField(t, cs["inbound|8080||"].Metadata, "services").GetListValue().GetValues() {
		hosts = append(hosts, v.GetStructValue().GetFields()["host"].GetStringValue())
	}
	// In the order of the service targets: by hostname ('-' sorts before '.').
	if want := []string{fqdn("app-alias", "default"), fqdn("app", "default")}; !slices.Equal(hosts, want) {
		t.Errorf("inbound|8080|| services = %v, want %v", hosts, want)
	}

	// Gateways have no inbound side.
	gw := router(t, push, "app-1", "default", "10.3.0.1")
	for _, n := range names(generate(t, NewCDS(nil), gw, push)) {
		if n == model.InboundPassthroughCluster || len(n) > 8 && n[:8] == "inbound|" {
			t.Errorf("router got %s", n)
		}
	}
}

func TestWellKnownClusters(t *testing.T) {
	push := bookinfo().push()
	cs := decodeClusters(t, generate(t, NewCDS(nil), sidecar(t, push, "productpage-v1-1", "default", "10.0.0.1"), push))
	pt := cs[model.PassthroughCluster]
	if pt.GetType() != cluster.Cluster_ORIGINAL_DST || pt.LbPolicy != cluster.Cluster_CLUSTER_PROVIDED ||
		pt.GetConnectTimeout().AsDuration() != 10*time.Second || pt.UpstreamBindConfig != nil {
		t.Errorf("PassthroughCluster = %v", pt)
	}
	if httpOptionsOf(t, pt).GetUseDownstreamProtocolConfig() == nil {
		t.Error("PassthroughCluster must keep the downstream HTTP protocol")
	}
	ipt := cs[model.InboundPassthroughCluster]
	if ipt.GetType() != cluster.Cluster_ORIGINAL_DST || ipt.LbPolicy != cluster.Cluster_CLUSTER_PROVIDED ||
		ipt.GetUpstreamBindConfig().GetSourceAddress().GetAddress() != "127.0.0.6" {
		t.Errorf("InboundPassthroughCluster = %v", ipt)
	}
	bh := cs[model.BlackHoleCluster]
	if bh.GetType() != cluster.Cluster_STATIC || bh.LoadAssignment != nil || bh.GetConnectTimeout() == nil {
		t.Errorf("BlackHoleCluster = %v", bh)
	}
}

func TestSidecarEgressHidesOtherNamespaces(t *testing.T) {
	f := bookinfo()
	other := f.addService("billing", "finance", "10.96.5.1", port("http", 8080))
	f.addPod(other, "billing-1", "10.5.0.1", labels("app", "billing"))
	billing := "outbound|8080||" + other.Hostname

	push := f.push()
	p := sidecar(t, push, "productpage-v1-1", "default", "10.0.0.1")
	if !slices.Contains(names(generate(t, NewCDS(nil), p, push)), billing) {
		t.Fatal("without a Sidecar, the other namespace's service must be visible")
	}
	if a := decodeAssignments(t, generate(t, NewEDS(nil), p, push, billing))[billing]; len(a.GetEndpoints()) != 1 {
		t.Fatalf("without a Sidecar, EDS for %s = %v", billing, a)
	}

	f.addConfig(model.KindSidecar, "default", "default", &networking.Sidecar{
		Egress: []*networking.IstioEgressListener{{Hosts: []string{"./*"}}},
	})
	push = f.push()
	p = sidecar(t, push, "productpage-v1-1", "default", "10.0.0.1")
	for _, n := range names(generate(t, NewCDS(nil), p, push)) {
		if n == billing {
			t.Errorf("Sidecar egress ./* still exposes %s", n)
		}
	}
	if !slices.Contains(names(generate(t, NewCDS(nil), p, push)), "outbound|9080||"+reviewsHost) {
		t.Error("Sidecar egress ./* hid the namespace's own services")
	}
	if a := decodeAssignments(t, generate(t, NewEDS(nil), p, push, billing))[billing]; a == nil || len(a.Endpoints) != 0 {
		t.Errorf("EDS for a hidden service = %v, want an empty assignment", a)
	}
	// The Sidecar scopes its namespace only.
	q := sidecar(t, push, "billing-1", "finance", "10.5.0.1")
	if !slices.Contains(names(generate(t, NewCDS(nil), q, push)), "outbound|9080||"+reviewsHost) {
		t.Error("a Sidecar in default narrowed a proxy in finance")
	}
}
