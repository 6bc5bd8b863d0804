// Package bootstrap generates the files the agent hands to its proxy: the Envoy bootstrap (envoy-rev.json) and
// Envoy's command line, and the proxyless gRPC bootstrap (grpc-bootstrap.json).
package bootstrap

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	metricsv3 "github.com/envoyproxy/go-control-plane/envoy/config/metrics/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	filelogv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/pkg/agent/config"
)

// Well-known names and ports of the bootstrap.
const (
	XDSCluster        = "xds-grpc"
	SDSCluster        = "sds-grpc"
	AgentCluster      = "agent"
	PrometheusCluster = "prometheus_stats"
	ZipkinCluster     = "zipkin"
	EnvoyStatusPort   = 15021
	EnvoyPromPort     = 15090

	httpProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
)

// LogFormat is the Envoy log line format the agent passes with --log-format.
const LogFormat = "%Y-%m-%dT%T.%fZ\t%l\tenvoy %n %g:%#\t%v\tthread=%t"

// EnvoyArgs returns Envoy's command line (without the binary) for cfg.
func EnvoyArgs(cfg *config.Config) []string {
	args := []string{
		"-c", cfg.BootstrapPath(),
		"--drain-time-s", strconv.FormatInt(cfg.DrainDurationSeconds(), 10),
		"--drain-strategy", "immediate",
		"--local-address-ip-version", "v4",
		"--file-flush-interval-msec", "1000",
		"--disable-hot-restart",
		"--allow-unknown-static-fields",
		"--log-format", LogFormat,
	}
	if cfg.InstanceIP != "" && net.ParseIP(cfg.InstanceIP).To4() == nil {
		args[7] = "v6"
	}
	if cfg.ProxyLogLevel != "" {
		args = append(args, "-l", cfg.ProxyLogLevel)
	}
	if cfg.ProxyComponentLogLevel != "" {
		args = append(args, "--component-log-level", cfg.ProxyComponentLogLevel)
	}
	if cfg.Concurrency > 0 {
		args = append(args, "--concurrency", strconv.Itoa(cfg.Concurrency))
	}
	return args
}

// Envoy returns the Envoy bootstrap (envoy-rev.json) for cfg as indented JSON with snake_case field names.
func Envoy(cfg *config.Config) ([]byte, error) {
	b, err := EnvoyProto(cfg)
	if err != nil {
		return nil, err
	}
	if err := b.ValidateAll(); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	return marshal(b)
}

