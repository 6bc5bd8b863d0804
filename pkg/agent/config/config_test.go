package config

import (
	"errors"
	"io/fs"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) (func(string) string, []string) {
	var environ []string
	for k, v := range m {
		environ = append(environ, k+"="+v)
	}
	return func(k string) string { return m[k] }, environ
}

func productpageEnv() map[string]string {
	return map[string]string{
		"POD_NAME":                     "productpage-v1-6b746f74dc-9stvs",
		"POD_NAMESPACE":                "default",
		"INSTANCE_IP":                  "10.244.0.12",
		"SERVICE_ACCOUNT":              "bookinfo-productpage",
		"HOST_IP":                      "172.18.0.2",
		"CA_ADDR":                      "istiod.istio-system.svc:15012",
		"PILOT_CERT_PROVIDER":          "istiod",
		"JWT_POLICY":                   "third-party-jwt",
		"PROXY_CONFIG":                 `{"discoveryAddress":"meshd.mesh-system.svc:15012","drainDuration":"30s"}`,
		"ISTIO_META_WORKLOAD_NAME":     "productpage-v1",
		"ISTIO_META_CLUSTER_ID":        "Kubernetes",
		"ISTIO_META_MESH_ID":           "cluster.local",
		"ISTIO_META_INTERCEPTION_MODE": "REDIRECT",
		"ISTIO_META_APP_CONTAINERS":    "productpage",
		"UNRELATED":                    "x",
	}
}

var podFiles = map[string]string{
	DefaultPodLabelsFile: "app=\"productpage\"\npod-template-hash=\"6b746f74dc\"\nversion=\"v1\"\n",
	DefaultPodAnnotsFile: "kubectl.kubernetes.io/default-container=\"productpage\"\nsidecar.istio.io/status=\"{\\\"containers\\\":[\\\"istio-proxy\\\"]}\"\n",
}

func readFiles(files map[string]string) func(string) ([]byte, error) {
	return func(p string) ([]byte, error) {
		if s, ok := files[p]; ok {
			return []byte(s), nil
		}
		return nil, fs.ErrNotExist
	}
}

var sidecarArgv = []string{"proxy", "sidecar", "--domain", "default.svc.cluster.local", "--proxyLogLevel=warning",
	"--proxyComponentLogLevel=misc:error", "--log_output_level=default:info", "--concurrency", "2"}

func TestSidecar(t *testing.T) {
	getenv, environ := env(productpageEnv())
	c, err := FromEnv(getenv, Args{Argv: sidecarArgv, Environ: environ, ReadFile: readFiles(podFiles),
		NotExist: func(err error) bool { return errors.Is(err, fs.ErrNotExist) }})
	if err != nil {
		t.Fatal(err)
	}
	if want := "sidecar~10.244.0.12~productpage-v1-6b746f74dc-9stvs.default~default.svc.cluster.local"; c.NodeID != want {
		t.Errorf("NodeID = %q, want %q", c.NodeID, want)
	}
	if c.ProxyConfig.DiscoveryAddress != "meshd.mesh-system.svc:15012" {
		t.Errorf("discoveryAddress = %q", c.ProxyConfig.DiscoveryAddress)
	}
	// Fields absent from PROXY_CONFIG keep the mesh defaults.
	if c.ProxyConfig.ProxyAdminPort != 15000 || c.ProxyConfig.StatusPort != 15020 ||
		c.ProxyConfig.BinaryPath != "/usr/local/bin/envoy" || c.ProxyConfig.ConfigPath != "./etc/istio/proxy" {
		t.Errorf("defaults not kept: %v", c.ProxyConfig)
	}
	if c.DrainDurationSeconds() != 30 {
		t.Errorf("drain = %d, want 30", c.DrainDurationSeconds())
	}
	if c.Concurrency != 2 || c.ProxyLogLevel != "warning" || c.ProxyComponentLogLevel != "misc:error" {
		t.Errorf("args: concurrency %d level %q component %q", c.Concurrency, c.ProxyLogLevel, c.ProxyComponentLogLevel)
	}
	if c.Metadata["WORKLOAD_NAME"] != "productpage-v1" || c.Metadata["APP_CONTAINERS"] != "productpage" || len(c.Metadata) != 5 {
		t.Errorf("metadata = %v", c.Metadata)
	}
	if c.Labels["app"] != "productpage" || c.Labels["version"] != "v1" || len(c.Labels) != 3 {
		t.Errorf("labels = %v", c.Labels)
	}
	if got := c.Annotations["sidecar.istio.io/status"]; got != `{"containers":["istio-proxy"]}` {
		t.Errorf("annotation = %q", got)
	}
	if !c.DeltaXDS || c.Proxyless() || c.TrustDomain != "cluster.local" || c.ClusterID != "Kubernetes" {
		t.Errorf("delta %v proxyless %v td %q cluster %q", c.DeltaXDS, c.Proxyless(), c.TrustDomain, c.ClusterID)
	}
	if c.BootstrapPath() != "etc/istio/proxy/envoy-rev.json" || c.GRPCBootstrapPath() != "etc/istio/proxy/grpc-bootstrap.json" {
		t.Errorf("paths %q %q", c.BootstrapPath(), c.GRPCBootstrapPath())
	}
}

