// Package security translates mesh security config into Envoy (and grpc-go) resources: the mTLS transport sockets of
// auto-mTLS and ISTIO_MUTUAL (client side) and PeerAuthentication (server side), with certificates from the agent's
// SDS for Envoy and from certificate provider instances for proxyless gRPC; and AuthorizationPolicy as RBAC filters.
//
// Names are Istio's: the SDS cluster "sds-grpc", the secrets "default" (workload certificate) and "ROOTCA" (mesh
// root), the ALPN values "istio-peer-exchange" and "istio", the SNI "outbound_.<port>_.<subset>_.<host>".
package security

import (
	"strconv"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rawbuffer "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/pkg/networking/util"
)

const (
	// SDSClusterName is the static cluster of the agent's SDS server in the Envoy bootstrap, as Istio's.
	SDSClusterName = "sds-grpc"
	// SDSDefaultResourceName is the workload's own certificate and key.
	SDSDefaultResourceName = "default"
	// SDSRootResourceName is the mesh root certificate peers are validated against.
	SDSRootResourceName = "ROOTCA"

	// GRPCCertProviderInstance is the certificate provider instance proxyless gRPC bootstraps define (Istio's
	// grpc bootstrap names its file_watcher provider "default").
	GRPCCertProviderInstance = "default"

	// TLSTransportSocketName and RawBufferTransportSocketName are the transport socket names Envoy (and grpc-go,
	// for TLS) expect.
	TLSTransportSocketName       = "envoy.transport_sockets.tls"
	RawBufferTransportSocketName = "envoy.transport_sockets.raw_buffer"

	// TransportProtocolTLS and TransportProtocolRawBuffer are what the TLS inspector sets as transport protocol.
	TransportProtocolTLS       = "tls"
	TransportProtocolRawBuffer = "raw_buffer"

	// Auto-mTLS transport socket match names and the endpoint metadata they select on.
	TLSModeIstioMatchName    = "tlsMode-istio"
	TLSModeDisabledMatchName = "tlsMode-disabled"
)

// ALPN values. Clients in the mesh announce "istio" (and "istio-peer-exchange", for metadata exchange); servers
// match on them to tell mesh mTLS from an application's own TLS.
var (
	ALPNInMesh   = []string{"istio-peer-exchange", "istio"}
	ALPNInMeshH2 = []string{"istio-peer-exchange", "istio", "h2"}
	// ALPNInboundMTLS are the ALPNs a PERMISSIVE server's mTLS chains accept: what sidecar clients send (with and
	// without Istio's ALPN-rewriting filter).
	ALPNInboundMTLS = []string{"istio", "istio-peer-exchange", "istio-http/1.0", "istio-http/1.1", "istio-h2"}
	// ALPNDownstream and ALPNDownstreamTCP are what the server side of an mTLS chain offers.
	ALPNDownstream    = []string{"h2", "http/1.1"}
	ALPNDownstreamTCP = []string{"istio-peer-exchange", "h2", "http/1.1"}
)

// serverCipherSuites are Istio's default cipher suites for sidecar servers: ECDHE with AES-GCM first.
var serverCipherSuites = []string{
	"ECDHE-ECDSA-AES256-GCM-SHA384",
	"ECDHE-RSA-AES256-GCM-SHA384",
	"ECDHE-ECDSA-AES128-GCM-SHA256",
	"ECDHE-RSA-AES128-GCM-SHA256",
	"AES256-GCM-SHA384",
	"AES128-GCM-SHA256",
}

// SDSSecretConfig asks the agent's SDS server (over the static sds-grpc cluster) for the named secret.
func SDSSecretConfig(name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{
		Name: name,
		SdsConfig: &core.ConfigSource{
			ConfigSourceSpecifier: &core.ConfigSource_ApiConfigSource{ApiConfigSource: &core.ApiConfigSource{
				ApiType:                   core.ApiConfigSource_GRPC,
				SetNodeOnFirstMessageOnly: true,
				TransportApiVersion:       core.ApiVersion_V3,
				GrpcServices: []*core.GrpcService{{
					TargetSpecifier: &core.GrpcService_EnvoyGrpc_{EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: SDSClusterName}},
				}},
			}},
			ResourceApiVersion: core.ApiVersion_V3,
		},
	}
}

// BuildDNSSrvSubsetKey is the SNI of mesh mTLS to a service port (and subset):
// "outbound_.9080_.v1_.reviews.default.svc.cluster.local", with "_" for no subset.
func BuildDNSSrvSubsetKey(subset, hostname string, port int) string {
	return "outbound_." + strconv.Itoa(port) + "_." + subset + "_." + hostname
}

// maxSNI is Envoy's limit on the sni field; longer names are left out rather than getting the cluster rejected.
const maxSNI = 255