// marshal renders m as stable, indented JSON (protojson's own whitespace is deliberately unstable).
func marshal(m proto.Message) ([]byte, error) {
	raw, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		return nil, err
	}
	var compact, out bytes.Buffer
	if err := json.Compact(&compact, raw); err != nil {
		return nil, err
	}
	if err := json.Indent(&out, compact.Bytes(), "", "  "); err != nil {
		return nil, err
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

// ServiceCluster is the node cluster: the app label (or ISTIO_META_WORKLOAD_NAME, or the pod name without its
// generated suffixes) followed by "." and the namespace.
func ServiceCluster(cfg *config.Config) string {
	name := cfg.Labels["app"]
	if name == "" {
		name = cfg.Labels["app.kubernetes.io/name"]
	}
	if name == "" {
		name = cfg.Metadata["WORKLOAD_NAME"]
	}
	if name == "" {
		name = podNamePrefix(cfg.PodName)
	}
	return name + "." + cfg.PodNamespace
}

// podNamePrefix strips the generated parts of a pod name: "productpage-v1-6b746f74dc-9stvs" becomes
// "productpage-v1" (ReplicaSet hash and pod suffix), "web-0" stays unchanged.
func podNamePrefix(pod string) string {
	parts := strings.Split(pod, "-")
	if len(parts) >= 3 && isRandSuffix(parts[len(parts)-1], 5) && isRandSuffix(parts[len(parts)-2], 0) {
		return strings.Join(parts[:len(parts)-2], "-")
	}
	return pod
}

// isRandSuffix reports whether s looks like a Kubernetes-generated name suffix (lowercase letters and digits,
// of length n when n > 0, else 5 to 10 characters).
func isRandSuffix(s string, n int) bool {
	if n > 0 && len(s) != n || n == 0 && (len(s) < 5 || len(s) > 10) {
		return false
	}
	for _, r := range s {
		if (r < 'a' || r > 'z') && (r < '0' || r > '9') {
			return false
		}
	}
	return true
}

// nodeMetadata is the metadata shared by the Envoy and gRPC bootstraps: ISTIO_META_* first, then the fields the
// agent owns.
func nodeMetadata(cfg *config.Config) (map[string]any, error) {
	md := map[string]any{}
	for k, v := range cfg.Metadata {
		md[k] = v
	}
	md["NAMESPACE"] = cfg.PodNamespace
	md["CLUSTER_ID"] = cfg.ClusterID
	md["MESH_ID"] = cfg.MeshID
	md["ISTIO_VERSION"] = cfg.IstioVersion
	if cfg.ServiceAccount != "" {
		md["SERVICE_ACCOUNT"] = cfg.ServiceAccount
	}
	if _, ok := md["INSTANCE_IPS"]; !ok && cfg.InstanceIP != "" {
		md["INSTANCE_IPS"] = cfg.InstanceIP
	}
	if _, ok := md["NAME"]; !ok && cfg.PodName != "" {
		md["NAME"] = cfg.PodName
	}
	md["LABELS"] = stringMap(cfg.Labels)
	if len(cfg.Annotations) > 0 {
		md["ANNOTATIONS"] = stringMap(cfg.Annotations)
	}
	if cfg.ProxyConfig != nil {
		raw, err := protojson.Marshal(cfg.ProxyConfig)
		if err != nil {
			return nil, fmt.Errorf("PROXY_CONFIG: %w", err)
		}
		var pc any
		if err := json.Unmarshal(raw, &pc); err != nil {
			return nil, fmt.Errorf("PROXY_CONFIG: %w", err)
		}
		md["PROXY_CONFIG"] = pc
	}
	return md, nil
}

func stringMap(m map[string]string) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// EnvoyProto builds the Envoy bootstrap message for cfg.
func EnvoyProto(cfg *config.Config) (*bootstrapv3.Bootstrap, error) {
	if cfg == nil || cfg.ProxyConfig == nil {
		return nil, fmt.Errorf("bootstrap: no config")
	}
	if cfg.NodeID == "" || cfg.PodNamespace == "" {
		// Envoy needs both to talk ADS; the protos' own validation does not require them.
		return nil, fmt.Errorf("bootstrap: node id and namespace are required")
	}
	pc := cfg.ProxyConfig
	md, err := nodeMetadata(cfg)
	if err != nil {
		return nil, err
	}
	md["ENVOY_STATUS_PORT"] = strconv.Itoa(EnvoyStatusPort)
	md["ENVOY_PROMETHEUS_PORT"] = strconv.Itoa(EnvoyPromPort)
	mds, err := structpb.NewStruct(md)
	if err != nil {
		return nil, fmt.Errorf("node metadata: %w", err)
	}

	adminLog, err := anypb.New(&filelogv3.FileAccessLog{Path: "/dev/null"})
	if err != nil {
		return nil, err
	}
	apiType := corev3.ApiConfigSource_DELTA_GRPC
	if !cfg.DeltaXDS {
		apiType = corev3.ApiConfigSource_GRPC
	}
	ads := func() *corev3.ConfigSource {
		return &corev3.ConfigSource{
			ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
			ResourceApiVersion:    corev3.ApiVersion_V3,
		}
	}

	clusters := []*clusterv3.Cluster{}
	for _, c := range []struct {
		name, path string
	}{{XDSCluster, cfg.XDSSocket}, {SDSCluster, cfg.SDSSocket}} {
		cl, err := udsCluster(c.name, c.path)
		if err != nil {
			return nil, err
		}
		clusters = append(clusters, cl)
	}
	clusters = append(clusters,
		staticCluster(AgentCluster, "127.0.0.1", uint32(pc.StatusPort), 250*time.Millisecond),
		staticCluster(PrometheusCluster, "127.0.0.1", uint32(pc.ProxyAdminPort), 250*time.Millisecond),
	)
	if addr := pc.GetTracing().GetZipkin().GetAddress(); addr != "" {
		cl, err := dnsCluster(ZipkinCluster, addr)
		if err != nil {
			return nil, fmt.Errorf("tracing: %w", err)
		}
		clusters = append(clusters, cl)
	}

	prom, err := httpListener("prometheus", EnvoyPromPort, "stats", "/stats/prometheus", PrometheusCluster)
	if err != nil {
		return nil, err
	}
	health, err := httpListener("agent", EnvoyStatusPort, "agent", "/healthz/ready", AgentCluster)
	if err != nil {
		return nil, err
	}

	runtime, err := structpb.NewStruct(map[string]any{
		"overload.global_downstream_max_connections": 2147483647,
		"re2.max_program_size.error_level":           32768,
	})
	if err != nil {
		return nil, err
	}

	return &bootstrapv3.Bootstrap{
		Node: &corev3.Node{
			Id:       cfg.NodeID,
			Cluster:  ServiceCluster(cfg),
			Metadata: mds,
		},
		Admin: &bootstrapv3.Admin{
			Address: socketAddress("127.0.0.1", uint32(pc.ProxyAdminPort)),
			AccessLog: []*accesslogv3.AccessLog{{
				Name:       "envoy.access_loggers.file",
				ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: adminLog},
			}},
		},
		DynamicResources: &bootstrapv3.Bootstrap_DynamicResources{
			AdsConfig: &corev3.ApiConfigSource{
				ApiType:             apiType,
				TransportApiVersion: corev3.ApiVersion_V3,
				GrpcServices: []*corev3.GrpcService{{
					TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
						EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: XDSCluster},
					},
				}},
				SetNodeOnFirstMessageOnly: true,
			},
			CdsConfig: ads(),
			LdsConfig: ads(),
		},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{
			Clusters:  clusters,
			Listeners: []*listenerv3.Listener{prom, health},
		},
		StatsConfig: &metricsv3.StatsConfig{
			UseAllDefaultTags: wrapperspb.Bool(true),
			StatsTags:         statsTags(),
		},
		LayeredRuntime: &bootstrapv3.LayeredRuntime{
			Layers: []*bootstrapv3.RuntimeLayer{
				{Name: "global config", LayerSpecifier: &bootstrapv3.RuntimeLayer_StaticLayer{StaticLayer: runtime}},
				{Name: "admin", LayerSpecifier: &bootstrapv3.RuntimeLayer_AdminLayer_{AdminLayer: &bootstrapv3.RuntimeLayer_AdminLayer{}}},
			},
		},
	}, nil
}

