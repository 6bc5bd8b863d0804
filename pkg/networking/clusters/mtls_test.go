package clusters

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rawbuffer "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"
	security "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	"sigs.k8s.io/yaml"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/util"
)

// sdsConfig is the SDS secret config Istio's sidecars use: the agent's SDS over the static "sds-grpc" cluster.
func sdsConfig(name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: &core.ConfigSource{
		ConfigSourceSpecifier: &core.ConfigSource_ApiConfigSource{ApiConfigSource: &core.ApiConfigSource{
			ApiType:                   core.ApiConfigSource_GRPC,
			SetNodeOnFirstMessageOnly: true,
			TransportApiVersion:       core.ApiVersion_V3,
			GrpcServices: []*core.GrpcService{{TargetSpecifier: &core.GrpcService_EnvoyGrpc_{
				EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: "sds-grpc"},
			}}},
		}},
		ResourceApiVersion: core.ApiVersion_V3,
	}}
}

// wantIstioMutual spells out the whole client context of mesh mTLS, field by field.
func wantIstioMutual(sni string, alpn []string, sans ...string) *tlsv3.UpstreamTlsContext {
	var matchers []*tlsv3.SubjectAltNameMatcher
	for _, s := range sans {
		matchers = append(matchers, &tlsv3.SubjectAltNameMatcher{
			SanType: tlsv3.SubjectAltNameMatcher_URI,
			Matcher: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: s}},
		})
	}
	return &tlsv3.UpstreamTlsContext{
		Sni: sni,
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsParams: &tlsv3.TlsParameters{
				TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_2,
				TlsMaximumProtocolVersion: tlsv3.TlsParameters_TLSv1_3,
			},
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sdsConfig("default")},
			ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{
				CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
					DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: matchers},
					ValidationContextSdsSecretConfig: sdsConfig("ROOTCA"),
				},
			},
			AlpnProtocols: alpn,
		},
	}
}

func assertProto(t *testing.T, what string, got, want proto.Message) {
	t.Helper()
	if !proto.Equal(got, want) {
		t.Errorf("%s:\n got: %v\nwant: %v", what, got, want)
	}
}

// socketMatches decodes auto-mTLS transport socket matches into (name, match, TLS context or nil for raw buffer).
type socketMatch struct {
	name  string
	match *structpb.Struct
	tls   *tlsv3.UpstreamTlsContext
	raw   bool
}

func socketMatches(t *testing.T, c *cluster.Cluster) []socketMatch {
	t.Helper()
	var out []socketMatch
	for _, m := range c.GetTransportSocketMatches() {
		sm := socketMatch{name: m.GetName(), match: m.GetMatch()}
		ts := m.GetTransportSocket()
		switch ts.GetName() {
		case "envoy.transport_sockets.tls":
			sm.tls = &tlsv3.UpstreamTlsContext{}
			if err := ts.GetTypedConfig().UnmarshalTo(sm.tls); err != nil {
				t.Fatal(err)
			}
		case "envoy.transport_sockets.raw_buffer":
			if !ts.GetTypedConfig().MessageIs(&rawbuffer.RawBuffer{}) {
				t.Errorf("raw buffer socket holds %s", ts.GetTypedConfig().GetTypeUrl())
			}
			sm.raw = true
		default:
			t.Errorf("%s: socket match %q has transport socket %q", c.Name, m.GetName(), ts.GetName())
		}
		out = append(out, sm)
	}
	return out
}

