package bootstrap

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/meshd/meshd/pkg/agent/config"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func mustConfig(t *testing.T, vars map[string]string, argv []string, files map[string]string) *config.Config {
	t.Helper()
	var environ []string
	for k, v := range vars {
		environ = append(environ, k+"="+v)
	}
	c, err := config.FromEnv(func(k string) string { return vars[k] }, config.Args{
		Argv:    argv,
		Environ: environ,
		ReadFile: func(p string) ([]byte, error) {
			if s, ok := files[p]; ok {
				return []byte(s), nil
			}
			return nil, fs.ErrNotExist
		},
		NotExist: func(err error) bool { return errors.Is(err, fs.ErrNotExist) },
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// productpage is a Bookinfo productpage-like sidecar, with Zipkin tracing configured.
func productpage(t *testing.T) *config.Config {
	return mustConfig(t, map[string]string{
		"POD_NAME":                     "productpage-v1-6b746f74dc-9stvs",
		"POD_NAMESPACE":                "default",
		"INSTANCE_IP":                  "10.244.0.12",
		"SERVICE_ACCOUNT":              "bookinfo-productpage",
		"HOST_IP":                      "172.18.0.2",
		"CA_ADDR":                      "istiod.istio-system.svc:15012",
		"PILOT_CERT_PROVIDER":          "istiod",
		"JWT_POLICY":                   "third-party-jwt",
		"PROXY_CONFIG":                 `{"tracing":{"zipkin":{"address":"zipkin.istio-system:9411"}}}`,
		"ISTIO_META_WORKLOAD_NAME":     "productpage-v1",
		"ISTIO_META_OWNER":             "kubernetes://apis/apps/v1/namespaces/default/deployments/productpage-v1",
		"ISTIO_META_APP_CONTAINERS":    "productpage",
		"ISTIO_META_CLUSTER_ID":        "Kubernetes",
		"ISTIO_META_MESH_ID":           "cluster.local",
		"ISTIO_META_INTERCEPTION_MODE": "REDIRECT",
	}, []string{"proxy", "sidecar", "--domain", "default.svc.cluster.local", "--proxyLogLevel=warning",
		"--proxyComponentLogLevel=misc:error", "--log_output_level=default:info", "--concurrency", "2"},
		map[string]string{
			"./etc/istio/pod/labels": "app=\"productpage\"\npod-template-hash=\"6b746f74dc\"\n" +
				"security.istio.io/tlsMode=\"istio\"\nservice.istio.io/canonical-name=\"productpage\"\n" +
				"service.istio.io/canonical-revision=\"v1\"\nversion=\"v1\"\n",
			"./etc/istio/pod/annotations": "kubectl.kubernetes.io/default-container=\"productpage\"\n" +
				"prometheus.io/path=\"/stats/prometheus\"\nprometheus.io/port=\"15020\"\nprometheus.io/scrape=\"true\"\n",
		})
}

// ingress is an ingress gateway (router) using state-of-the-world ADS and no tracing.
func ingress(t *testing.T) *config.Config {
	return mustConfig(t, map[string]string{
		"POD_NAME":                 "istio-ingressgateway-7f8d9c6b5-x2k4p",
		"POD_NAMESPACE":            "istio-system",
		"INSTANCE_IP":              "10.244.0.7",
		"SERVICE_ACCOUNT":          "istio-ingressgateway-service-account",
		"ISTIO_DELTA_XDS":          "false",
		"PROXY_CONFIG":             `{"drainDuration":"20s","proxyAdminPort":15000}`,
		"ISTIO_META_WORKLOAD_NAME": "istio-ingressgateway",
		"ISTIO_META_ROUTER_MODE":   "sni-dnat",
	}, []string{"proxy", "router", "--domain", "istio-system.svc.cluster.local", "--proxyLogLevel=info"},
		map[string]string{"./etc/istio/pod/labels": "istio=\"ingressgateway\"\n"})
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the generated output (run with -update and review the diff)", path)
	}
}

// parse round-trips the JSON (as Envoy would read it) into a Bootstrap and validates it.
func parse(t *testing.T, data []byte) *bootstrapv3.Bootstrap {
	t.Helper()
	b := &bootstrapv3.Bootstrap{}
	if err := protojson.Unmarshal(data, b); err != nil {
		t.Fatalf("protojson: %v", err)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatalf("ValidateAll: %v", err)
	}
	return b
}

func TestEnvoyGolden(t *testing.T) {
	for _, tc := range []struct {
		file string
		cfg  func(*testing.T) *config.Config
	}{{"sidecar.json", productpage}, {"router.json", ingress}} {
		t.Run(tc.file, func(t *testing.T) {
			cfg := tc.cfg(t)
			data, err := Envoy(cfg)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tc.file, data)
			b := parse(t, data)
			want, err := EnvoyProto(cfg)
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(b, want) {
				t.Error("JSON does not round-trip to the generated Bootstrap")
			}
			again, _ := Envoy(cfg)
			if !bytes.Equal(data, again) {
				t.Error("output is not deterministic")
			}
		})
	}
}