// IstioMutualUpstream is the client side of mesh mTLS from an Envoy sidecar: the workload certificate and the root
// from SDS, the server's SPIFFE identities (when known) checked as URI SANs, the SNI naming the destination, and
// the in-mesh ALPNs (with h2 when the cluster speaks HTTP/2).
func IstioMutualUpstream(sni string, sans []string, h2 bool) *tlsv3.UpstreamTlsContext {
	alpn := ALPNInMesh
	if h2 {
		alpn = ALPNInMeshH2
	}
	ctx := &tlsv3.UpstreamTlsContext{
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsParams: &tlsv3.TlsParameters{
				TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_2,
				TlsMaximumProtocolVersion: tlsv3.TlsParameters_TLSv1_3,
			},
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{SDSSecretConfig(SDSDefaultResourceName)},
			ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{
				CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
					DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: uriSANs(sans)},
					ValidationContextSdsSecretConfig: SDSSecretConfig(SDSRootResourceName),
				},
			},
			AlpnProtocols: alpn,
		},
	}
	if len(sni) <= maxSNI {
		ctx.Sni = sni
	}
	return ctx
}

// uriSANs matches each identity exactly as a URI SAN.
func uriSANs(sans []string) []*tlsv3.SubjectAltNameMatcher {
	if len(sans) == 0 {
		return nil
	}
	out := make([]*tlsv3.SubjectAltNameMatcher, 0, len(sans))
	for _, s := range sans {
		if s == "" {
			continue
		}
		out = append(out, &tlsv3.SubjectAltNameMatcher{
			SanType: tlsv3.SubjectAltNameMatcher_URI,
			Matcher: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: s}},
		})
	}
	return out
}

// IstioMutualDownstream is the server side of mesh mTLS on a sidecar's inbound chain: the workload certificate
// from SDS, a client certificate required and validated against the root from SDS. TCP chains also offer the
// metadata-exchange ALPN.
func IstioMutualDownstream(tcp bool) *tlsv3.DownstreamTlsContext {
	alpn := ALPNDownstream
	if tcp {
		alpn = ALPNDownstreamTCP
	}
	return &tlsv3.DownstreamTlsContext{
		RequireClientCertificate: wrapperspb.Bool(true),
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsParams: &tlsv3.TlsParameters{
				TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_2,
				TlsMaximumProtocolVersion: tlsv3.TlsParameters_TLSv1_3,
				CipherSuites:              serverCipherSuites,
			},
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{SDSSecretConfig(SDSDefaultResourceName)},
			ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{
				CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
					DefaultValidationContext:         &tlsv3.CertificateValidationContext{},
					ValidationContextSdsSecretConfig: SDSSecretConfig(SDSRootResourceName),
				},
			},
			AlpnProtocols: alpn,
		},
	}
}

// grpcCommonTLS is the CommonTlsContext grpc-go understands (gRFC A29): the identity and the root from the
// bootstrap's certificate provider instance, SANs (client side only: servers reject them) in the deprecated
// match_subject_alt_names, the only SAN field grpc-go reads.
func grpcCommonTLS(sans []string) *tlsv3.CommonTlsContext {
	vc := &tlsv3.CertificateValidationContext{
		CaCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{
			InstanceName: GRPCCertProviderInstance, CertificateName: SDSRootResourceName,
		},
	}
	for _, s := range sans {
		if s != "" {
			vc.MatchSubjectAltNames = append(vc.MatchSubjectAltNames, &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: s}})
		}
	}
	return &tlsv3.CommonTlsContext{
		TlsCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{
			InstanceName: GRPCCertProviderInstance, CertificateName: SDSDefaultResourceName,
		},
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: vc},
	}
}

// GRPCUpstream is the client side of mesh mTLS for a proxyless gRPC client.
func GRPCUpstream(sans []string) *tlsv3.UpstreamTlsContext {
	return &tlsv3.UpstreamTlsContext{CommonTlsContext: grpcCommonTLS(sans)}
}

// GRPCDownstream is the server side of mesh mTLS for a proxyless gRPC server: client certificates required.
func GRPCDownstream() *tlsv3.DownstreamTlsContext {
	return &tlsv3.DownstreamTlsContext{
		CommonTlsContext:         grpcCommonTLS(nil),
		RequireClientCertificate: wrapperspb.Bool(true),
	}
}

// TransportSocket wraps a TLS context (Upstream or Downstream) as the TLS transport socket.
func TransportSocket(ctx proto.Message) *core.TransportSocket {
	return &core.TransportSocket{
		Name:       TLSTransportSocketName,
		ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: util.MessageToAny(ctx)},
	}
}

// RawBufferTransportSocket is plaintext, spelled out (transport socket matches need a socket per match).
func RawBufferTransportSocket() *core.TransportSocket {
	return &core.TransportSocket{
		Name:       RawBufferTransportSocketName,
		ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: util.MessageToAny(&rawbuffer.RawBuffer{})},
	}
}
