package bootstrap

import (
	"encoding/json"
	"testing"

	"google.golang.org/grpc/xds"

	"github.com/meshd/meshd/pkg/agent/config"
)

func proxyless(t *testing.T) *config.Config {
	return mustConfig(t, map[string]string{
		"POD_NAME":                 "echo-v1-7d9f8c6b5-abcde",
		"POD_NAMESPACE":            "echo",
		"INSTANCE_IP":              "127.0.0.1",
		"SERVICE_ACCOUNT":          "echo",
		"ISTIO_META_GENERATOR":     "grpc",
		"ISTIO_META_WORKLOAD_NAME": "echo-v1",
	}, []string{"proxy", "sidecar"}, map[string]string{"./etc/istio/pod/labels": "app=\"echo\"\nversion=\"v1\"\n"})
}

func TestGRPCGolden(t *testing.T) {
	cfg := proxyless(t)
	if !cfg.Proxyless() {
		t.Fatal("ISTIO_META_GENERATOR=grpc not seen as proxyless")
	}
	data, err := GRPC(cfg)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "grpc.json", data)
	// grpc-go's own bootstrap parser (with the file_watcher certificate provider registered) accepts it.
	if _, err := xds.NewXDSResolverWithConfigForTesting(data); err != nil {
		t.Fatalf("grpc-go rejected the bootstrap: %v", err)
	}

	var b struct {
		XDSServers []struct {
			ServerURI      string                  `json:"server_uri"`
			ChannelCreds   []struct{ Type string } `json:"channel_creds"`
			ServerFeatures []string                `json:"server_features"`
		} `json:"xds_servers"`
		Node struct {
			ID       string
			Metadata map[string]any
		}
		Template  string `json:"server_listener_resource_name_template"`
		Providers map[string]struct {
			PluginName string `json:"plugin_name"`
			Config     map[string]string
		} `json:"certificate_providers"`
	}
	if err := json.Unmarshal(data, &b); err != nil {
		t.Fatal(err)
	}
	if len(b.XDSServers) != 1 || len(b.XDSServers[0].ChannelCreds) != 1 || len(b.XDSServers[0].ServerFeatures) != 1 {
		t.Fatalf("xds_servers %+v", b.XDSServers)
	}
	if b.XDSServers[0].ServerURI != "unix:etc/istio/proxy/XDS" ||
		b.XDSServers[0].ChannelCreds[0].Type != "insecure" || b.XDSServers[0].ServerFeatures[0] != "xds_v3" {
		t.Errorf("xds_servers %+v", b.XDSServers)
	}
	if b.Node.ID != "sidecar~127.0.0.1~echo-v1-7d9f8c6b5-abcde.echo~echo.svc.cluster.local" {
		t.Errorf("node id %q", b.Node.ID)
	}
	labels, _ := b.Node.Metadata["LABELS"].(map[string]any)
	if b.Node.Metadata["GENERATOR"] != "grpc" || b.Node.Metadata["NAMESPACE"] != "echo" ||
		labels["app"] != "echo" || labels["security.istio.io/tlsMode"] != "istio" {
		t.Errorf("metadata %v", b.Node.Metadata)
	}
	if b.Template != "xds.istio.io/grpc/lds/inbound/%s" {
		t.Errorf("template %q", b.Template)
	}
	p := b.Providers["default"]
	if p.PluginName != "file_watcher" || p.Config["certificate_file"] != "var/lib/istio/data/cert-chain.pem" ||
		p.Config["private_key_file"] != "var/lib/istio/data/key.pem" ||
		p.Config["ca_certificate_file"] != "var/lib/istio/data/root-cert.pem" || p.Config["refresh_interval"] != "900s" {
		t.Errorf("certificate provider %+v", p)
	}
	// The config's labels are not modified by adding tlsMode.
	if _, ok := cfg.Labels["security.istio.io/tlsMode"]; ok {
		t.Error("GRPC mutated cfg.Labels")
	}
}

func TestGRPCWithoutCerts(t *testing.T) {
	cfg := proxyless(t)
	cfg.OutputCerts = ""
	cfg.XDSSocket = "/etc/istio/proxy/XDS"
	data, err := GRPC(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := xds.NewXDSResolverWithConfigForTesting(data); err != nil {
		t.Fatalf("grpc-go rejected the bootstrap: %v", err)
	}
	var b map[string]any
	if err := json.Unmarshal(data, &b); err != nil {
		t.Fatal(err)
	}
	if _, ok := b["certificate_providers"]; ok {
		t.Error("certificate_providers without certificates")
	}
	if uri := b["xds_servers"].([]any)[0].(map[string]any)["server_uri"]; uri != "unix:///etc/istio/proxy/XDS" {
		t.Errorf("server_uri %v", uri)
	}
	md := b["node"].(map[string]any)["metadata"].(map[string]any)
	if _, ok := md["LABELS"].(map[string]any)["security.istio.io/tlsMode"]; ok {
		t.Error("tlsMode label without certificates")
	}
}

func TestGRPCErrors(t *testing.T) {
	if _, err := GRPC(nil); err == nil {
		t.Error("nil config accepted")
	}
	cfg := proxyless(t)
	cfg.XDSSocket = ""
	if _, err := GRPC(cfg); err == nil {
		t.Error("empty XDS socket accepted")
	}
}

func TestUnixURI(t *testing.T) {
	for in, want := range map[string]string{
		"./etc/istio/proxy/XDS": "unix:etc/istio/proxy/XDS",
		"/etc/istio/proxy/XDS":  "unix:///etc/istio/proxy/XDS",
		"/tmp//a/../XDS":        "unix:///tmp/XDS",
	} {
		if got := UnixURI(in); got != want {
			t.Errorf("UnixURI(%q) = %q, want %q", in, got, want)
		}
	}
}
