package clusters

import (
	"cmp"
	"math"
	"slices"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/pkg/model"
)

const (
	// transportSocketMatchKey is the filter_metadata namespace Envoy's transport_socket_matches select on;
	// auto-mTLS sends mTLS to endpoints whose tlsMode is istio.
	transportSocketMatchKey = "envoy.transport_socket_match"
	tlsModeKey              = "tlsMode"

	// Kubernetes labels that name a workload's canonical service and revision, in Istio's order of preference.
	labelCanonicalName     = "service.istio.io/canonical-name"
	labelCanonicalRevision = "service.istio.io/canonical-revision"
	labelK8sName           = "app.kubernetes.io/name"
	labelK8sVersion        = "app.kubernetes.io/version"
)

// buildAssignment is the ClusterLoadAssignment for one outbound cluster: the service port's endpoints, narrowed to
// the subset's labels when the cluster names a subset (no subset of that name in the rule: no endpoints).
func buildAssignment(name string, push *model.PushContext, svc *model.Service, port *model.Port, subsetName string,
	dr *model.DestinationRuleEntry, healthyOnly bool,
) *endpoint.ClusterLoadAssignment {
	var labels map[string]string
	if subsetName != "" {
		subset := findSubset(dr, subsetName)
		if subset == nil {
			return emptyAssignment(name)
		}
		labels = subset.Labels
	}
	return assignmentFromEndpoints(name, push.Endpoints(svc.Hostname, port.Port), labels, healthyOnly, push.ClusterID)
}

func emptyAssignment(name string) *endpoint.ClusterLoadAssignment {
	return &endpoint.ClusterLoadAssignment{ClusterName: name}
}

// assignmentFromEndpoints groups the endpoints matching labels by locality (sorted), each group weighted by the sum
// of its endpoints' weights (so never zero), its endpoints sorted by address and port. With healthyOnly (gRPC)
// only Healthy endpoints are kept and localities left empty are dropped: grpc-go ignores zero-weight localities.
func assignmentFromEndpoints(name string, eps []*model.Endpoint, labels map[string]string, healthyOnly bool,
	clusterID string,
) *endpoint.ClusterLoadAssignment {
	selected := make([]*model.Endpoint, 0, len(eps))
	for _, e := range eps {
		if healthyOnly && e.Health != model.Healthy {
			continue
		}
		if e.Address == "" || e.Port <= 0 || e.Port > math.MaxUint16 || !model.LabelsMatch(labels, e.Labels) {
			continue
		}
		selected = append(selected, e)
	}
	slices.SortFunc(selected, func(a, b *model.Endpoint) int {
		return cmp.Or(cmp.Compare(a.Locality, b.Locality), cmp.Compare(a.Address, b.Address), cmp.Compare(a.Port, b.Port))
	})
	cla := emptyAssignment(name)
	var group *endpoint.LocalityLbEndpoints
	var weight uint64
	closeGroup := func() {
		if group != nil {
			group.LoadBalancingWeight = wrapperspb.UInt32(uint32(min(weight, math.MaxUint32)))
			cla.Endpoints = append(cla.Endpoints, group)
		}
	}
	for i, e := range selected {
		if i == 0 || e.Locality != selected[i-1].Locality {
			closeGroup()
			group = &endpoint.LocalityLbEndpoints{Locality: parseLocality(e.Locality)}
			weight = 0
		}
		w := endpointWeight(e)
		weight += uint64(w)
		lb := lbEndpoint(e.Address, e.Port, w)
		lb.HealthStatus = healthStatus(e.Health)
		lb.Metadata = endpointMetadata(e, clusterID)
		group.LbEndpoints = append(group.LbEndpoints, lb)
	}
	closeGroup()
	return cla
}

