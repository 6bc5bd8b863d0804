package clusters

import (
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"google.golang.org/protobuf/types/known/structpb"
	meshconfig "istio.io/api/mesh/v1alpha1"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/security"
)

// meshTLSMode is how an outbound cluster speaks mesh mTLS.
type meshTLSMode uint8

const (
	// meshTLSNone: no mesh mTLS (the DestinationRule's own TLS settings, if any, apply).
	meshTLSNone meshTLSMode = iota
	// meshTLSIstioMutual: always mTLS with the mesh certificates (DestinationRule ISTIO_MUTUAL, or auto-mTLS to
	// an ORIGINAL_DST cluster whose every endpoint runs a mesh proxy, or a gRPC cluster).
	meshTLSIstioMutual
	// meshTLSAuto: auto-mTLS by endpoint: mTLS to endpoints labelled tlsMode=istio, plaintext to the others.
	meshTLSAuto
)

// meshTLS is the mesh mTLS decision for one outbound cluster. It is made while building the cluster (on a cache
// miss): everything it reads is in the cluster's cache key. The DestinationRule identity and the config sequence
// cover the rule, mesh config, services and PeerAuthentications; sidecar keys add the endpoints' identities
// (appendMeshTLSKey) and, for ORIGINAL_DST clusters, the endpoint sequence (their TLS modes); gRPC keys add the
// endpoint sequence and whether the client is a mesh workload.
type meshTLS struct {
	mode meshTLSMode
	// sans are the server identities to check (URI SANs); empty: any certificate from the mesh root.
	sans []string
	// sni is sent in the handshake (sidecars only).
	sni string
}

// appendMeshTLSKey appends to a sidecar cluster's cache key what its mesh mTLS reads beyond the DestinationRule
// and the config (already in the key): the identities of the service's endpoints, which change with endpoint-only
// pushes. Services outside the mesh without a DestinationRule never do mesh mTLS.
func appendMeshTLSKey(b []byte, push *model.PushContext, svc *model.Service, dr *model.DestinationRuleEntry) []byte {
	if svc.MeshExternal && dr == nil {
		return b
	}
	b = append(b, "|sa"...)
	for _, sa := range push.ServiceAccounts(svc.Hostname) {
		b = append(b, ',')
		b = append(b, sa...)
	}
	return b
}

// originalDst reports whether the cluster for this service port and subset is ORIGINAL_DST (a headless service,
// or load balancer PASSTHROUGH in the DestinationRule), following mergedPolicy's precedence without building it.
func originalDst(svc *model.Service, dr *model.DestinationRuleEntry, subsetName string, port int) bool {
	if svc.Resolution == model.Passthrough {
		return true
	}
	if dr == nil {
		return false
	}
	isPassthrough := func(lb *networking.LoadBalancerSettings) bool {
		return lb.GetSimple() == networking.LoadBalancerSettings_PASSTHROUGH
	}
	if sp := findSubset(dr, subsetName).GetTrafficPolicy(); sp != nil {
		for _, pl := range sp.PortLevelSettings {
			if pl.GetPort().GetNumber() == uint32(port) {
				return isPassthrough(pl.LoadBalancer)
			}
		}
		if sp.LoadBalancer != nil {
			return isPassthrough(sp.LoadBalancer)
		}
	}
	top := dr.Spec.GetTrafficPolicy()
	for _, pl := range top.GetPortLevelSettings() {
		if pl.GetPort().GetNumber() == uint32(port) {
			return isPassthrough(pl.LoadBalancer)
		}
	}
	return isPassthrough(top.GetLoadBalancer())
}

func autoMTLSEnabled(mesh *meshconfig.MeshConfig) bool {
	return mesh.GetEnableAutoMtls() == nil || mesh.GetEnableAutoMtls().GetValue()
}