func clusterNames(b *bootstrapv3.Bootstrap) []string {
	var names []string
	for _, c := range b.GetStaticResources().GetClusters() {
		names = append(names, c.GetName())
	}
	return names
}

func TestSidecarContent(t *testing.T) {
	data, err := Envoy(productpage(t))
	if err != nil {
		t.Fatal(err)
	}
	b := parse(t, data)
	n := b.GetNode()
	if n.GetId() != "sidecar~10.244.0.12~productpage-v1-6b746f74dc-9stvs.default~default.svc.cluster.local" {
		t.Errorf("id %q", n.GetId())
	}
	if n.GetCluster() != "productpage.default" {
		t.Errorf("cluster %q", n.GetCluster())
	}
	md := n.GetMetadata().AsMap()
	for k, v := range map[string]string{
		"NAMESPACE": "default", "INSTANCE_IPS": "10.244.0.12", "SERVICE_ACCOUNT": "bookinfo-productpage",
		"MESH_ID": "cluster.local", "CLUSTER_ID": "Kubernetes", "ISTIO_VERSION": "meshd",
		"ENVOY_STATUS_PORT": "15021", "ENVOY_PROMETHEUS_PORT": "15090", "WORKLOAD_NAME": "productpage-v1",
		"INTERCEPTION_MODE": "REDIRECT", "APP_CONTAINERS": "productpage",
	} {
		if md[k] != v {
			t.Errorf("metadata %s = %v, want %q", k, md[k], v)
		}
	}
	if l, _ := md["LABELS"].(map[string]any); l["app"] != "productpage" || l["version"] != "v1" {
		t.Errorf("LABELS = %v", md["LABELS"])
	}
	if a, _ := md["ANNOTATIONS"].(map[string]any); a["prometheus.io/port"] != "15020" {
		t.Errorf("ANNOTATIONS = %v", md["ANNOTATIONS"])
	}
	pc, _ := md["PROXY_CONFIG"].(map[string]any)
	if pc["discoveryAddress"] != "istiod.istio-system.svc:15012" || pc["statusPort"] != float64(15020) {
		t.Errorf("PROXY_CONFIG = %v", pc)
	}
	if got := b.GetAdmin().GetAddress().GetSocketAddress(); got.GetAddress() != "127.0.0.1" || got.GetPortValue() != 15000 {
		t.Errorf("admin %v", got)
	}
	ads := b.GetDynamicResources().GetAdsConfig()
	if ads.GetApiType() != corev3.ApiConfigSource_DELTA_GRPC || ads.GetTransportApiVersion() != corev3.ApiVersion_V3 ||
		ads.GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName() != "xds-grpc" {
		t.Errorf("ads %v", ads)
	}
	for _, cs := range []*corev3.ConfigSource{b.GetDynamicResources().GetCdsConfig(), b.GetDynamicResources().GetLdsConfig()} {
		if cs.GetAds() == nil || cs.GetResourceApiVersion() != corev3.ApiVersion_V3 {
			t.Errorf("config source %v", cs)
		}
	}
	if got := clusterNames(b); !slices.Equal(got, []string{"xds-grpc", "sds-grpc", "agent", "prometheus_stats", "zipkin"}) {
		t.Errorf("clusters %v", got)
	}
	cl := b.GetStaticResources().GetClusters()
	if cl[0].GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetPipe().GetPath() != "./etc/istio/proxy/XDS" {
		t.Error("xds-grpc does not point at the XDS socket")
	}
	if cl[1].GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetPipe().GetPath() != "./var/run/secrets/workload-spiffe-uds/socket" {
		t.Error("sds-grpc does not point at the SDS socket")
	}
	if cl[2].GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetPortValue() != 15020 {
		t.Error("agent cluster not on 15020")
	}
	if _, ok := cl[0].GetTypedExtensionProtocolOptions()[httpProtocolOptionsKey]; !ok {
		t.Error("xds-grpc lacks HTTP/2 protocol options")
	}

	routes := map[uint32]string{}
	for _, l := range b.GetStaticResources().GetListeners() {
		hcm := &hcmv3.HttpConnectionManager{}
		if err := l.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(hcm); err != nil {
			t.Fatal(err)
		}
		r := hcm.GetRouteConfig().GetVirtualHosts()[0].GetRoutes()[0]
		routes[l.GetAddress().GetSocketAddress().GetPortValue()] = r.GetMatch().GetPrefix() + " -> " + r.GetRoute().GetCluster()
		if hcm.GetHttpFilters()[0].GetName() != "envoy.filters.http.router" {
			t.Errorf("listener %s lacks the router filter", l.GetName())
		}
	}
	if routes[15090] != "/stats/prometheus -> prometheus_stats" || routes[15021] != "/healthz/ready -> agent" {
		t.Errorf("listener routes %v", routes)
	}
	var tags []string
	for _, s := range b.GetStatsConfig().GetStatsTags() {
		tags = append(tags, s.GetTagName())
	}
	if !slices.Contains(tags, "cluster_name") || !slices.Contains(tags, "response_code") {
		t.Errorf("stats tags %v", tags)
	}
}