// assertAutoMTLS checks a cluster has exactly Istio's two auto-mTLS matches: tlsMode=istio endpoints get the
// given mesh mTLS context, every other endpoint plaintext.
func assertAutoMTLS(t *testing.T, c *cluster.Cluster, want *tlsv3.UpstreamTlsContext) {
	t.Helper()
	if c == nil {
		t.Fatal("no cluster")
	}
	if c.TransportSocket != nil {
		t.Errorf("%s: auto-mTLS cluster has a fixed transport socket %v", c.Name, c.TransportSocket)
	}
	ms := socketMatches(t, c)
	if len(ms) != 2 {
		t.Fatalf("%s: transport socket matches = %v, want tlsMode-istio and tlsMode-disabled", c.Name, c.GetTransportSocketMatches())
	}
	assertProto(t, c.Name+" istio match", ms[0].match, &structpb.Struct{Fields: map[string]*structpb.Value{"tlsMode": structpb.NewStringValue("istio")}})
	if ms[0].name != "tlsMode-istio" || ms[0].tls == nil {
		t.Errorf("%s: first match %q (tls %v)", c.Name, ms[0].name, ms[0].tls)
	}
	assertProto(t, c.Name+" mTLS context", ms[0].tls, want)
	if ms[1].name != "tlsMode-disabled" || !ms[1].raw || len(ms[1].match.GetFields()) != 0 {
		t.Errorf("%s: default match = %+v, want tlsMode-disabled, empty match, raw buffer", c.Name, ms[1])
	}
}

var reviewsSA = "spiffe://cluster.local/ns/default/sa/sa-reviews"

// Auto-mTLS (the default): every in-mesh service cluster gets Istio's transport socket matches, SNI
// outbound_.<port>_.<subset>_.<host>, the in-mesh ALPNs (with h2 on HTTP/2 ports), certificates from SDS and the
// service's endpoint identities as SANs.
func TestAutoMTLSSidecarClusters(t *testing.T) {
	f := bookinfo()
	f.addService("grpc-echo", "default", "10.96.0.20", port("grpc", 7070))
	push := f.push()
	cs := decodeClusters(t, generate(t, NewCDS(nil), sidecar(t, push, "productpage-v1-1", "default", "10.0.0.1"), push))

	alpn := []string{"istio-peer-exchange", "istio"}
	assertAutoMTLS(t, cs["outbound|9080||"+reviewsHost],
		wantIstioMutual("outbound_.9080_._.reviews.default.svc.cluster.local", alpn, reviewsSA))
	assertAutoMTLS(t, cs["outbound|9080|v1|"+reviewsHost],
		wantIstioMutual("outbound_.9080_.v1_.reviews.default.svc.cluster.local", alpn, reviewsSA))
	assertAutoMTLS(t, cs["outbound|9080||"+fqdn("ratings", "default")],
		wantIstioMutual("outbound_.9080_._.ratings.default.svc.cluster.local", alpn, "spiffe://cluster.local/ns/default/sa/sa-ratings"))
	// HTTP/2 (gRPC) ports also offer h2, after Istio's own values; a service without endpoints checks no SAN.
	assertAutoMTLS(t, cs["outbound|7070||"+fqdn("grpc-echo", "default")],
		wantIstioMutual("outbound_.7070_._.grpc-echo.default.svc.cluster.local", []string{"istio-peer-exchange", "istio", "h2"}))

	// The well-known clusters never do mesh mTLS.
	for _, n := range []string{model.PassthroughCluster, model.BlackHoleCluster, model.InboundPassthroughCluster, "inbound|9080||"} {
		if c := cs[n]; c == nil || c.TransportSocket != nil || c.TransportSocketMatches != nil {
			t.Errorf("%s: %v", n, c)
		}
	}
}

