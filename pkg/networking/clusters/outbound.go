package clusters

import (
	"math"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	meshconfig "istio.io/api/mesh/v1alpha1"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/security"
)

const (
	defaultConnectTimeout = 10 * time.Second
	// istioMetadataKey is the filter_metadata namespace Istio's telemetry and istioctl read.
	istioMetadataKey = "istio"
	// destinationRulePath prefixes the "config" cluster metadata, which istioctl uses to name the rule in force.
	destinationRulePath = "/apis/networking.istio.io/v1alpha3/namespaces/"
)

// buildOutboundCluster builds the sidecar cluster for one port (and subset) of a service. It reads only its
// arguments and the push's services, endpoints and mesh config, never the proxy: that is what lets one marshalled
// copy serve every proxy that picks the same DestinationRule.
func buildOutboundCluster(push *model.PushContext, svc *model.Service, port *model.Port, subsetName string,
	dr *model.DestinationRuleEntry,
) *cluster.Cluster {
	name := model.BuildSubsetKey(model.Outbound, subsetName, svc.Hostname, port.Port)
	subset := findSubset(dr, subsetName)
	policy := mergedPolicy(dr, subset, port.Port)

	c := newCluster(name, push.Mesh)
	c.CommonLbConfig = &cluster.Cluster_CommonLbConfig{}
	switch svc.Resolution {
	case model.ClientSideLB:
		c.ClusterDiscoveryType = &cluster.Cluster_Type{Type: cluster.Cluster_EDS}
	case model.DNSLB:
		c.ClusterDiscoveryType = &cluster.Cluster_Type{Type: cluster.Cluster_STRICT_DNS}
		// TODO: V6_ONLY / ALL for IPv6 and dual-stack proxies; that makes DNS clusters depend on the proxy's IP
		// family, which then has to join their cache key.
		c.DnsLookupFamily = cluster.Cluster_V4_ONLY
		c.RespectDnsTtl = true
		if r := push.Mesh.GetDnsRefreshRate(); positive(r) && r.AsDuration() >= time.Millisecond {
			c.DnsRefreshRate = r
		}
		c.LoadAssignment = dnsAssignment(name, push, svc, port, subset)
	case model.Passthrough:
		c.ClusterDiscoveryType = &cluster.Cluster_Type{Type: cluster.Cluster_ORIGINAL_DST}
	}

	h2 := port.Protocol.IsHTTP2() || shouldH2Upgrade(port, push.Mesh, policy.GetConnectionPool())
	var opts httpOptions
	applyConnectionPool(c, &opts, push.Mesh, policy.GetConnectionPool())
	applyOutlierDetection(c, policy.GetOutlierDetection())
	applyLoadBalancer(c, policy.GetLoadBalancer(), false)
	switch c.GetType() {
	case cluster.Cluster_EDS:
		c.EdsClusterConfig = edsClusterConfig(name)
	case cluster.Cluster_ORIGINAL_DST:
		c.LbPolicy = cluster.Cluster_CLUSTER_PROVIDED
		c.LbConfig = nil
		c.LoadAssignment = nil
	}
	tls := policy.GetTls()
	if mtls := sidecarMeshTLS(push, svc, port.Port, subsetName, policy); mtls.mode == meshTLSNone {
		c.TransportSocket = upstreamTLS(tls, h2, &opts)
	} else {
		applyMeshTLS(c, mtls, h2)
	}
	c.TypedExtensionProtocolOptions = opts.build(h2)
	c.Metadata = outboundMetadata(svc, dr, subsetName, tls)
	return c
}

// buildGRPCCluster builds the cluster a proxyless gRPC client gets for a requested name: always EDS, with only the
// load-balancing policies and circuit breaker grpc-go implements, no Envoy extension options, and a TLS transport
// socket with certificate provider instances when mesh mTLS applies (see grpcMeshTLS).
func buildGRPCCluster(push *model.PushContext, svc *model.Service, port *model.Port, subsetName string,
	dr *model.DestinationRuleEntry, meshClient bool,
) *cluster.Cluster {
	name := model.BuildSubsetKey(model.Outbound, subsetName, svc.Hostname, port.Port)
	subset := findSubset(dr, subsetName)
	policy := mergedPolicy(dr, subset, port.Port)
	c := &cluster.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
		EdsClusterConfig:     edsClusterConfig(name),
	}
	applyLoadBalancer(c, policy.GetLoadBalancer(), true)
	if n := policy.GetConnectionPool().GetHttp().GetHttp2MaxRequests(); n > 0 {
		c.CircuitBreakers = &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{
			{MaxRequests: wrapperspb.UInt32(uint32(n))},
		}}
	}
	if mtls := grpcMeshTLS(push, meshClient, svc, port.Port, subset, policy); mtls.mode != meshTLSNone {
		c.TransportSocket = security.TransportSocket(security.GRPCUpstream(mtls.sans))
	}
	return c
}

