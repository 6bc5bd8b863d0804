package model

import (
	"fmt"
	"strconv"
	"strings"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

// xDS type URLs.
const (
	ClusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	EndpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
	ListenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"
	RouteType    = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	// NameTableType is Istio's DNS name table (NDS), which the agent's DNS proxy watches.
	NameTableType = "type.googleapis.com/istio.networking.nds.v1.NameTable"
	// DebugTypePrefix starts the type URLs of debug requests over ADS ("istio.io/debug/syncz"): the agent's port
	// 15004 forwards to the control plane's debug endpoints this way. The first resource name, if any, is the
	// query string; the answer is one resource whose Any value is the endpoint's body and whose version is the
	// HTTP status.
	DebugTypePrefix = "istio.io/debug/"
)

// ShortType is the name metrics and debug output use for a type URL: "cds", "eds", "lds", "rds".
func ShortType(typeURL string) string {
	switch typeURL {
	case ClusterType:
		return "cds"
	case EndpointType:
		return "eds"
	case ListenerType:
		return "lds"
	case RouteType:
		return "rds"
	case NameTableType:
		return "nds"
	}
	if i := strings.LastIndex(typeURL, "."); i >= 0 {
		return typeURL[i+1:]
	}
	return typeURL
}

// WatchedResource is what a proxy subscribed to for one type.
type WatchedResource struct {
	TypeURL string
	// Names are the subscribed resource names, sorted. Ignored when Wildcard is set.
	Names []string
	// Wildcard means "everything that applies to me" (Envoy's LDS and CDS).
	Wildcard bool
}

// Generator builds the resources of one type for one proxy. Generators are pure: they read the push context
// and the proxy, never mutate either, and may be called concurrently for different proxies.
type Generator interface {
	Generate(proxy *Proxy, push *PushContext, w *WatchedResource, req *PushRequest) ([]*discovery.Resource, error)
}

// Traffic directions in cluster names.
const (
	Inbound  = "inbound"
	Outbound = "outbound"
)

// Names of Istio's well-known clusters and listeners.
const (
	PassthroughCluster        = "PassthroughCluster"
	BlackHoleCluster          = "BlackHoleCluster"
	InboundPassthroughCluster = "InboundPassthroughCluster"
	VirtualOutboundListener   = "virtualOutbound"
	VirtualInboundListener    = "virtualInbound"
)

// BuildSubsetKey names a cluster the Istio way: "outbound|9080|v1|reviews.default.svc.cluster.local".
func BuildSubsetKey(direction, subset, hostname string, port int) string {
	return direction + "|" + strconv.Itoa(port) + "|" + subset + "|" + hostname
}

// ParseSubsetKey splits a cluster name built by BuildSubsetKey. Only canonical names parse ("outbound|09080||h"
// does not), so that one cluster has one name.
func ParseSubsetKey(name string) (direction, subset, hostname string, port int, err error) {
	direction, rest, ok1 := strings.Cut(name, "|")
	portStr, rest, ok2 := strings.Cut(rest, "|")
	subset, hostname, ok3 := strings.Cut(rest, "|")
	if !ok1 || !ok2 || !ok3 || strings.Contains(hostname, "|") {
		return "", "", "", 0, fmt.Errorf("cluster name %q: want direction|port|subset|host", name)
	}
	port, err = strconv.Atoi(portStr)
	if err != nil || port <= 0 || port > 65535 || strconv.Itoa(port) != portStr {
		return "", "", "", 0, fmt.Errorf("cluster name %q: bad port %q", name, portStr)
	}
	return direction, subset, hostname, port, nil
}
