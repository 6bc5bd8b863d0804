// Package listeners builds the listeners (LDS) of Envoy sidecars and proxyless gRPC clients.
package listeners

import (
	"strconv"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	corsfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	faultfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	routerfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	originaldst "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	tlsinspector "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/pkg/networking/routes"
	"github.com/meshd/meshd/pkg/networking/util"
)

// Filter names, as Envoy and Istio spell them.
const (
	HTTPConnectionManagerName = "envoy.filters.network.http_connection_manager"
	TCPProxyName              = "envoy.filters.network.tcp_proxy"
	OriginalDstName           = "envoy.filters.listener.original_dst"
	TLSInspectorName          = "envoy.filters.listener.tls_inspector"
)

// The server name Envoy sidecars announce, as Istio's.
const envoyServerName = "istio-envoy"

// HTTP filters are the same for every connection manager: marshal them once. The fault and CORS filters do
// nothing unless a route carries their per-route config, so sidecars always get them, before the router.
var (
	faultFilter = &hcm.HttpFilter{
		Name:       routes.FaultFilterName,
		ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: util.MessageToAny(&faultfilter.HTTPFault{})},
	}
	corsFilter = &hcm.HttpFilter{
		Name:       routes.CORSFilterName,
		ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: util.MessageToAny(&corsfilter.Cors{})},
	}
	routerFilter = &hcm.HttpFilter{
		Name:       routes.RouterFilterName,
		ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: util.MessageToAny(&routerfilter.Router{})},
	}
	originalDstFilter = &listener.ListenerFilter{
		Name:       OriginalDstName,
		ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: util.MessageToAny(&originaldst.OriginalDst{})},
	}
	tlsInspectorFilter = &listener.ListenerFilter{
		Name:       TLSInspectorName,
		ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: util.MessageToAny(&tlsinspector.TlsInspector{})},
	}
)

// sidecarHCM is the HTTP connection manager of sidecar listeners, both directions, without its routes.
func sidecarHCM(statPrefix string) *hcm.HttpConnectionManager {
	return &hcm.HttpConnectionManager{
		CodecType:         hcm.HttpConnectionManager_AUTO,
		StatPrefix:        statPrefix,
		HttpFilters:       []*hcm.HttpFilter{faultFilter, corsFilter, routerFilter},
		UseRemoteAddress:  wrapperspb.Bool(false),
		GenerateRequestId: wrapperspb.Bool(true),
		NormalizePath:     wrapperspb.Bool(true),
		ServerName:        envoyServerName,
		UpgradeConfigs:    []*hcm.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket"}},
	}
}

// adsRDS asks for a route configuration over the ADS stream.
func adsRDS(name string) *hcm.HttpConnectionManager_Rds {
	return &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{
		ConfigSource: &core.ConfigSource{
			ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
			ResourceApiVersion:    core.ApiVersion_V3,
		},
		RouteConfigName: name,
	}}
}

func inlineRoutes(rc *route.RouteConfiguration) *hcm.HttpConnectionManager_RouteConfig {
	return &hcm.HttpConnectionManager_RouteConfig{RouteConfig: rc}
}

func hcmFilter(m *hcm.HttpConnectionManager) *listener.Filter {
	return &listener.Filter{
		Name:       HTTPConnectionManagerName,
		ConfigType: &listener.Filter_TypedConfig{TypedConfig: util.MessageToAny(m)},
	}
}

// weightedCluster is one destination of a TCP route; weight 0 means "the only one".
type weightedCluster struct {
	name   string
	weight uint32
}

// tcpProxyFilter forwards connections to one cluster or splits them by weight.
func tcpProxyFilter(statPrefix string, clusters []weightedCluster) *listener.Filter {
	tp := &tcpproxy.TcpProxy{StatPrefix: statPrefix}
	if len(clusters) == 1 {
		tp.ClusterSpecifier = &tcpproxy.TcpProxy_Cluster{Cluster: clusters[0].name}
	} else {
		wc := &tcpproxy.TcpProxy_WeightedCluster{}
		for _, c := range clusters {
			wc.Clusters = append(wc.Clusters, &tcpproxy.TcpProxy_WeightedCluster_ClusterWeight{Name: c.name, Weight: c.weight})
		}
		tp.ClusterSpecifier = &tcpproxy.TcpProxy_WeightedClusters{WeightedClusters: wc}
	}
	return &listener.Filter{
		Name:       TCPProxyName,
		ConfigType: &listener.Filter_TypedConfig{TypedConfig: util.MessageToAny(tp)},
	}
}

// tcpProxyTo forwards everything to one cluster, using its name as stat prefix as Istio does.
func tcpProxyTo(cluster string) *listener.Filter {
	return tcpProxyFilter(cluster, []weightedCluster{{name: cluster}})
}

func socketAddress(ip string, port int) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Address:       ip,
		PortSpecifier: &core.SocketAddress_PortValue{PortValue: uint32(port)},
	}}}
}

func destinationPort(port int) *listener.FilterChainMatch {
	return &listener.FilterChainMatch{DestinationPort: wrapperspb.UInt32(uint32(port))}
}

func itoa(n int) string { return strconv.Itoa(n) }