func TestRouterContent(t *testing.T) {
	cfg := ingress(t)
	data, err := Envoy(cfg)
	if err != nil {
		t.Fatal(err)
	}
	b := parse(t, data)
	if b.GetNode().GetId() != "router~10.244.0.7~istio-ingressgateway-7f8d9c6b5-x2k4p.istio-system~istio-system.svc.cluster.local" {
		t.Errorf("id %q", b.GetNode().GetId())
	}
	if b.GetNode().GetCluster() != "istio-ingressgateway.istio-system" {
		t.Errorf("cluster %q", b.GetNode().GetCluster())
	}
	if b.GetDynamicResources().GetAdsConfig().GetApiType() != corev3.ApiConfigSource_GRPC {
		t.Error("SotW not selected")
	}
	if slices.Contains(clusterNames(b), "zipkin") {
		t.Error("tracing cluster present without tracing configured")
	}
	if _, ok := b.GetNode().GetMetadata().AsMap()["ANNOTATIONS"]; ok {
		t.Error("empty ANNOTATIONS emitted")
	}
}

func TestServiceCluster(t *testing.T) {
	for _, tc := range []struct {
		labels map[string]string
		meta   map[string]string
		pod    string
		want   string
	}{
		{map[string]string{"app": "reviews"}, map[string]string{"WORKLOAD_NAME": "reviews-v2"}, "reviews-v2-5b64f47978-tqmz7", "reviews.ns"},
		{nil, map[string]string{"WORKLOAD_NAME": "reviews-v2"}, "reviews-v2-5b64f47978-tqmz7", "reviews-v2.ns"},
		{nil, nil, "reviews-v2-5b64f47978-tqmz7", "reviews-v2.ns"},
		{nil, nil, "web-0", "web-0.ns"},
		{nil, nil, "standalone", "standalone.ns"},
	} {
		cfg := &config.Config{PodName: tc.pod, PodNamespace: "ns", Labels: tc.labels, Metadata: tc.meta}
		if got := ServiceCluster(cfg); got != tc.want {
			t.Errorf("%v %v %s: got %q, want %q", tc.labels, tc.meta, tc.pod, got, tc.want)
		}
	}
}