// DestinationRule TLS modes: ISTIO_MUTUAL is always mTLS (no matches), with the rule's SNI and SANs when given;
// DISABLE is plaintext; SIMPLE keeps the rule's own TLS. Subset-level TLS overrides the rule's.
func TestDestinationRuleIstioMutual(t *testing.T) {
	host := fqdn("svc", "default")
	sa := "spiffe://cluster.local/ns/default/sa/sa-svc"
	alpn := []string{"istio-peer-exchange", "istio"}
	cs := policyMesh(t, &networking.DestinationRule{
		TrafficPolicy: &networking.TrafficPolicy{Tls: &networking.ClientTLSSettings{Mode: networking.ClientTLSSettings_ISTIO_MUTUAL}},
		Subsets: []*networking.Subset{
			{Name: "custom", Labels: labels("version", "v1"), TrafficPolicy: &networking.TrafficPolicy{Tls: &networking.ClientTLSSettings{
				Mode: networking.ClientTLSSettings_ISTIO_MUTUAL, Sni: "my.sni", SubjectAltNames: []string{"spiffe://other/ns/x/sa/y"},
			}}},
			{Name: "plain", Labels: labels("version", "v1"), TrafficPolicy: &networking.TrafficPolicy{Tls: &networking.ClientTLSSettings{
				Mode: networking.ClientTLSSettings_DISABLE,
			}}},
			{Name: "simple", Labels: labels("version", "v1"), TrafficPolicy: &networking.TrafficPolicy{Tls: &networking.ClientTLSSettings{
				Mode: networking.ClientTLSSettings_SIMPLE, Sni: "svc.example.com",
			}}},
		},
	})
	def := cs["outbound|8080||"+host]
	if def.TransportSocketMatches != nil {
		t.Errorf("ISTIO_MUTUAL has socket matches %v", def.TransportSocketMatches)
	}
	assertProto(t, "ISTIO_MUTUAL", tlsContextOf(t, def), wantIstioMutual("outbound_.8080_._.svc.default.svc.cluster.local", alpn, sa))
	assertProto(t, "ISTIO_MUTUAL subset with sni and SANs", tlsContextOf(t, cs["outbound|8080|custom|"+host]),
		wantIstioMutual("my.sni", alpn, "spiffe://other/ns/x/sa/y"))
	if p := cs["outbound|8080|plain|"+host]; p.TransportSocket != nil || p.TransportSocketMatches != nil {
		t.Errorf("DISABLE subset: %v %v", p.TransportSocket, p.TransportSocketMatches)
	}
	simple := cs["outbound|8080|simple|"+host]
	if simple.TransportSocketMatches != nil || tlsContextOf(t, simple).GetSni() != "svc.example.com" ||
		tlsContextOf(t, simple).GetCommonTlsContext().GetTlsCertificateSdsSecretConfigs() != nil {
		t.Errorf("SIMPLE subset = %v", simple)
	}
}