// sidecarMeshTLS decides the mesh mTLS of a sidecar's outbound cluster, as Istio does:
//   - DestinationRule tls ISTIO_MUTUAL: mTLS, with the rule's SNI and SANs, else the generated SNI and the
//     service's identities;
//   - any other DestinationRule tls mode: none here (DISABLE is plaintext, SIMPLE and MUTUAL use the rule's files);
//   - no tls in the rule: auto-mTLS, unless it is off in mesh config, the service is outside the mesh, or the
//     namespace (or mesh) PeerAuthentication of the service's namespace says DISABLE. Clusters with endpoints use
//     transport_socket_matches; ORIGINAL_DST clusters cannot, so they get mTLS only when every endpoint of the port
//     runs a mesh proxy (and there is at least one).
func sidecarMeshTLS(push *model.PushContext, svc *model.Service, port int, subset string,
	policy *networking.TrafficPolicy,
) meshTLS {
	tls := policy.GetTls()
	sni := security.BuildDNSSrvSubsetKey(subset, svc.Hostname, port)
	if tls != nil {
		if tls.Mode != networking.ClientTLSSettings_ISTIO_MUTUAL {
			return meshTLS{}
		}
		m := meshTLS{mode: meshTLSIstioMutual, sni: sni, sans: tls.SubjectAltNames}
		if tls.Sni != "" {
			m.sni = tls.Sni
		}
		if len(m.sans) == 0 {
			m.sans = push.ServiceAccounts(svc.Hostname)
		}
		return m
	}
	if svc.MeshExternal || !autoMTLSEnabled(push.Mesh) || push.NamespaceMutualTLSMode(svc.Namespace) == model.MTLSDisable {
		return meshTLS{}
	}
	m := meshTLS{mode: meshTLSAuto, sni: sni, sans: push.ServiceAccounts(svc.Hostname)}
	if svc.Resolution == model.Passthrough || policy.GetLoadBalancer().GetSimple() == networking.LoadBalancerSettings_PASSTHROUGH {
		if !allMeshEndpoints(push.Endpoints(svc.Hostname, port), nil) {
			return meshTLS{}
		}
		m.mode = meshTLSIstioMutual
	}
	return m
}

// grpcMeshTLS decides the mesh mTLS of a proxyless gRPC client's cluster. grpc-go has no transport socket matches,
// so the decision is per cluster:
//   - DestinationRule tls ISTIO_MUTUAL: mTLS (SANs from the rule, else the service's identities);
//   - other DestinationRule tls modes: none (TODO: SIMPLE and MUTUAL need file certificates grpc-go cannot read);
//   - no tls in the rule: auto-mTLS when it is on in mesh config, the service is in the mesh and not DISABLE by
//     namespace or mesh PeerAuthentication, the client declares a mesh identity (tlsMode istio in its node
//     metadata labels, see Proxy.DeclaresMeshTLS: its agent-written bootstrap defines the certificate provider; a
//     client without one would reject the cluster), and every endpoint of the cluster (the subset's, all health
//     states) runs a mesh proxy, there being at least one.
func grpcMeshTLS(push *model.PushContext, meshClient bool, svc *model.Service, port int, subset *networking.Subset,
	policy *networking.TrafficPolicy,
) meshTLS {
	if tls := policy.GetTls(); tls != nil {
		if tls.Mode != networking.ClientTLSSettings_ISTIO_MUTUAL {
			return meshTLS{}
		}
		m := meshTLS{mode: meshTLSIstioMutual, sans: tls.SubjectAltNames}
		if len(m.sans) == 0 {
			m.sans = push.ServiceAccounts(svc.Hostname)
		}
		return m
	}
	if svc.MeshExternal || !autoMTLSEnabled(push.Mesh) || push.NamespaceMutualTLSMode(svc.Namespace) == model.MTLSDisable ||
		!meshClient {
		return meshTLS{}
	}
	if !allMeshEndpoints(push.Endpoints(svc.Hostname, port), subset.GetLabels()) {
		return meshTLS{}
	}
	return meshTLS{mode: meshTLSIstioMutual, sans: push.ServiceAccounts(svc.Hostname)}
}

// allMeshEndpoints reports whether there is at least one endpoint with these labels and all of them run a mesh
// proxy (tlsMode istio).
func allMeshEndpoints(eps []*model.Endpoint, labels map[string]string) bool {
	n := 0
	for _, e := range eps {
		if !model.LabelsMatch(labels, e.Labels) {
			continue
		}
		if e.TLSMode != model.TLSModeIstio {
			return false
		}
		n++
	}
	return n > 0
}

// istioMTLSMatch selects endpoints whose metadata says tlsMode: istio (EDS sends it under
// envoy.transport_socket_match).
var istioMTLSMatch = &structpb.Struct{Fields: map[string]*structpb.Value{tlsModeKey: structpb.NewStringValue(model.TLSModeIstio)}}

// applyMeshTLS sets the cluster's transport socket (or auto-mTLS socket matches) for a mesh mTLS decision.
func applyMeshTLS(c *cluster.Cluster, m meshTLS, h2 bool) {
	switch m.mode {
	case meshTLSIstioMutual:
		c.TransportSocket = security.TransportSocket(security.IstioMutualUpstream(m.sni, m.sans, h2))
	case meshTLSAuto:
		c.TransportSocketMatches = []*cluster.Cluster_TransportSocketMatch{
			{
				Name:            security.TLSModeIstioMatchName,
				Match:           istioMTLSMatch,
				TransportSocket: security.TransportSocket(security.IstioMutualUpstream(m.sni, m.sans, h2)),
			},
			{
				Name:            security.TLSModeDisabledMatchName,
				Match:           &structpb.Struct{},
				TransportSocket: security.RawBufferTransportSocket(),
			},
		}
	}
}