func TestRouterDefaults(t *testing.T) {
	getenv, environ := env(map[string]string{"POD_NAME": "istio-ingressgateway-5d9f7c7f4-abcde", "POD_NAMESPACE": "istio-system",
		"ISTIO_DELTA_XDS": "false"})
	c, err := FromEnv(getenv, Args{Argv: []string{"proxy", "router"}, Environ: environ})
	if err != nil {
		t.Fatal(err)
	}
	if want := "router~127.0.0.1~istio-ingressgateway-5d9f7c7f4-abcde.istio-system~istio-system.svc.cluster.local"; c.NodeID != want {
		t.Errorf("NodeID = %q, want %q", c.NodeID, want)
	}
	if c.DeltaXDS {
		t.Error("ISTIO_DELTA_XDS=false should select SotW")
	}
	if c.Concurrency != DefaultConcurrency || c.DrainDurationSeconds() != 45 || c.ProxyLogLevel != "warning" {
		t.Errorf("defaults: concurrency %d drain %d level %q", c.Concurrency, c.DrainDurationSeconds(), c.ProxyLogLevel)
	}
	if c.ProxyConfig.DiscoveryAddress != DefaultDiscoveryAddress || c.OutputCerts != DefaultOutputCerts {
		t.Errorf("defaults: %q %q", c.ProxyConfig.DiscoveryAddress, c.OutputCerts)
	}
	if len(c.Labels) != 0 || len(c.Metadata) != 0 {
		t.Errorf("labels %v metadata %v", c.Labels, c.Metadata)
	}
}

func TestConcurrencyPrecedence(t *testing.T) {
	m := productpageEnv()
	m["PROXY_CONFIG"] = `{"concurrency": 4}`
	getenv, environ := env(m)
	c, err := FromEnv(getenv, Args{Argv: []string{"proxy", "sidecar"}, Environ: environ})
	if err != nil || c.Concurrency != 4 {
		t.Fatalf("from PROXY_CONFIG: %v %v", c, err)
	}
	c, err = FromEnv(getenv, Args{Argv: []string{"proxy", "sidecar", "--concurrency=0"}, Environ: environ})
	if err != nil || c.Concurrency != 0 {
		t.Fatalf("flag should win: %v %v", c.Concurrency, err)
	}
}

func TestProxyMetadata(t *testing.T) {
	m := productpageEnv()
	m["PROXY_CONFIG"] = `{"proxyMetadata":{"ISTIO_META_DNS_CAPTURE":"true","ISTIO_META_WORKLOAD_NAME":"other","OTHER":"x"}}`
	getenv, environ := env(m)
	c, err := FromEnv(getenv, Args{Argv: sidecarArgv, Environ: environ})
	if err != nil {
		t.Fatal(err)
	}
	if c.Metadata["DNS_CAPTURE"] != "true" || c.Metadata["WORKLOAD_NAME"] != "productpage-v1" {
		t.Errorf("metadata = %v", c.Metadata)
	}
	if _, ok := c.Metadata["OTHER"]; ok {
		t.Error("non-ISTIO_META proxyMetadata leaked into node metadata")
	}
}