// No auto-mTLS for services outside the mesh, with enableAutoMtls false, or when the service's namespace (or the
// mesh) PeerAuthentication is DISABLE; a namespace STRICT (or UNSET over a mesh DISABLE) keeps it.
func TestAutoMTLSDisabled(t *testing.T) {
	generateFor := func(t *testing.T, f *fixture) map[string]*cluster.Cluster {
		push := f.push()
		return decodeClusters(t, generate(t, NewCDS(nil), sidecar(t, push, "productpage-v1-1", "default", "10.0.0.1"), push))
	}
	plain := func(t *testing.T, c *cluster.Cluster) {
		t.Helper()
		if c.TransportSocket != nil || c.TransportSocketMatches != nil {
			t.Errorf("%s: transport socket %v, matches %v, want plaintext", c.Name, c.TransportSocket, c.TransportSocketMatches)
		}
	}
	auto := func(t *testing.T, c *cluster.Cluster) {
		t.Helper()
		if len(c.GetTransportSocketMatches()) != 2 {
			t.Errorf("%s: want auto-mTLS, matches %v", c.Name, c.TransportSocketMatches)
		}
	}
	rev := "outbound|9080||" + reviewsHost

	t.Run("mesh-external", func(t *testing.T) {
		f := bookinfo()
		f.services = append(f.services, &model.Service{Hostname: "api.example.com", Name: "api.example.com", Namespace: "default",
			Ports: []*model.Port{port("http", 80)}, MeshExternal: true, Resolution: model.DNSLB})
		cs := generateFor(t, f)
		plain(t, cs["outbound|80||api.example.com"])
		auto(t, cs[rev])
	})
	t.Run("enableAutoMtls-false", func(t *testing.T) {
		f := bookinfo()
		f.mesh = model.DefaultMeshConfig()
		f.mesh.EnableAutoMtls = wrapperspb.Bool(false)
		plain(t, generateFor(t, f)[rev])
	})
	pa := func(mode security.PeerAuthentication_MutualTLS_Mode) *security.PeerAuthentication {
		return &security.PeerAuthentication{Mtls: &security.PeerAuthentication_MutualTLS{Mode: mode}}
	}
	t.Run("namespace-DISABLE", func(t *testing.T) {
		f := bookinfo()
		f.addConfig(model.KindPeerAuthentication, "default", "default", pa(security.PeerAuthentication_MutualTLS_DISABLE))
		plain(t, generateFor(t, f)[rev])
	})
	t.Run("mesh-DISABLE", func(t *testing.T) {
		f := bookinfo()
		f.addConfig(model.KindPeerAuthentication, "istio-system", "default", pa(security.PeerAuthentication_MutualTLS_DISABLE))
		plain(t, generateFor(t, f)[rev])
	})
	t.Run("mesh-DISABLE-namespace-STRICT", func(t *testing.T) {
		f := bookinfo()
		f.addConfig(model.KindPeerAuthentication, "istio-system", "default", pa(security.PeerAuthentication_MutualTLS_DISABLE))
		f.addConfig(model.KindPeerAuthentication, "default", "default", pa(security.PeerAuthentication_MutualTLS_STRICT))
		auto(t, generateFor(t, f)[rev])
	})
	t.Run("workload-DISABLE-is-not-considered", func(t *testing.T) {
		// Like Istio: workload policies may cover only some of a service's pods; the client cannot know.
		f := bookinfo()
		p := pa(security.PeerAuthentication_MutualTLS_DISABLE)
		p.Selector = workloadSelector("app", "reviews")
		f.addConfig(model.KindPeerAuthentication, "default", "reviews", p)
		auto(t, generateFor(t, f)[rev])
	})
}

// ORIGINAL_DST clusters (headless services, LB PASSTHROUGH) cannot match endpoints: mTLS when every endpoint of the
// port runs a proxy, plaintext when one does not or there is none.
func TestAutoMTLSPassthroughClusters(t *testing.T) {
	f := &fixture{}
	all := f.addService("db", "default", "", port("tcp", 5432))
	all.Resolution = model.Passthrough
	f.addPod(all, "db-0", "10.5.0.1", labels("app", "db"))
	f.addPod(all, "db-1", "10.5.0.2", labels("app", "db"))
	mixed := f.addService("cache", "default", "", port("tcp", 6379))
	mixed.Resolution = model.Passthrough
	f.addPod(mixed, "cache-0", "10.5.1.1", labels("app", "cache"))
	f.addPod(mixed, "cache-1", "10.5.1.2", labels("app", "cache"), tlsMode(model.TLSModeDisabled))
	empty := f.addService("empty", "default", "", port("tcp", 7000))
	empty.Resolution = model.Passthrough
	lbPass := f.addService("lb", "default", "10.96.9.9", port("http", 8080))
	f.addPod(lbPass, "lb-0", "10.5.2.1", labels("app", "lb"))
	f.addConfig(model.KindDestinationRule, "default", "lb", &networking.DestinationRule{Host: "lb", TrafficPolicy: &networking.TrafficPolicy{
		LoadBalancer: &networking.LoadBalancerSettings{LbPolicy: &networking.LoadBalancerSettings_Simple{Simple: networking.LoadBalancerSettings_PASSTHROUGH}},
	}})
	push := f.push()
	cs := decodeClusters(t, generate(t, NewCDS(nil), sidecar(t, push, "client", "default", "10.9.9.9"), push))

	db := cs["outbound|5432||"+fqdn("db", "default")]
	if db.GetType() != cluster.Cluster_ORIGINAL_DST || db.TransportSocketMatches != nil {
		t.Fatalf("db = %v", db)
	}
	assertProto(t, "headless all in mesh", tlsContextOf(t, db), wantIstioMutual("outbound_.5432_._.db.default.svc.cluster.local",
		[]string{"istio-peer-exchange", "istio"}, "spiffe://cluster.local/ns/default/sa/sa-db"))
	lb := cs["outbound|8080||"+fqdn("lb", "default")]
	if lb.GetType() != cluster.Cluster_ORIGINAL_DST || lb.TransportSocket == nil || lb.TransportSocketMatches != nil {
		t.Errorf("LB PASSTHROUGH cluster = %v, want ORIGINAL_DST with mTLS", lb)
	}
	for _, n := range []string{"outbound|6379||" + fqdn("cache", "default"), "outbound|7000||" + fqdn("empty", "default")} {
		if c := cs[n]; c.TransportSocket != nil || c.TransportSocketMatches != nil {
			t.Errorf("%s: %v %v, want plaintext", n, c.TransportSocket, c.TransportSocketMatches)
		}
	}
}