// newCluster starts a cluster with what every Istio cluster built from a service carries: the mesh connect timeout
// and the default (effectively unlimited) circuit breakers.
func newCluster(name string, mesh *meshconfig.MeshConfig) *cluster.Cluster {
	return &cluster.Cluster{
		Name:            name,
		ConnectTimeout:  connectTimeout(mesh),
		CircuitBreakers: &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{defaultThresholds()}},
	}
}

func connectTimeout(mesh *meshconfig.MeshConfig) *durationpb.Duration {
	if t := mesh.GetConnectTimeout(); positive(t) {
		return durationpb.New(t.AsDuration())
	}
	return durationpb.New(defaultConnectTimeout)
}

// defaultThresholds are Istio's: Envoy's own defaults (1024 connections, 3 retries) trip during ordinary pod
// churn, so everything is unlimited unless a DestinationRule says otherwise.
func defaultThresholds() *cluster.CircuitBreakers_Thresholds {
	return &cluster.CircuitBreakers_Thresholds{
		MaxConnections:     wrapperspb.UInt32(math.MaxUint32),
		MaxPendingRequests: wrapperspb.UInt32(math.MaxUint32),
		MaxRequests:        wrapperspb.UInt32(math.MaxUint32),
		MaxRetries:         wrapperspb.UInt32(math.MaxUint32),
		TrackRemaining:     true,
	}
}

func edsClusterConfig(name string) *cluster.Cluster_EdsClusterConfig {
	return &cluster.Cluster_EdsClusterConfig{
		ServiceName: name,
		EdsConfig: &core.ConfigSource{
			ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
			// Like Istio: wait for EDS rather than warming the cluster empty after 15s; EDS always answers.
			InitialFetchTimeout: durationpb.New(0),
			ResourceApiVersion:  core.ApiVersion_V3,
		},
	}
}

// dnsAssignment is the inline load assignment of a STRICT_DNS cluster: the ExternalName, else the service's
// endpoints (filtered by the subset's labels), else the hostname itself, resolved by the proxy.
func dnsAssignment(name string, push *model.PushContext, svc *model.Service, port *model.Port,
	subset *networking.Subset,
) *endpoint.ClusterLoadAssignment {
	if svc.ExternalName != "" {
		return singleHostAssignment(name, svc.ExternalName, port.Port)
	}
	eps := push.Endpoints(svc.Hostname, port.Port)
	if len(eps) == 0 {
		return singleHostAssignment(name, svc.Hostname, port.Port)
	}
	return assignmentFromEndpoints(name, eps, subset.GetLabels(), false, push.ClusterID)
}

// outboundMetadata is the cluster's "istio" filter metadata: the service (for telemetry), and when a
// DestinationRule applies, its path and the subset (for istioctl and telemetry).
func outboundMetadata(svc *model.Service, dr *model.DestinationRuleEntry, subset string,
	tls *networking.ClientTLSSettings,
) *core.Metadata {
	fields := map[string]*structpb.Value{
		"services": structpb.NewListValue(&structpb.ListValue{Values: []*structpb.Value{serviceMetadata(svc)}}),
	}
	if svc.MeshExternal {
		fields["external"] = structpb.NewBoolValue(true)
	}
	if dr != nil {
		fields["config"] = structpb.NewStringValue(destinationRulePath + dr.Config.Namespace +
			"/destination-rule/" + dr.Config.Name)
		if subset != "" {
			fields["subset"] = structpb.NewStringValue(subset)
		}
		if m := tls.GetMode(); m == networking.ClientTLSSettings_SIMPLE || m == networking.ClientTLSSettings_MUTUAL {
			// The user's TLS goes to a non-mesh server: Istio's ALPN filter must not advertise its own protocols.
			fields["alpn_override"] = structpb.NewStringValue("false")
		}
	}
	return &core.Metadata{FilterMetadata: map[string]*structpb.Struct{istioMetadataKey: {Fields: fields}}}
}

func serviceMetadata(svc *model.Service) *structpb.Value {
	return structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
		"host":      structpb.NewStringValue(svc.Hostname),
		"name":      structpb.NewStringValue(svc.Name),
		"namespace": structpb.NewStringValue(svc.Namespace),
	}})
}

func positive(d *durationpb.Duration) bool {
	return d != nil && d.IsValid() && d.AsDuration() > 0
}
