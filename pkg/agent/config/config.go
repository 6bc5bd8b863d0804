// Package config turns the agent's environment and command line (as seen in the istio-proxy container of a
// real pod) into a Config. Parsing is a pure function of its inputs: the environment is read through a getenv
// function and an environ list, and the pod-info downward-API files through an optional ReadFile function.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	meshconfig "istio.io/api/mesh/v1alpha1"
)

// Proxy types, the first positional argument after "proxy".
const (
	TypeSidecar = "sidecar"
	TypeRouter  = "router"
)

// Defaults for settings not given in the environment or PROXY_CONFIG.
const (
	DefaultDiscoveryAddress = "istiod.istio-system.svc:15012"
	DefaultProxyAdminPort   = 15000
	DefaultStatusPort       = 15020
	DefaultConcurrency      = 2
	DefaultBinaryPath       = "/usr/local/bin/envoy"
	DefaultConfigPath       = "./etc/istio/proxy"
	DefaultXDSSocket        = "./etc/istio/proxy/XDS"
	DefaultSDSSocket        = "./var/run/secrets/workload-spiffe-uds/socket"
	DefaultOutputCerts      = "./var/lib/istio/data"
	DefaultPodLabelsFile    = "./etc/istio/pod/labels"
	DefaultPodAnnotsFile    = "./etc/istio/pod/annotations"
	DefaultClusterID        = "Kubernetes"
	DefaultTrustDomain      = "cluster.local"
	DefaultIstioVersion     = "meshd"
	DefaultProxyLogLevel    = "warning"
	DefaultComponentLevel   = "misc:error"
	// MetaPrefix marks environment variables that become node metadata.
	MetaPrefix = "ISTIO_META_"
)

// Args are the agent's inputs besides getenv.
type Args struct {
	// Argv is the command line after the program name, e.g.
	// ["proxy", "sidecar", "--domain", "ns.svc.cluster.local", "--proxyLogLevel=warning", "--concurrency", "2"].
	Argv []string
	// Environ lists the environment as KEY=VALUE entries (os.Environ()); it is only used to find ISTIO_META_*
	// variables, whose values are then read through getenv.
	Environ []string
	// ReadFile reads the pod-info downward-API files. Nil means they are not read (no labels or annotations).
	// A file that does not exist should be reported with an error wrapping fs.ErrNotExist; it is then skipped.
	ReadFile func(path string) ([]byte, error)
	// NotExist reports whether an error from ReadFile means the file is absent. Nil treats every error as fatal.
	NotExist func(error) bool
}

// Config is everything the agent needs to bootstrap and supervise the proxy.
type Config struct {
	// Type is TypeSidecar or TypeRouter.
	Type string
	// NodeID is TYPE~IP~POD.NS~DOMAIN.
	NodeID string
	// DNSDomain is --domain, by default NS.svc.cluster.local.
	DNSDomain string

	PodName           string
	PodNamespace      string
	InstanceIP        string
	ServiceAccount    string
	HostIP            string
	CAAddr            string
	PilotCertProvider string
	JWTPolicy         string
	TrustDomain       string
	ClusterID         string
	MeshID            string
	IstioVersion      string

	// ProxyConfig is PROXY_CONFIG merged over the mesh defaults.
	ProxyConfig *meshconfig.ProxyConfig
	// Metadata holds the ISTIO_META_* variables with the prefix removed; values are kept as strings.
	Metadata map[string]string
	// Labels and Annotations come from the pod-info downward-API files.
	Labels      map[string]string
	Annotations map[string]string

	// Concurrency is the proxy's worker count: --concurrency, else ProxyConfig.concurrency.
	Concurrency            int
	ProxyLogLevel          string
	ProxyComponentLogLevel string
	LogOutputLevel         string

	// DeltaXDS selects Delta ADS (the default); ISTIO_DELTA_XDS=false selects state-of-the-world.
	DeltaXDS bool
	// XDSSocket and SDSSocket are the agent's Unix socket paths.
	XDSSocket string
	SDSSocket string
	// OutputCerts is the directory where certificates for proxyless gRPC are written (OUTPUT_CERTS). Empty
	// means no certificates are provided.
	OutputCerts string
}

// Generator returns the requested config generator (ISTIO_META_GENERATOR), e.g. "grpc" for proxyless mode.
func (c *Config) Generator() string { return c.Metadata["GENERATOR"] }

// Proxyless reports whether the agent runs without a proxy binary (proxyless gRPC).
func (c *Config) Proxyless() bool { return c.Generator() == "grpc" }

// DrainDurationSeconds is ProxyConfig.drainDuration in whole seconds.
func (c *Config) DrainDurationSeconds() int64 {
	if d := c.ProxyConfig.GetDrainDuration(); d != nil {
		return int64(d.AsDuration().Seconds())
	}
	return 0
}

// BootstrapPath is where the Envoy bootstrap is written: CONFIG_PATH/envoy-rev.json.
func (c *Config) BootstrapPath() string {
	return filepath.Join(c.ProxyConfig.GetConfigPath(), "envoy-rev.json")
}