func workloadSelector(kv ...string) *typev1beta1.WorkloadSelector {
	return &typev1beta1.WorkloadSelector{MatchLabels: labels(kv...)}
}

// The SANs come from the endpoints, so they are part of the cluster's cache key: an endpoint-only push that brings
// a new service account yields a cluster checking it, never the cached one; proxies still share clusters.
func TestAutoMTLSCacheFollowsServiceAccounts(t *testing.T) {
	f := bookinfo()
	cache := util.NewCache(10000)
	cds := NewCDS(cache)
	push := f.push()
	pp := sidecar(t, push, "productpage-v1-1", "default", "10.0.0.1")
	det := sidecar(t, push, "details-v1-1", "default", "10.0.1.1")
	name := "outbound|9080||" + reviewsHost
	a, b := byName(generate(t, cds, pp, push)), byName(generate(t, cds, det, push))
	if a[name] != b[name] {
		t.Error("two proxies with the same view do not share the auto-mTLS cluster")
	}

	// A new reviews pod runs as another service account; only endpoints changed.
	rev := f.services[3]
	f.addPod(rev, "reviews-v4-1", "10.0.3.9", labels("app", "reviews", "version", "v4"), func(e *model.Endpoint) { e.ServiceAccount = "sa-reviews-v4" })
	push2 := f.endpointPush(push, reviewsHost)
	if push2.ConfigSeq() != push.ConfigSeq() {
		t.Fatal("test premise: an endpoint push keeps the config sequence")
	}
	c := decodeClusters(t, generate(t, cds, sidecar(t, push2, "productpage-v1-1", "default", "10.0.0.1"), push2))[name]
	var sans []string
	for _, m := range socketMatches(t, c)[0].tls.GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext().GetMatchTypedSubjectAltNames() {
		sans = append(sans, m.GetMatcher().GetExact())
	}
	if want := []string{reviewsSA, "spiffe://cluster.local/ns/default/sa/sa-reviews-v4"}; !slices.Equal(sans, want) {
		t.Errorf("SANs after the new service account = %v, want %v", sans, want)
	}
}

// wantGRPCContext is the grpc-go (gRFC A29) client context: certificate provider instance "default" for the
// identity ("default") and the root ("ROOTCA"), SANs in match_subject_alt_names.
func wantGRPCContext(sans ...string) *tlsv3.UpstreamTlsContext {
	vc := &tlsv3.CertificateValidationContext{CaCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{
		InstanceName: "default", CertificateName: "ROOTCA",
	}}
	for _, s := range sans {
		vc.MatchSubjectAltNames = append(vc.MatchSubjectAltNames, &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: s}})
	}
	return &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{InstanceName: "default", CertificateName: "default"},
		ValidationContextType:          &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: vc},
	}}
}

