package bootstrap

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/meshd/meshd/pkg/agent/config"
)

// File names of the certificates the agent writes to OUTPUT_CERTS for proxyless gRPC.
const (
	CertChainFile = "cert-chain.pem"
	KeyFile       = "key.pem"
	RootCertFile  = "root-cert.pem"

	// CertRefreshInterval is how often gRPC's file_watcher re-reads the certificate files.
	CertRefreshInterval = "900s"
	// ServerListenerTemplate names the inbound listener a proxyless gRPC server asks for.
	ServerListenerTemplate = "xds.istio.io/grpc/lds/inbound/%s"
)

// grpcBootstrap mirrors the JSON schema of gRPC's xDS bootstrap file.
type grpcBootstrap struct {
	XDSServers                         []grpcXDSServer         `json:"xds_servers"`
	Node                               grpcNode                `json:"node"`
	CertificateProviders               map[string]certProvider `json:"certificate_providers,omitempty"`
	ServerListenerResourceNameTemplate string                  `json:"server_listener_resource_name_template"`
}

type grpcXDSServer struct {
	ServerURI      string         `json:"server_uri"`
	ChannelCreds   []channelCreds `json:"channel_creds"`
	ServerFeatures []string       `json:"server_features"`
}

type channelCreds struct {
	Type string `json:"type"`
}

type grpcNode struct {
	ID       string         `json:"id"`
	Cluster  string         `json:"cluster,omitempty"`
	Metadata map[string]any `json:"metadata"`
}

type certProvider struct {
	PluginName string            `json:"plugin_name"`
	Config     fileWatcherConfig `json:"config"`
}

type fileWatcherConfig struct {
	CertificateFile   string `json:"certificate_file"`
	PrivateKeyFile    string `json:"private_key_file"`
	CACertificateFile string `json:"ca_certificate_file"`
	RefreshInterval   string `json:"refresh_interval"`
}

// UnixURI returns the gRPC target for a Unix socket path: unix:///abs/path for absolute paths, unix:rel/path
// (resolved against the working directory) for relative ones.
func UnixURI(path string) string {
	clean := filepath.ToSlash(filepath.Clean(path))
	if strings.HasPrefix(clean, "/") {
		return "unix://" + clean
	}
	return "unix:" + clean
}

// GRPC returns the proxyless gRPC bootstrap (grpc-bootstrap.json) for cfg. The xDS server is the agent's XDS
// socket; when cfg.OutputCerts is set, a "default" file_watcher certificate provider points at the certificates
// the agent writes there and the workload advertises security.istio.io/tlsMode=istio.
func GRPC(cfg *config.Config) ([]byte, error) {
	if cfg == nil {
		return nil, fmt.Errorf("grpc bootstrap: no config")
	}
	if cfg.XDSSocket == "" {
		return nil, fmt.Errorf("grpc bootstrap: no XDS socket path")
	}
	md, err := nodeMetadata(cfg)
	if err != nil {
		return nil, err
	}
	md["GENERATOR"] = "grpc"
	b := grpcBootstrap{
		XDSServers: []grpcXDSServer{{
			ServerURI:      UnixURI(cfg.XDSSocket),
			ChannelCreds:   []channelCreds{{Type: "insecure"}},
			ServerFeatures: []string{"xds_v3"},
		}},
		Node: grpcNode{
			ID:       cfg.NodeID,
			Cluster:  ServiceCluster(cfg),
			Metadata: md,
		},
		ServerListenerResourceNameTemplate: ServerListenerTemplate,
	}
	if cfg.OutputCerts != "" {
		labels := stringMap(cfg.Labels)
		labels["security.istio.io/tlsMode"] = "istio"
		md["LABELS"] = labels
		b.CertificateProviders = map[string]certProvider{
			"default": {
				PluginName: "file_watcher",
				Config: fileWatcherConfig{
					CertificateFile:   filepath.Join(cfg.OutputCerts, CertChainFile),
					PrivateKeyFile:    filepath.Join(cfg.OutputCerts, KeyFile),
					CACertificateFile: filepath.Join(cfg.OutputCerts, RootCertFile),
					RefreshInterval:   CertRefreshInterval,
				},
			},
		}
	}
	out, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}