func TestErrors(t *testing.T) {
	cases := []struct {
		name   string
		edit   func(map[string]string)
		argv   []string
		expect string
	}{
		{"no namespace", func(m map[string]string) { delete(m, "POD_NAMESPACE") }, sidecarArgv, "POD_NAMESPACE"},
		{"no pod name", func(m map[string]string) { delete(m, "POD_NAME") }, sidecarArgv, "POD_NAME"},
		{"no instance ip", func(m map[string]string) { delete(m, "INSTANCE_IP") }, sidecarArgv, "INSTANCE_IP"},
		{"bad instance ip", func(m map[string]string) { m["INSTANCE_IP"] = "nope" }, sidecarArgv, "INSTANCE_IP"},
		{"bad proxy config", func(m map[string]string) { m["PROXY_CONFIG"] = `{"bogus":1}` }, sidecarArgv, "PROXY_CONFIG"},
		{"bad admin port", func(m map[string]string) { m["PROXY_CONFIG"] = `{"proxyAdminPort":70000}` }, sidecarArgv, "proxyAdminPort"},
		{"bad discovery", func(m map[string]string) { m["PROXY_CONFIG"] = `{"discoveryAddress":"istiod"}` }, sidecarArgv, "discoveryAddress"},
		{"bad delta", func(m map[string]string) { m["ISTIO_DELTA_XDS"] = "maybe" }, sidecarArgv, "ISTIO_DELTA_XDS"},
		{"no proxy", nil, []string{"sidecar"}, "usage"},
		{"bad type", nil, []string{"proxy", "waypoint"}, "waypoint"},
		{"unknown flag", nil, []string{"proxy", "sidecar", "--frobnicate"}, "frobnicate"},
		{"bad concurrency", nil, []string{"proxy", "sidecar", "--concurrency", "x"}, "concurrency"},
		{"negative concurrency", nil, []string{"proxy", "sidecar", "--concurrency=-1"}, "concurrency"},
		{"extra arg", nil, []string{"proxy", "sidecar", "extra"}, "extra"},
	}
	for _, tc := range cases {
		m := productpageEnv()
		if tc.edit != nil {
			tc.edit(m)
		}
		getenv, environ := env(m)
		_, err := FromEnv(getenv, Args{Argv: tc.argv, Environ: environ})
		if err == nil || !strings.Contains(err.Error(), tc.expect) {
			t.Errorf("%s: err = %v, want mention of %q", tc.name, err, tc.expect)
		}
	}
}

func TestRouterWithoutInstanceIPButSidecarNeedsIt(t *testing.T) {
	getenv, environ := env(map[string]string{"POD_NAME": "p", "POD_NAMESPACE": "ns"})
	if _, err := FromEnv(getenv, Args{Argv: []string{"proxy", "router"}, Environ: environ}); err != nil {
		t.Errorf("router: %v", err)
	}
	if _, err := FromEnv(getenv, Args{Argv: []string{"proxy", "sidecar"}, Environ: environ}); err == nil {
		t.Error("sidecar without INSTANCE_IP accepted")
	}
}

func TestPodInfoErrors(t *testing.T) {
	getenv, environ := env(productpageEnv())
	// A missing file is skipped only when NotExist says so.
	_, err := FromEnv(getenv, Args{Argv: sidecarArgv, Environ: environ, ReadFile: readFiles(nil)})
	if err == nil || !strings.Contains(err.Error(), DefaultPodLabelsFile) {
		t.Errorf("missing file without NotExist: %v", err)
	}
	c, err := FromEnv(getenv, Args{Argv: sidecarArgv, Environ: environ, ReadFile: readFiles(nil),
		NotExist: func(err error) bool { return errors.Is(err, fs.ErrNotExist) }})
	if err != nil || len(c.Labels) != 0 || len(c.Annotations) != 0 {
		t.Errorf("missing files: %v %v", c, err)
	}
	_, err = FromEnv(getenv, Args{Argv: sidecarArgv, Environ: environ,
		ReadFile: readFiles(map[string]string{DefaultPodLabelsFile: "app=productpage\n", DefaultPodAnnotsFile: ""})})
	if err == nil || !strings.Contains(err.Error(), "quoted") {
		t.Errorf("malformed labels: %v", err)
	}
}

func TestParseDownwardAPI(t *testing.T) {
	got, err := ParseDownwardAPI([]byte("a=\"1\"\r\n\nb.example.com/c=\"x=y \\\"q\\\"\\nline2\"\nempty=\"\""))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"a": "1", "b.example.com/c": "x=y \"q\"\nline2", "empty": ""}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	for _, bad := range []string{"novalue", "=\"x\"", "k='x'", "k=\"unterminated", "k=x\"y\""} {
		if _, err := ParseDownwardAPI([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestDefaultProxyConfigIsFresh(t *testing.T) {
	a := DefaultProxyConfig()
	a.DrainDuration.Seconds = 1
	if DefaultProxyConfig().DrainDuration.AsDuration() != 45*time.Second {
		t.Error("defaults shared between calls")
	}
}
