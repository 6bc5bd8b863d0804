package bootstrap

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/meshd/meshd/pkg/xds"
)

// Args are the discovery server's settings; the flag names (in cmd/discovery) are istiod's.
type Args struct {
	GRPCAddr       string
	HTTPAddr       string
	MonitoringAddr string
	SecureGRPCAddr string
	HTTPSAddr      string

	ConfigDir string
	// CACertsDir holds plugged-in CA certificates (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem).
	CACertsDir string
	// CASelfSignedDir keeps the generated root in file mode (Kubernetes mode keeps it in istio-ca-secret).
	CASelfSignedDir string
	Kubeconfig      string
	Domain          string
	MeshConfigFile  string
	ClusterID       string

	KeepaliveMaxServerConnectionAge time.Duration
	KeepaliveInterval               time.Duration
	KeepaliveTimeout                time.Duration
	MaxConcurrentStreams            uint32
	MaxRecvMsgSize                  int

	Debounce     xds.DebounceOptions
	PushThrottle int
	// ShutdownDuration bounds the graceful stop of streams and HTTP servers.
	ShutdownDuration time.Duration
}

// DefaultArgs returns istiod's defaults, then applies the PILOT_* environment variables istiod reads.
func DefaultArgs() (*Args, error) {
	a := &Args{
		GRPCAddr:                        ":15010",
		HTTPAddr:                        ":8080",
		MonitoringAddr:                  ":15014",
		SecureGRPCAddr:                  ":15012",
		HTTPSAddr:                       ":15017",
		Domain:                          "cluster.local",
		MeshConfigFile:                  "./etc/istio/config/mesh",
		CACertsDir:                      "/etc/cacerts",
		CASelfSignedDir:                 "./var/run/meshd/ca",
		ClusterID:                       "Kubernetes",
		KeepaliveMaxServerConnectionAge: 30 * time.Minute,
		KeepaliveInterval:               30 * time.Second,
		KeepaliveTimeout:                10 * time.Second,
		MaxConcurrentStreams:            100000,
		MaxRecvMsgSize:                  4 * 1024 * 1024,
		Debounce:                        xds.DefaultDebounce(),
		PushThrottle:                    100,
		ShutdownDuration:                10 * time.Second,
	}
	var err error
	env := func(name string, apply func(string) error) {
		if v, ok := os.LookupEnv(name); ok && err == nil {
			if e := apply(v); e != nil {
				err = fmt.Errorf("environment variable %s=%q: %w", name, v, e)
			}
		}
	}
	duration := func(d *time.Duration) func(string) error {
		return func(v string) error {
			parsed, e := time.ParseDuration(v)
			if e == nil && parsed <= 0 {
				e = fmt.Errorf("must be positive")
			}
			*d = parsed
			return e
		}
	}
	env("PILOT_DEBOUNCE_AFTER", duration(&a.Debounce.After))
	env("PILOT_DEBOUNCE_MAX", duration(&a.Debounce.Max))
	env("PILOT_ENABLE_EDS_DEBOUNCE", func(v string) (e error) { a.Debounce.EDS, e = strconv.ParseBool(v); return })
	env("PILOT_PUSH_THROTTLE", func(v string) (e error) {
		a.PushThrottle, e = strconv.Atoi(v)
		if e == nil && a.PushThrottle <= 0 {
			e = fmt.Errorf("must be positive")
		}
		return
	})
	env("CLUSTER_ID", func(v string) error { a.ClusterID = v; return nil })
	return a, err
}