// gRPC clusters are mTLS or not as a whole: when the client declares a mesh identity and every endpoint of the
// cluster (subset) runs a proxy, or when the DestinationRule says ISTIO_MUTUAL; never for a client that does not
// declare one, even as a mesh pod (its bootstrap has no certificate provider and grpc-go would reject the cluster).
func TestGRPCClusterMTLS(t *testing.T) {
	f := bookinfo() // reviews-v2-2 runs without a proxy
	push := f.push()
	cache := util.NewCache(1000)
	meshClient := grpcMeshClient(t, push, "productpage-v1-1", "default", "10.0.0.1") // its agent declares tlsMode istio
	bare := grpcClient(t, push, "productpage-v1-1", "default", "10.0.0.1")           // the same pod, hand-written bootstrap
	def, v1, v2 := "outbound|9080||"+reviewsHost, "outbound|9080|v1|"+reviewsHost, "outbound|9080|v2|"+reviewsHost

	cs := decodeClusters(t, generate(t, NewGRPCCDS(cache), meshClient, push, def, v1, v2))
	assertProto(t, "v1 (all endpoints in the mesh)", tlsContextOf(t, cs[v1]), wantGRPCContext(reviewsSA))
	for _, n := range []string{def, v2} {
		if cs[n].TransportSocket != nil {
			t.Errorf("%s has an endpoint without proxy but got %v", n, cs[n].TransportSocket)
		}
	}
	for _, c := range cs {
		if c.TransportSocketMatches != nil {
			t.Errorf("%s: grpc-go rejects transport_socket_matches", c.Name)
		}
	}
	for _, c := range decodeClusters(t, generate(t, NewGRPCCDS(cache), bare, push, def, v1, v2)) {
		if c.TransportSocket != nil {
			t.Errorf("client without mesh identity: %s got %v (cache shared with the mesh client?)", c.Name, c.TransportSocket)
		}
	}

	// ISTIO_MUTUAL in the rule: mTLS whatever the endpoints and the client, SANs from the rule.
	g := bookinfo()
	g.configs = nil
	g.addConfig(model.KindDestinationRule, "default", "reviews", &networking.DestinationRule{Host: "reviews",
		TrafficPolicy: &networking.TrafficPolicy{Tls: &networking.ClientTLSSettings{
			Mode: networking.ClientTLSSettings_ISTIO_MUTUAL, SubjectAltNames: []string{"spiffe://cluster.local/ns/default/sa/reviews"},
		}}})
	push = g.push()
	c := decodeClusters(t, generate(t, NewGRPCCDS(cache), grpcClient(t, push, "bare", "default", "10.99.0.1"), push, def))[def]
	assertProto(t, "gRPC ISTIO_MUTUAL", tlsContextOf(t, c), wantGRPCContext("spiffe://cluster.local/ns/default/sa/reviews"))

	// Namespace DISABLE: no auto-mTLS for gRPC either.
	h := bookinfo()
	h.addConfig(model.KindPeerAuthentication, "default", "default", &security.PeerAuthentication{
		Mtls: &security.PeerAuthentication_MutualTLS{Mode: security.PeerAuthentication_MutualTLS_DISABLE},
	})
	push = h.push()
	c = decodeClusters(t, generate(t, NewGRPCCDS(cache), grpcMeshClient(t, push, "productpage-v1-1", "default", "10.0.0.1"), push, v1))[v1]
	if c.TransportSocket != nil {
		t.Errorf("namespace DISABLE: %v", c.TransportSocket)
	}
}