// singleHostAssignment is a one-endpoint assignment for a name the proxy resolves itself.
func singleHostAssignment(name, host string, port int) *endpoint.ClusterLoadAssignment {
	return &endpoint.ClusterLoadAssignment{
		ClusterName: name,
		Endpoints: []*endpoint.LocalityLbEndpoints{{
			Locality:            &core.Locality{},
			LbEndpoints:         []*endpoint.LbEndpoint{lbEndpoint(host, port, 1)},
			LoadBalancingWeight: wrapperspb.UInt32(1),
		}},
	}
}

func lbEndpoint(address string, port int, weight uint32) *endpoint.LbEndpoint {
	return &endpoint.LbEndpoint{
		HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
			Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
				Protocol:      core.SocketAddress_TCP,
				Address:       address,
				PortSpecifier: &core.SocketAddress_PortValue{PortValue: uint32(port)},
			}}},
		}},
		LoadBalancingWeight: wrapperspb.UInt32(weight),
	}
}

func endpointWeight(e *model.Endpoint) uint32 {
	if e.Weight == 0 {
		return 1
	}
	return e.Weight
}

func healthStatus(h model.HealthStatus) core.HealthStatus {
	switch h {
	case model.Unhealthy:
		return core.HealthStatus_UNHEALTHY
	case model.Draining:
		return core.HealthStatus_DRAINING
	}
	return core.HealthStatus_HEALTHY
}

// parseLocality turns "region/zone/subzone" (any part may be missing) into an Envoy locality.
func parseLocality(s string) *core.Locality {
	l := &core.Locality{}
	region, rest, _ := strings.Cut(s, "/")
	zone, subzone, _ := strings.Cut(rest, "/")
	l.Region, l.Zone, l.SubZone = region, zone, subzone
	return l
}

// endpointMetadata is the endpoint's filter metadata as Istio sends it: the tlsMode for auto-mTLS transport socket
// matching, and the compressed workload identity telemetry reads when peer metadata exchange is not possible.
func endpointMetadata(e *model.Endpoint, clusterID string) *core.Metadata {
	md := &core.Metadata{FilterMetadata: make(map[string]*structpb.Struct, 2)}
	if e.TLSMode == model.TLSModeIstio {
		md.FilterMetadata[transportSocketMatchKey] = &structpb.Struct{Fields: map[string]*structpb.Value{
			tlsModeKey: structpb.NewStringValue(model.TLSModeIstio),
		}}
	}
	md.FilterMetadata[istioMetadataKey] = &structpb.Struct{Fields: map[string]*structpb.Value{
		"workload": structpb.NewStringValue(workloadMetadata(e, clusterID)),
	}}
	return md
}

// workloadMetadata is "name;namespace;canonical service;canonical revision;cluster", the revision left empty when
// it is the default "latest", like Istio.
func workloadMetadata(e *model.Endpoint, clusterID string) string {
	name, rev := canonicalService(e.Labels, e.WorkloadName)
	if rev == "latest" {
		rev = ""
	}
	var b strings.Builder
	b.Grow(len(e.WorkloadName) + len(e.Namespace) + len(name) + len(rev) + len(clusterID) + 4)
	b.WriteString(e.WorkloadName)
	b.WriteByte(';')
	b.WriteString(e.Namespace)
	b.WriteByte(';')
	b.WriteString(name)
	b.WriteByte(';')
	b.WriteString(rev)
	b.WriteByte(';')
	b.WriteString(clusterID)
	return b.String()
}

// canonicalService names the service and revision a workload belongs to, from its labels the way Istio does
// (canonical labels, then the Kubernetes recommended ones, then app and version), defaulting to the workload
// name and "latest".
func canonicalService(labels map[string]string, workloadName string) (string, string) {
	name := firstLabel(labels, labelCanonicalName, labelK8sName, "app")
	if name == "" {
		name = workloadName
	}
	rev := firstLabel(labels, labelCanonicalRevision, labelK8sVersion, "version")
	if rev == "" {
		rev = "latest"
	}
	return name, rev
}

func firstLabel(labels map[string]string, keys ...string) string {
	for _, k := range keys {
		if v := labels[k]; v != "" {
			return v
		}
	}
	return ""
}