// statsTags extract mesh-relevant dimensions from Envoy stat names.
func statsTags() []*metricsv3.TagSpecifier {
	tag := func(name, regex string) *metricsv3.TagSpecifier {
		return &metricsv3.TagSpecifier{TagName: name, TagValue: &metricsv3.TagSpecifier_Regex{Regex: regex}}
	}
	return []*metricsv3.TagSpecifier{
		// cluster.outbound|9080||reviews.default.svc.cluster.local.upstream_rq_total: the mesh cluster name
		// contains dots, so it runs up to the service domain; other cluster names end at the first dot.
		tag("cluster_name", `^cluster\.((.+?\.svc\.cluster\.local|[^.]+)\.)`),
		// tcp.<stat_prefix>.<stat>
		tag("tcp_prefix", `^tcp\.((.*?)\.)\w+?$`),
		// ..._rq_200, ..._rq_5xx
		tag("response_code", `_rq(_(\d{3}))$`),
		tag("response_code_class", `_rq(_(\dxx))$`),
	}
}

func socketAddress(host string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       host,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

func loadAssignment(name string, addrs ...*corev3.Address) *endpointv3.ClusterLoadAssignment {
	var lbs []*endpointv3.LbEndpoint
	for _, a := range addrs {
		lbs = append(lbs, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{
			Endpoint: &endpointv3.Endpoint{Address: a},
		}})
	}
	return &endpointv3.ClusterLoadAssignment{
		ClusterName: name,
		Endpoints:   []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}},
	}
}

