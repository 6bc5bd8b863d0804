package clusters

import (
	"math"
	"slices"
	"strconv"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/util"
)

const (
	// inboundPassthroughBindIP is the source address for connections the sidecar makes to its own workload:
	// istio-iptables exempts it from redirection, so they are not looped back into the proxy.
	inboundPassthroughBindIP = "127.0.0.6"
	// passthroughIdleTimeout is how long Istio keeps idle HTTP connections of the passthrough clusters.
	passthroughIdleTimeout = 5 * time.Minute
)

// maxCleanupInterval effectively disables the cleanup of idle hosts of inbound ORIGINAL_DST clusters (there is
// only one host: the workload), like Istio: the largest whole-second duration a time.Duration holds.
var maxCleanupInterval = &durationpb.Duration{Seconds: (math.MaxInt64 - 999999999) / int64(time.Second)}

// inboundClusters builds "inbound|<targetPort>||" per distinct workload port the proxy's services target. They
// depend on the proxy, are few and cheap, so they are built per call rather than cached.
func inboundClusters(proxy *model.Proxy, push *model.PushContext) []*discovery.Resource {
	targets := proxy.ServiceTargets
	var out []*discovery.Resource
	for i := 0; i < len(targets); {
		j := i + 1
		for j < len(targets) && targets[j].TargetPort == targets[i].TargetPort {
			j++
		}
		c := buildInboundCluster(targets[i].TargetPort, targets[i:j], push)
		out = append(out, util.Resource(c.Name, c))
		i = j
	}
	return out
}

// buildInboundCluster forwards to the original destination (the workload's own address and port), bound to
// 127.0.0.6. The protocol comes from the first target: one port serving two protocols is a misconfiguration.
func buildInboundCluster(targetPort int, targets []model.ServiceTarget, push *model.PushContext) *cluster.Cluster {
	c := newCluster(model.BuildSubsetKey(model.Inbound, "", "", targetPort), push.Mesh)
	c.ClusterDiscoveryType = &cluster.Cluster_Type{Type: cluster.Cluster_ORIGINAL_DST}
	c.LbPolicy = cluster.Cluster_CLUSTER_PROVIDED
	c.CommonLbConfig = &cluster.Cluster_CommonLbConfig{}
	c.CleanupInterval = maxCleanupInterval
	c.UpstreamBindConfig = bindConfig(inboundPassthroughBindIP)
	var opts httpOptions
	c.TypedExtensionProtocolOptions = opts.build(targets[0].Port.Protocol.IsHTTP2())
	if !targets[0].Service.MeshExternal {
		var services []*structpb.Value
		var seen []string
		for _, t := range targets {
			if slices.Contains(seen, t.Service.Hostname) {
				continue
			}
			seen = append(seen, t.Service.Hostname)
			services = append(services, serviceMetadata(t.Service))
		}
		c.Metadata = &core.Metadata{FilterMetadata: map[string]*structpb.Struct{istioMetadataKey: {Fields: map[string]*structpb.Value{
			"services": structpb.NewListValue(&structpb.ListValue{Values: services}),
		}}}}
	}
	return c
}

// wellKnownClusters returns PassthroughCluster and BlackHoleCluster, and for sidecars InboundPassthroughCluster.
// They depend only on the mesh config, so they are cached per config sequence.
func wellKnownClusters(cache *util.Cache, proxy *model.Proxy, push *model.PushContext) []*discovery.Resource {
	builders := []struct {
		name  string
		build func(*model.PushContext) *cluster.Cluster
	}{
		{model.PassthroughCluster, buildPassthroughCluster},
		{model.BlackHoleCluster, buildBlackHoleCluster},
		{model.InboundPassthroughCluster, buildInboundPassthroughCluster},
	}
	out := make([]*discovery.Resource, 0, len(builders))
	key := make([]byte, 0, 64)
	for _, b := range builders {
		if b.name == model.InboundPassthroughCluster && proxy.Type != model.SidecarProxy {
			continue
		}
		key = strconv.AppendUint(append(append(key[:0], keyCDS...), b.name+"|"...), push.ConfigSeq(), 10)
		out = append(out, cached(cache, key, func() *discovery.Resource {
			return util.Resource(b.name, b.build(push))
		}))
	}
	return out
}

// passthroughProtocolOptions let HTTP/1.1 and HTTP/2 traffic routed to the passthrough clusters keep the
// downstream protocol.
var passthroughProtocolOptions = util.MessageToAny(&httpv3.HttpProtocolOptions{
	CommonHttpProtocolOptions: &core.HttpProtocolOptions{IdleTimeout: durationpb.New(passthroughIdleTimeout)},
	UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_UseDownstreamProtocolConfig{
		UseDownstreamProtocolConfig: &httpv3.HttpProtocolOptions_UseDownstreamHttpConfig{
			HttpProtocolOptions:  &core.Http1ProtocolOptions{},
			Http2ProtocolOptions: &core.Http2ProtocolOptions{},
		},
	},
})

// buildPassthroughCluster sends traffic for destinations the mesh does not know to where it was going.
func buildPassthroughCluster(push *model.PushContext) *cluster.Cluster {
	c := newCluster(model.PassthroughCluster, push.Mesh)
	c.ClusterDiscoveryType = &cluster.Cluster_Type{Type: cluster.Cluster_ORIGINAL_DST}
	c.LbPolicy = cluster.Cluster_CLUSTER_PROVIDED
	c.TypedExtensionProtocolOptions = map[string]*anypb.Any{httpProtocolOptionsKey: passthroughProtocolOptions}
	if ka := tcpKeepalive(push.Mesh.GetTcpKeepalive()); ka != nil {
		c.UpstreamConnectionOptions = &cluster.UpstreamConnectionOptions{TcpKeepalive: ka}
	}
	return c
}

// buildInboundPassthroughCluster is the passthrough cluster for inbound traffic to ports no service declares.
func buildInboundPassthroughCluster(push *model.PushContext) *cluster.Cluster {
	c := buildPassthroughCluster(push)
	c.Name = model.InboundPassthroughCluster
	c.UpstreamBindConfig = bindConfig(inboundPassthroughBindIP)
	return c
}

// buildBlackHoleCluster has no endpoints: routes use it to drop traffic.
func buildBlackHoleCluster(push *model.PushContext) *cluster.Cluster {
	return &cluster.Cluster{
		Name:                 model.BlackHoleCluster,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC},
		ConnectTimeout:       connectTimeout(push.Mesh),
		LbPolicy:             cluster.Cluster_ROUND_ROBIN,
	}
}

func bindConfig(ip string) *core.BindConfig {
	return &core.BindConfig{SourceAddress: &core.SocketAddress{
		Address:       ip,
		PortSpecifier: &core.SocketAddress_PortValue{PortValue: 0},
	}}
}