// GRPCBootstrapPath is where the proxyless gRPC bootstrap is written: CONFIG_PATH/grpc-bootstrap.json.
func (c *Config) GRPCBootstrapPath() string {
	return filepath.Join(c.ProxyConfig.GetConfigPath(), "grpc-bootstrap.json")
}

// DefaultProxyConfig returns the mesh defaults PROXY_CONFIG is merged over.
func DefaultProxyConfig() *meshconfig.ProxyConfig {
	return &meshconfig.ProxyConfig{
		ConfigPath:       DefaultConfigPath,
		BinaryPath:       DefaultBinaryPath,
		DiscoveryAddress: DefaultDiscoveryAddress,
		ProxyAdminPort:   DefaultProxyAdminPort,
		StatusPort:       DefaultStatusPort,
		DrainDuration:    durationpb.New(45e9),
		Concurrency:      wrapperspb.Int32(DefaultConcurrency),
	}
}

// flags are the parsed command-line options.
type flags struct {
	proxyType      string
	domain         string
	logLevel       string
	componentLevel string
	logOutputLevel string
	concurrency    int
	concurrencySet bool
}

// parseArgs parses `proxy sidecar|router [flags]`.
func parseArgs(argv []string) (*flags, error) {
	if len(argv) < 2 || argv[0] != "proxy" {
		return nil, errors.New(`usage: proxy sidecar|router [flags]`)
	}
	f := &flags{proxyType: argv[1]}
	if f.proxyType != TypeSidecar && f.proxyType != TypeRouter {
		return nil, fmt.Errorf("proxy type %q: want %s or %s", f.proxyType, TypeSidecar, TypeRouter)
	}
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&f.domain, "domain", "", "DNS domain suffix")
	fs.StringVar(&f.logLevel, "proxyLogLevel", DefaultProxyLogLevel, "proxy log level")
	fs.StringVar(&f.componentLevel, "proxyComponentLogLevel", DefaultComponentLevel, "proxy component log levels")
	fs.StringVar(&f.logOutputLevel, "log_output_level", "default:info", "agent log levels")
	fs.IntVar(&f.concurrency, "concurrency", 0, "proxy worker threads")
	// Options seen in real pods that the agent accepts and ignores.
	for _, name := range []string{"serviceCluster", "stsPort", "tokenManagerPlugin", "outlierLogPath", "templateFile", "log_caller", "log_stacktrace_level", "log_rotate"} {
		fs.String(name, "", "ignored")
	}
	fs.Bool("log_as_json", false, "ignored")
	if err := fs.Parse(argv[2:]); err != nil {
		return nil, fmt.Errorf("proxy %s: %w", f.proxyType, err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("proxy %s: unexpected argument %q", f.proxyType, fs.Arg(0))
	}
	fs.Visit(func(fl *flag.Flag) {
		if fl.Name == "concurrency" {
			f.concurrencySet = true
		}
	})
	if f.concurrencySet && f.concurrency < 0 {
		return nil, fmt.Errorf("--concurrency %d: must not be negative", f.concurrency)
	}
	return f, nil
}