// Istio's Bookinfo "all mTLS" DestinationRules (ISTIO_MUTUAL on every service, with subsets) give every Bookinfo
// cluster, subsets included, a fixed mesh mTLS socket with its own SNI.
func TestCorpusDestinationRuleAllMTLS(t *testing.T) {
	path := "../../../../shared/corpus/istio-samples/bookinfo/networking/destination-rule-all-mtls.yaml"
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("corpus (beside the checkout): %v", err)
	}
	f := bookinfo()
	f.configs = nil
	for _, doc := range strings.Split(string(raw), "\n---") {
		js, err := yaml.YAMLToJSON([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		var obj struct {
			Kind     string                `json:"kind"`
			Metadata struct{ Name string } `json:"metadata"`
			Spec     json.RawMessage       `json:"spec"`
		}
		if err := json.Unmarshal(js, &obj); err != nil || obj.Kind != "DestinationRule" {
			continue
		}
		dr := &networking.DestinationRule{}
		if err := protojson.Unmarshal(obj.Spec, dr); err != nil {
			t.Fatal(err)
		}
		f.addConfig(model.KindDestinationRule, "default", obj.Metadata.Name, dr)
	}
	if len(f.configs) < 4 {
		t.Fatalf("read %d DestinationRules from %s", len(f.configs), filepath.Base(path))
	}
	push := f.push()
	cs := decodeClusters(t, generate(t, NewCDS(nil), sidecar(t, push, "productpage-v1-1", "default", "10.0.0.1"), push))
	n := 0
	for name, c := range cs {
		_, subset, host, p, err := model.ParseSubsetKey(name)
		if err != nil || !strings.HasPrefix(name, "outbound|") {
			continue
		}
		n++
		if c.TransportSocketMatches != nil {
			t.Errorf("%s: ISTIO_MUTUAL uses socket matches", name)
		}
		ctx := tlsContextOf(t, c)
		if want := "outbound_." + strconv.Itoa(p) + "_." + subset + "_." + host; ctx.GetSni() != want {
			t.Errorf("%s: SNI %q, want %q", name, ctx.GetSni(), want)
		}
		if got := ctx.GetCommonTlsContext().GetTlsCertificateSdsSecretConfigs()[0].GetName(); got != "default" {
			t.Errorf("%s: certificate secret %q", name, got)
		}
	}
	if n < 8 {
		t.Errorf("only %d outbound clusters", n)
	}
}

// setTLSMode replaces the endpoints at address with copies in another TLS mode (published endpoints are immutable).
func (f *fixture) setTLSMode(address, mode string) {
	eps := make([]*model.Endpoint, len(f.endpoints))
	for i, e := range f.endpoints {
		if e.Address == address {
			c := *e
			c.TLSMode = mode
			e = &c
		}
		eps[i] = e
	}
	f.endpoints = eps
}

// Decisions that read the endpoints' TLS modes (ORIGINAL_DST sidecar clusters, gRPC clusters) follow an
// endpoint-only push through a shared cache: an endpoint losing its proxy turns the cluster plaintext.
func TestMeshTLSCacheFollowsEndpointTLSModes(t *testing.T) {
	f := bookinfo()
	db := f.addService("db", "default", "", port("tcp", 5432))
	db.Resolution = model.Passthrough
	f.addPod(db, "db-0", "10.5.0.1", labels("app", "db"))
	cache := util.NewCache(1000)
	push := f.push()
	dbName, v1 := "outbound|5432||"+fqdn("db", "default"), "outbound|9080|v1|"+reviewsHost
	if c := decodeClusters(t, generate(t, NewCDS(cache), sidecar(t, push, "productpage-v1-1", "default", "10.0.0.1"), push))[dbName]; c.TransportSocket == nil {
		t.Fatal("headless service with a mesh endpoint: no mTLS")
	}
	if c := decodeClusters(t, generate(t, NewGRPCCDS(cache), grpcMeshClient(t, push, "productpage-v1-1", "default", "10.0.0.1"), push, v1))[v1]; c.TransportSocket == nil {
		t.Fatal("gRPC v1: no mTLS")
	}

	f.setTLSMode("10.5.0.1", model.TLSModeDisabled)
	f.setTLSMode("10.0.3.1", model.TLSModeDisabled) // reviews-v1-1
	push2 := f.endpointPush(push, fqdn("db", "default"), reviewsHost)
	if c := decodeClusters(t, generate(t, NewCDS(cache), sidecar(t, push2, "productpage-v1-1", "default", "10.0.0.1"), push2))[dbName]; c.TransportSocket != nil {
		t.Error("headless service whose endpoint lost its proxy still gets mTLS (stale cache)")
	}
	if c := decodeClusters(t, generate(t, NewGRPCCDS(cache), grpcMeshClient(t, push2, "productpage-v1-1", "default", "10.0.0.1"), push2, v1))[v1]; c.TransportSocket != nil {
		t.Error("gRPC v1 whose endpoint lost its proxy still gets mTLS (stale cache)")
	}
}

// originalDst (used for cache keys) agrees with the cluster type the builder produces, whatever level of the
// DestinationRule sets the load balancer.
func TestOriginalDstAgreesWithBuilder(t *testing.T) {
	lb := func(s networking.LoadBalancerSettings_SimpleLB) *networking.LoadBalancerSettings {
		return &networking.LoadBalancerSettings{LbPolicy: &networking.LoadBalancerSettings_Simple{Simple: s}}
	}
	pass, rr := lb(networking.LoadBalancerSettings_PASSTHROUGH), lb(networking.LoadBalancerSettings_ROUND_ROBIN)
	portLevel := func(l *networking.LoadBalancerSettings) []*networking.TrafficPolicy_PortTrafficPolicy {
		return []*networking.TrafficPolicy_PortTrafficPolicy{{Port: &networking.PortSelector{Number: 8080}, LoadBalancer: l}}
	}
	rules := []*networking.DestinationRule{
		{},
		{TrafficPolicy: &networking.TrafficPolicy{LoadBalancer: pass}},
		{TrafficPolicy: &networking.TrafficPolicy{LoadBalancer: pass, PortLevelSettings: portLevel(rr)}},
		{TrafficPolicy: &networking.TrafficPolicy{PortLevelSettings: portLevel(pass)}},
		{TrafficPolicy: &networking.TrafficPolicy{LoadBalancer: pass}, Subsets: []*networking.Subset{
			{Name: "s", Labels: labels("version", "v1"), TrafficPolicy: &networking.TrafficPolicy{LoadBalancer: rr}}}},
		{Subsets: []*networking.Subset{{Name: "s", Labels: labels("version", "v1"), TrafficPolicy: &networking.TrafficPolicy{LoadBalancer: pass}}}},
		{TrafficPolicy: &networking.TrafficPolicy{LoadBalancer: pass}, Subsets: []*networking.Subset{
			{Name: "s", Labels: labels("version", "v1"), TrafficPolicy: &networking.TrafficPolicy{PortLevelSettings: portLevel(nil)}}}},
	}
	for i, spec := range rules {
		f := &fixture{}
		svc := f.addService("svc", "default", "10.96.1.1", port("http", 8080), port("http-admin", 9090))
		spec.Host = "svc"
		f.addConfig(model.KindDestinationRule, "default", "svc", spec)
		push := f.push()
		dr := push.DestinationRule("default", svc.Hostname)
		for _, subset := range subsetNames(dr) {
			for _, p := range svc.Ports {
				built := buildOutboundCluster(push, svc, p, subset, dr).GetType() == cluster.Cluster_ORIGINAL_DST
				if got := originalDst(svc, dr, subset, p.Port); got != built {
					t.Errorf("rule %d subset %q port %d: originalDst %v, builder ORIGINAL_DST %v", i, subset, p.Port, got, built)
				}
			}
		}
	}
}

// grpcMeshClient is a proxyless gRPC client whose agent-written bootstrap declares the pod's tlsMode istio label.
func grpcMeshClient(t testing.TB, push *model.PushContext, pod, ns, ip string) *model.Proxy {
	t.Helper()
	meta, err := structpb.NewStruct(map[string]any{"GENERATOR": model.GeneratorGRPC,
		"LABELS": map[string]any{"security.istio.io/tlsMode": "istio"}})
	if err != nil {
		t.Fatal(err)
	}
	return connect(t, push, "sidecar~"+ip+"~"+pod+"."+ns+"~"+ns+".svc.cluster.local", meta)
}