func staticCluster(name, host string, port uint32, timeout time.Duration) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(timeout),
		LoadAssignment:       loadAssignment(name, socketAddress(host, port)),
	}
}

// udsCluster is an HTTP/2 cluster reaching a Unix socket (the agent's XDS and SDS servers).
func udsCluster(name, path string) (*clusterv3.Cluster, error) {
	h2, err := anypb.New(&httpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
					Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
				},
			},
		},
	})
	if err != nil {
		return nil, err
	}
	pipe := &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: path}}}
	return &clusterv3.Cluster{
		Name:                          name,
		ClusterDiscoveryType:          &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:                durationpb.New(time.Second),
		LoadAssignment:                loadAssignment(name, pipe),
		TypedExtensionProtocolOptions: map[string]*anypb.Any{httpProtocolOptionsKey: h2},
		CircuitBreakers: &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
			Priority:           corev3.RoutingPriority_DEFAULT,
			MaxConnections:     wrapperspb.UInt32(100000),
			MaxPendingRequests: wrapperspb.UInt32(100000),
			MaxRequests:        wrapperspb.UInt32(100000),
		}}},
	}, nil
}

// dnsCluster is a STRICT_DNS cluster for host:port (the tracing collector).
func dnsCluster(name, addr string) (*clusterv3.Cluster, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return nil, fmt.Errorf("address %q: bad port", addr)
	}
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS},
		ConnectTimeout:       durationpb.New(time.Second),
		DnsLookupFamily:      clusterv3.Cluster_V4_ONLY,
		LoadAssignment:       loadAssignment(name, socketAddress(host, uint32(port))),
	}, nil
}

// httpListener listens on 0.0.0.0:port and routes the path prefix to cluster through the router filter.
func httpListener(name string, port uint32, statPrefix, prefix, cluster string) (*listenerv3.Listener, error) {
	router, err := anypb.New(&routerv3.Router{})
	if err != nil {
		return nil, err
	}
	hcm, err := anypb.New(&hcmv3.HttpConnectionManager{
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		StatPrefix: statPrefix,
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
			VirtualHosts: []*routev3.VirtualHost{{
				Name:    "backend",
				Domains: []string{"*"},
				Routes: []*routev3.Route{{
					Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: prefix}},
					Action: &routev3.Route_Route{Route: &routev3.RouteAction{
						ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster},
					}},
				}},
			}},
		}},
		HttpFilters: []*hcmv3.HttpFilter{{
			Name:       "envoy.filters.http.router",
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router},
		}},
	})
	if err != nil {
		return nil, err
	}
	return &listenerv3.Listener{
		Name:    name,
		Address: socketAddress("0.0.0.0", port),
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{
				Name:       "envoy.filters.network.http_connection_manager",
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm},
			}},
		}},
	}, nil
}

// Node is the node the proxy announces (id, cluster and metadata as in the Envoy bootstrap), for the agent's
// own streams to the control plane: they must look like the proxy's, which the secure port authorises.
func Node(cfg *config.Config) (*corev3.Node, error) {
	b, err := EnvoyProto(cfg)
	if err != nil {
		return nil, err
	}
	return b.GetNode(), nil
}