// FromEnv builds the agent's Config from its environment and arguments. Missing required settings fail with an
// error naming the variable.
func FromEnv(getenv func(string) string, args Args) (*Config, error) {
	f, err := parseArgs(args.Argv)
	if err != nil {
		return nil, err
	}
	c := &Config{
		Type:                   f.proxyType,
		PodName:                getenv("POD_NAME"),
		PodNamespace:           getenv("POD_NAMESPACE"),
		InstanceIP:             getenv("INSTANCE_IP"),
		ServiceAccount:         getenv("SERVICE_ACCOUNT"),
		HostIP:                 getenv("HOST_IP"),
		CAAddr:                 getenv("CA_ADDR"),
		PilotCertProvider:      orDefault(getenv("PILOT_CERT_PROVIDER"), "istiod"),
		JWTPolicy:              orDefault(getenv("JWT_POLICY"), "third-party-jwt"),
		TrustDomain:            orDefault(getenv("TRUST_DOMAIN"), DefaultTrustDomain),
		ProxyLogLevel:          f.logLevel,
		ProxyComponentLogLevel: f.componentLevel,
		LogOutputLevel:         f.logOutputLevel,
		XDSSocket:              DefaultXDSSocket,
		SDSSocket:              DefaultSDSSocket,
		OutputCerts:            orDefault(getenv("OUTPUT_CERTS"), DefaultOutputCerts),
		DeltaXDS:               true,
	}
	if c.PodNamespace == "" {
		return nil, errors.New("POD_NAMESPACE is not set")
	}
	if c.PodName == "" {
		return nil, errors.New("POD_NAME is not set")
	}
	if c.InstanceIP == "" && c.Type == TypeSidecar {
		return nil, errors.New("INSTANCE_IP is not set (required for sidecars)")
	}
	if c.InstanceIP != "" && net.ParseIP(c.InstanceIP) == nil {
		return nil, fmt.Errorf("INSTANCE_IP %q is not an IP address", c.InstanceIP)
	}
	if v := getenv("ISTIO_DELTA_XDS"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return nil, fmt.Errorf("ISTIO_DELTA_XDS %q: %w", v, err)
		}
		c.DeltaXDS = b
	}

	c.ProxyConfig = DefaultProxyConfig()
	if raw := strings.TrimSpace(getenv("PROXY_CONFIG")); raw != "" {
		overlay := &meshconfig.ProxyConfig{}
		if err := protojson.Unmarshal([]byte(raw), overlay); err != nil {
			return nil, fmt.Errorf("PROXY_CONFIG: %w", err)
		}
		proto.Merge(c.ProxyConfig, overlay)
	}
	pc := c.ProxyConfig
	if pc.ProxyAdminPort <= 0 || pc.ProxyAdminPort > 65535 {
		return nil, fmt.Errorf("PROXY_CONFIG proxyAdminPort %d: not a port", pc.ProxyAdminPort)
	}
	if pc.StatusPort <= 0 || pc.StatusPort > 65535 {
		return nil, fmt.Errorf("PROXY_CONFIG statusPort %d: not a port", pc.StatusPort)
	}
	if _, _, err := net.SplitHostPort(pc.DiscoveryAddress); err != nil {
		return nil, fmt.Errorf("PROXY_CONFIG discoveryAddress %q: %w", pc.DiscoveryAddress, err)
	}
	if d := pc.GetDrainDuration(); d != nil && (d.CheckValid() != nil || d.AsDuration() < 0) {
		return nil, fmt.Errorf("PROXY_CONFIG drainDuration %v: invalid", d)
	}
	if pc.ConfigPath == "" {
		return nil, errors.New("PROXY_CONFIG configPath is empty")
	}
	switch {
	case f.concurrencySet:
		c.Concurrency = f.concurrency
	case pc.GetConcurrency() != nil:
		c.Concurrency = int(pc.GetConcurrency().GetValue())
	}
	if c.Concurrency < 0 {
		return nil, fmt.Errorf("PROXY_CONFIG concurrency %d: must not be negative", c.Concurrency)
	}

	// ISTIO_META_* from the environment win over ProxyConfig.proxyMetadata entries of the same name.
	c.Metadata = map[string]string{}
	for k, v := range pc.GetProxyMetadata() {
		if name, ok := strings.CutPrefix(k, MetaPrefix); ok && name != "" {
			c.Metadata[name] = v
		}
	}
	for _, kv := range args.Environ {
		k, _, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		if name, ok := strings.CutPrefix(k, MetaPrefix); ok && name != "" {
			c.Metadata[name] = getenv(k)
		}
	}
	c.ClusterID = orDefault(c.Metadata["CLUSTER_ID"], DefaultClusterID)
	c.MeshID = orDefault(c.Metadata["MESH_ID"], c.TrustDomain)
	c.IstioVersion = orDefault(c.Metadata["ISTIO_VERSION"], DefaultIstioVersion)

	c.DNSDomain = f.domain
	if c.DNSDomain == "" {
		c.DNSDomain = c.PodNamespace + ".svc.cluster.local"
	}
	ip := c.InstanceIP
	if ip == "" {
		// Gateways without INSTANCE_IP: the node id still needs an address field.
		ip = "127.0.0.1"
	}
	c.NodeID = fmt.Sprintf("%s~%s~%s.%s~%s", c.Type, ip, c.PodName, c.PodNamespace, c.DNSDomain)

	c.Labels = map[string]string{}
	c.Annotations = map[string]string{}
	if args.ReadFile != nil {
		if c.Labels, err = readPodInfo(args, DefaultPodLabelsFile); err != nil {
			return nil, err
		}
		if c.Annotations, err = readPodInfo(args, DefaultPodAnnotsFile); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func readPodInfo(args Args, path string) (map[string]string, error) {
	data, err := args.ReadFile(path)
	if err != nil {
		if args.NotExist != nil && args.NotExist(err) {
			return map[string]string{}, nil
		}
		return nil, fmt.Errorf("pod info %s: %w", path, err)
	}
	m, err := ParseDownwardAPI(data)
	if err != nil {
		return nil, fmt.Errorf("pod info %s: %w", path, err)
	}
	return m, nil
}

// ParseDownwardAPI parses a Kubernetes downward-API labels or annotations file: one `key="value"` entry per
// line, the value a double-quoted string with Go-style escapes. Blank lines are ignored.
func ParseDownwardAPI(data []byte) (map[string]string, error) {
	out := map[string]string{}
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimRight(line, "\r")
		if strings.TrimSpace(line) == "" {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("line %d: want key=\"value\"", i+1)
		}
		uv, err := strconv.Unquote(v)
		if err != nil || !strings.HasPrefix(v, `"`) {
			return nil, fmt.Errorf("line %d: value of %q is not a quoted string", i+1, k)
		}
		out[k] = uv
	}
	return out, nil
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}