func TestEnvoyErrors(t *testing.T) {
	if _, err := Envoy(&config.Config{}); err == nil {
		t.Error("config without ProxyConfig accepted")
	}
	cfg := productpage(t)
	cfg.ProxyConfig.Tracing.GetZipkin().Address = "zipkin-without-port"
	if _, err := Envoy(cfg); err == nil || !strings.Contains(err.Error(), "tracing") {
		t.Errorf("bad zipkin address: %v", err)
	}
	cfg = productpage(t)
	cfg.NodeID = ""
	if _, err := Envoy(cfg); err == nil {
		t.Error("bootstrap with empty node id passed validation")
	}
}

func TestEnvoyArgs(t *testing.T) {
	got := EnvoyArgs(productpage(t))
	want := []string{"-c", "etc/istio/proxy/envoy-rev.json", "--drain-time-s", "45", "--drain-strategy", "immediate",
		"--local-address-ip-version", "v4", "--file-flush-interval-msec", "1000", "--disable-hot-restart",
		"--allow-unknown-static-fields", "--log-format", LogFormat, "-l", "warning", "--component-log-level", "misc:error",
		"--concurrency", "2"}
	if !slices.Equal(got, want) {
		t.Errorf("args\n got %q\nwant %q", got, want)
	}
	r := ingress(t)
	r.Concurrency = 0
	r.InstanceIP = "fd00::7"
	got = EnvoyArgs(r)
	if slices.Contains(got, "--concurrency") || got[3] != "20" || got[7] != "v6" || got[len(got)-3] != "info" {
		t.Errorf("router args %q", got)
	}
}

// The golden files stay readable JSON (stable key order, two-space indent).
func TestGoldenIsPlainJSON(t *testing.T) {
	for _, f := range []string{"sidecar.json", "router.json", "grpc.json"} {
		data, err := os.ReadFile(filepath.Join("testdata", f))
		if err != nil {
			t.Fatal(err)
		}
		var v any
		if err := json.Unmarshal(data, &v); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

// The tag regexes use only constructs common to RE2 and Envoy's ECMAScript regexes, so Go can check what they
// extract: Envoy removes the first capture group from the stat name and uses the second as the tag value.
func TestStatsTags(t *testing.T) {
	re := map[string]*regexp.Regexp{}
	for _, s := range statsTags() {
		re[s.GetTagName()] = regexp.MustCompile(s.GetRegex())
	}
	for _, tc := range []struct{ tag, stat, value, rest string }{
		{"cluster_name", "cluster.outbound|9080||reviews.default.svc.cluster.local.upstream_rq_total",
			"outbound|9080||reviews.default.svc.cluster.local", "cluster.upstream_rq_total"},
		{"cluster_name", "cluster.xds-grpc.upstream_cx_total", "xds-grpc", "cluster.upstream_cx_total"},
		{"tcp_prefix", "tcp.inbound_9080.downstream_cx_total", "inbound_9080", "tcp.downstream_cx_total"},
		{"response_code", "cluster.x.upstream_rq_503", "503", "cluster.x.upstream_rq"},
		{"response_code_class", "http.stats.downstream_rq_2xx", "2xx", "http.stats.downstream_rq"},
	} {
		m := re[tc.tag].FindStringSubmatchIndex(tc.stat)
		if m == nil {
			t.Errorf("%s: no match in %s", tc.tag, tc.stat)
			continue
		}
		value := tc.stat[m[4]:m[5]]
		rest := tc.stat[:m[2]] + tc.stat[m[3]:]
		if value != tc.value || rest != tc.rest {
			t.Errorf("%s on %s: value %q rest %q, want %q %q", tc.tag, tc.stat, value, rest, tc.value, tc.rest)
		}
	}
	if re["response_code"].MatchString("cluster.x.upstream_rq_5xx") || re["response_code_class"].MatchString("cluster.x.upstream_rq_503") {
		t.Error("response code tags overlap")
	}
}
